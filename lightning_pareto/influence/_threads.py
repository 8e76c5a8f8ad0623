"""LAPACK thread control: the engine's small dense factorizations run on one CPU thread."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["single_threaded_lapack"]


@contextmanager
def single_threaded_lapack(device: torch.device) -> Iterator[None]:
    """Run CPU LAPACK factorizations (eigh, QR) on one thread, restoring torch's thread count after.

    Their many thread barriers make them many times slower with two threads when another process
    keeps the cores busy, while the factorizations the engine runs are small enough that one thread
    loses little when the machine is quiet.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
