"""Wall-clock timings of the influence engine's phases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch

__all__ = ["InfluenceTimings", "timed"]


@dataclass
class InfluenceTimings:
    """Seconds spent in each phase of an influence computation; pass one in to have it filled.

    Phases a computation does not run stay at ``0.0``; a phase run twice accumulates.

    Attributes:
        factors: Pass over the training set for the curvature (K-FAC covariances, or the dense GGN).
        eigen: Eigendecompositions of the K-FAC factors (float64), or the dense Cholesky factorisation.
        correction: EKFAC pass over the training set for the eigenvalue correction.
        queries: Pass over the validation set for the per-class mean loss gradients.
        precondition: Applying the damped inverse curvature to the queries.
        scores: Scoring pass over the training set.
    """

    factors: float = 0.0
    eigen: float = 0.0
    correction: float = 0.0
    queries: float = 0.0
    precondition: float = 0.0
    scores: float = 0.0

    @property
    def total(self) -> float:
        """Sum of all phases, in seconds."""
        return sum(getattr(self, field.name) for field in fields(self))


@contextmanager
def timed(timings: InfluenceTimings | None, phase: str, device: torch.device) -> Iterator[None]:
    """Add the wall-clock time of the block to ``timings.<phase>`` (no-op when ``timings`` is None).

    Args:
        timings: The record to fill, or ``None``.
        phase: A field name of ``InfluenceTimings``.
        device: Device the work runs on; CUDA work is synchronised before reading the clock.
    """
    if timings is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        setattr(timings, phase, getattr(timings, phase) + time.perf_counter() - start)
