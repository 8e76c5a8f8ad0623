"""Forked worker processes that solve a GA generation's LPs side by side.

The dual simplex spends most of its time in small numpy calls that hold the GIL, so threads would
not overlap; processes do. Each worker is forked from the searching process once per search and
keeps its own copy of the LP, including its pools of optimal bases, which warm up over the
generations as the parent's would. A generation's new candidates are dealt to the workers in GA order
(every second one to the second worker), so the split, and therefore every start basis, is
deterministic.

A worker returns its candidates without their weight vectors (50,000 float64s each at CIFAR scale),
except the first best of its run: the only one that can become the search's best (see
``_Evaluator.remember``). It also returns the optimal bases its solves added to its pools, and the
parent hands them to the other workers with their next run, so every pool warms up from all solves
(a basis is 2 (K + 3) numbers). Any failure of a worker (an exception, a dead process) is reported as
``WorkerFailure``; the caller then scores the candidates itself and stops using the workers.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["SolverWorkers", "WorkerFailure", "fork_workers_available"]


class WorkerFailure(RuntimeError):
    """A worker raised, died or could not be started."""


def fork_workers_available() -> int:
    """How many worker processes the machine supports: the usable CPUs, or 0 without ``fork`` (non-Linux)."""
    if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return len(os.sched_getaffinity(0))


class SolverWorkers:
    """Persistent forked processes, each applying ``score`` to the payloads it is sent.

    Args:
        score: ``payload -> reply``, executed in a worker (inherited by fork, not pickled); payloads
            and replies must be picklable.
        count: Number of processes (>= 2).

    Raises:
        WorkerFailure: If a process cannot be started.
    """

    def __init__(self, score: Callable[[Any], Any], count: int) -> None:
        context = multiprocessing.get_context("fork")
        # A child flushes its copy of the stdio buffers when it exits: empty them first, or buffered
        # output (a progress bar, a log line) would be printed again.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        self._processes: list[Any] = []
        self._connections: list[Connection] = []
        try:
            for _ in range(count):
                parent_end, child_end = context.Pipe()
                process = context.Process(target=_serve, args=(score, child_end), daemon=True)
                process.start()
                child_end.close()
                self._processes.append(process)
                self._connections.append(parent_end)
        except Exception as error:  # noqa: BLE001 - any start-up failure means: no workers
            self.close()
            raise WorkerFailure(f"could not start LP worker processes: {error!r}") from error

    @property
    def count(self) -> int:
        """Number of worker processes."""
        return len(self._processes)

    def call(self, payloads: Sequence[Any]) -> list[Any]:
        """``score(payload)`` in each worker, one payload per worker, all at once; replies in worker order.

        Raises:
            WorkerFailure: If a worker raised or died (the workers are then closed).
        """
        if len(payloads) != self.count:
            raise ValueError(f"one payload per worker: got {len(payloads)} for {self.count} workers")
        try:
            for connection, payload in zip(self._connections, payloads):
                connection.send(payload)
            replies: list[Any] = []
            for connection, process in zip(self._connections, self._processes):
                while not connection.poll(1.0):
                    if not process.is_alive():
                        raise WorkerFailure(f"LP worker {process.pid} died (exit code {process.exitcode})")
                status, reply = connection.recv()
                if status != "ok":
                    raise WorkerFailure(f"LP worker {process.pid} failed: {reply}")
                replies.append(reply)
            return replies
        except WorkerFailure:
            self.close()
            raise
        except (OSError, EOFError) as error:
            self.close()
            raise WorkerFailure(f"an LP worker died or closed its connection ({error!r})") from error

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        for connection in self._connections:
            try:
                connection.send(None)
            except (OSError, ValueError):
                pass
        for process in self._processes:
            process.join(timeout=1.0)
            if process.is_alive():
                process.terminate()
                process.join(timeout=1.0)
        for connection in self._connections:
            connection.close()
        self._processes.clear()
        self._connections.clear()

    def __enter__(self) -> SolverWorkers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _serve(score: Callable[[Any], Any], connection: Connection) -> None:
    """Worker loop: receive a payload, send back ``("ok", reply)`` or ``("error", message)``; ``None`` ends it."""
    while True:
        try:
            payload = connection.recv()
        except (EOFError, OSError):
            return
        if payload is None:
            return
        try:
            reply: tuple[str, Any] = ("ok", score(payload))
        except Exception as error:  # noqa: BLE001 - reported to the parent, which falls back
            reply = ("error", repr(error))
        connection.send(reply)
