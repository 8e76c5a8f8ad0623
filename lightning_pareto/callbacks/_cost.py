"""What an intervention costs in epochs of the fit: the fit's own epoch time, and the record's cost in it."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from lightning_pareto.callbacks._record import InterventionRecord

__all__ = ["EpochClock", "cost_in_epochs"]


class EpochClock:
    """Wall time of the fit's epochs, training plus validation, as an intervention callback sees them.

    An epoch runs from :meth:`start` (called again after the callback's own work at the epoch's start, so
    that an intervention made there is not counted as training) to the end of its last validation, or
    to :meth:`stop` when it did not validate (checkpointing and other callbacks' epoch-end work are left
    out). Epochs an intervention added (a redo, a counterfactual or weighted try of the paired guard) are
    timed but kept out of the median: :meth:`epoch_seconds`.
    """

    def __init__(self) -> None:
        self.normal_seconds: list[float] = []  # one per normal epoch, in order
        self.last_seconds: float | None = None  # the latest epoch timed, normal or not
        self._started: float | None = None
        self._validated: float | None = None
        self._added = False

    def start(self, added: bool = False) -> None:
        """(Re)start the epoch's clock now; ``added``: the epoch is one an intervention added."""
        self._started, self._validated, self._added = time.perf_counter(), None, added

    def validation_end(self) -> None:
        """A validation inside the epoch ended (the last one of the epoch ends it)."""
        if self._started is not None:
            self._validated = time.perf_counter()

    def stop(self) -> None:
        """The training epoch ended (call before the epoch-end work of the callback)."""
        if self._started is None:
            return
        end = self._validated if self._validated is not None else time.perf_counter()
        seconds = end - self._started
        self._started = self._validated = None
        if not (math.isfinite(seconds) and seconds > 0.0):
            return
        self.last_seconds = seconds
        if not self._added:
            self.normal_seconds.append(seconds)

    def epoch_seconds(self) -> float | None:
        """Median seconds of the normal epochs so far; the latest epoch's before any; ``None`` before that."""
        if self.normal_seconds:
            return float(statistics.median(self.normal_seconds))
        return self.last_seconds

    def state_dict(self) -> dict[str, Any]:
        """The epoch times so far (a resumed run's median goes on from them)."""
        return {"normal_seconds": list(self.normal_seconds), "last_seconds": self.last_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a checkpoint without it starts from no epochs."""
        self.normal_seconds = [float(s) for s in state_dict.get("normal_seconds", [])]
        last = state_dict.get("last_seconds")
        self.last_seconds = None if last is None else float(last)


def cost_in_epochs(record: InterventionRecord, epoch_seconds: float | None) -> dict[str, float] | None:
    """An intervention's cost in epochs of the fit, ``None`` without a positive epoch time.

    Args:
        record: The finished intervention: ``seconds``, ``influence_seconds``, ``search`` (its
            ``seconds`` and ``trial_seconds``) and ``extra_epochs``.
        epoch_seconds: The fit's epoch time (:meth:`EpochClock.epoch_seconds`).

    Returns:
        ``influence`` (the influence phases), ``search`` (the weight search, trials included), ``trials``
        (trial training alone), ``other`` (the rest of ``seconds``: ceiling check, logging, saving the
        weights), ``extra_epochs`` (epochs the intervention added to training) and ``total``
        (``influence + search + other + extra_epochs``), in epochs.
    """
    if epoch_seconds is None or not (math.isfinite(epoch_seconds) and epoch_seconds > 0.0):
        return None
    search = record.search or {}
    influence_seconds = float(sum(record.influence_seconds.values()))
    search_seconds = float(search.get("seconds") or 0.0)
    trial_seconds = float(search.get("trial_seconds") or 0.0)
    other_seconds = max(0.0, record.seconds - influence_seconds - search_seconds)
    extra = float(record.extra_epochs)
    return {
        "influence": influence_seconds / epoch_seconds,
        "search": search_seconds / epoch_seconds,
        "trials": trial_seconds / epoch_seconds,
        "other": other_seconds / epoch_seconds,
        "extra_epochs": extra,
        "total": (influence_seconds + search_seconds + other_seconds) / epoch_seconds + extra,
    }
