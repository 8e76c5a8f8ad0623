"""Randomized subspace iteration for the leading eigenpairs of a wide K-FAC input factor."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_pareto.influence._threads import single_threaded_lapack

__all__ = ["leading_eigh"]

# Randomized subspace iteration: starting rank, oversampling, power iterations.
_START_RANK, _OVERSAMPLING, _POWER_ITERATIONS = 256, 32, 2


def leading_eigh(matrix: Tensor, tolerance: float, seed: int = 0) -> tuple[Tensor, Tensor] | None:
    """Leading eigenpairs of a positive semi-definite matrix down to ``tolerance`` times the largest.

    Randomized subspace iteration (Halko, Martinsson & Tropp 2011, algorithm 4.4; float32 range finder,
    float64 Rayleigh-Ritz) with a seeded start, growing the rank from ``_START_RANK`` (see
    ``_next_rank``) until the smallest kept eigenvalue is below ``tolerance`` times the largest (so
    everything discarded is smaller still).

    Args:
        matrix: Symmetric PSD tensor of shape ``(d, d)``, float32 or float64.
        tolerance: Relative size of the smallest eigenvalue worth keeping.
        seed: Seed of the random start (the same on every rank, so every rank gets the same basis).

    Returns:
        ``(values descending, vectors as columns)`` of shapes ``(k,)`` and ``(d, k)``, or ``None``
        when the spectrum does not decay that far within ``d / 2`` directions, or is not on course
        to (then a dense eigendecomposition is cheaper).
    """
    # The range finder runs in float32 (its error, ~1e-7 of the largest eigenvalue, is far below the
    # 1e-3 cut) at twice float64's speed; the Rayleigh-Ritz eigenproblem that gives the pairs is
    # float64, its projection ``Q^T M Q`` in the matrix's own dtype (a float32 matrix's entries carry
    # float32 rounding already).
    single = matrix.float()
    size = matrix.shape[0]
    generator = torch.Generator().manual_seed(seed)
    rank = _START_RANK
    while rank + _OVERSAMPLING <= size // 2:
        sketch = torch.randn(size, rank + _OVERSAMPLING, generator=generator).to(matrix.device)
        basis = _orthonormal(single @ sketch)
        for _ in range(_POWER_ITERATIONS):
            basis = _orthonormal(single @ basis)
        basis = _orthonormal(basis.double())
        image = (matrix @ basis.to(matrix.dtype)).double()
        with single_threaded_lapack(matrix.device):
            values, vectors = torch.linalg.eigh(basis.T @ image)
        values, vectors = values.flip(0)[:rank], (basis @ vectors).flip(1)[:, :rank]
        if values[-1] <= tolerance * values[0]:
            keep = int((values > tolerance * values[0]).sum())
            return values[:keep], vectors[:, :keep]
        rank = _next_rank(values, tolerance, limit=size // 2 - _OVERSAMPLING)
        if rank is None:  # the decay will not reach the tolerance in time: give up now
            return None
    return None


def _orthonormal(columns: Tensor) -> Tensor:
    """An orthonormal basis of the column space of a tall ``columns`` (thin QR, one LAPACK thread)."""
    with single_threaded_lapack(columns.device):
        return torch.linalg.qr(columns).Q


def _next_rank(values: Tensor, tolerance: float, limit: int) -> int | None:
    """Rank of the next subspace iteration after ``values`` (descending) fell short of ``tolerance``.

    Extrapolates the log-linear decay of the tail half of ``values`` to where it reaches
    ``tolerance * values[0]``, with a 25% margin, and asks for that rank, between ``1.25 * rank`` and
    ``2 * rank`` and at most ``limit`` (a round costs in proportion to its rank, so a doubling
    overshoots by about one round's cost at most). ``None`` when the extrapolation lies beyond
    ``limit`` or the tail does not decay: the iterations would end in a dense eigendecomposition
    anyway, so it is cheaper to go there now.
    """
    rank = values.shape[0]
    tail = values[rank // 2 :].clamp(min=torch.finfo(values.dtype).tiny).log()
    positions = torch.arange(rank // 2, rank, dtype=values.dtype)
    slope = torch.cov(torch.stack([positions, tail]))[0, 1] / positions.var()
    if slope >= 0:
        return None
    intercept = tail.mean() - slope * positions.mean()
    reach = float((torch.log(values[0] * tolerance) - intercept) / slope)
    if reach > limit:
        return None
    wanted = 32 * -(-int(1.25 * reach) // 32)
    return int(min(2 * rank, limit, max(rank + rank // 4, wanted)))
