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
    """Seconds spent in each phase of an influence computation, both engines; pass one in to have it filled.

    Phases a computation does not run stay at ``0.0``; a phase run twice accumulates.

    Attributes:
        collect: FI: the pass recording the scope's inputs of the training and validation sets.
        factors: Pass over the training set for the curvature (K-FAC covariances, or the dense
            GGN/Hessian).
        eigen: Eigendecompositions of the K-FAC factors (float64), or the dense factorisation.
        correction: EKFAC pass over the training set for the eigenvalue correction.
        queries: Validation (FI^active: pool) loss gradients; per class for category-wise influence.
        precondition: Applying the damped inverse curvature to the queries.
        scores: Scoring pass over the training set.
        metric: FI^active: each labelled sample's metric-tensor and parameter-response factors.
        pairs: FI^active: the pool-by-labelled-set products and their aggregation.
        forest: FI's subsampling: the random forest fitted to the scored samples' ranks.
    """

    collect: float = 0.0
    factors: float = 0.0
    eigen: float = 0.0
    correction: float = 0.0
    queries: float = 0.0
    precondition: float = 0.0
    scores: float = 0.0
    metric: float = 0.0
    pairs: float = 0.0
    forest: float = 0.0

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
