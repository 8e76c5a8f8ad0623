"""Leading eigenpairs of a wide K-FAC input factor: randomized subspace iteration, or Nyström from a sketch."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from lightning_pareto.influence._threads import single_threaded_lapack

__all__ = [
    "SKETCH_COLUMNS",
    "SKETCH_OVERSAMPLING",
    "InputSketch",
    "leading_eigh",
    "nystrom_eigh",
    "sketch_test_matrix",
]

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


SKETCH_COLUMNS = 384
"""Columns of the random test matrix a wide Linear layer's input factor is sketched with (``InputSketch``)."""
SKETCH_OVERSAMPLING = 32
"""Of ``SKETCH_COLUMNS``, the trailing ones not trusted as eigenpairs (so at most 352 directions are kept)."""


@dataclass(frozen=True)
class InputSketch:
    """A wide input factor ``A`` seen through a random test matrix instead of held whole.

    The factor pass accumulates ``A @ test`` (``d x r``, a few hundred columns) and ``trace(A)``
    instead of the ``d x d`` Gram matrix: for the MNIST CNN's 3,137-input Linear layer that is 9.6 G
    multiply-adds over 4,000 samples instead of 20 G, and no subspace iteration on a ``d x d`` matrix
    afterwards (``nystrom_eigh``).

    Attributes:
        image: ``A @ test``, shape ``(d, r)``.
        test: The test matrix (orthonormal columns), shape ``(d, r)``; the same on every rank.
        trace: ``trace(A)``, a float64 scalar tensor.
    """

    image: Tensor
    test: Tensor
    trace: Tensor

    @property
    def size(self) -> int:
        """``d``: the factor's side."""
        return self.image.shape[0]


@cache
def sketch_test_matrix(size: int, columns: int, *, seed: int = 0) -> Tensor:
    """A seeded ``(size, columns)`` float32 CPU test matrix with orthonormal columns (Gaussian, then QR).

    The same seed gives the same matrix on every rank, so sketches summed over ranks are one sketch.
    Cached: every intervention of a run sketches with the same matrix (do not modify it in place).
    """
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(size, columns, generator=generator, dtype=torch.float64)
    with single_threaded_lapack(gaussian.device):
        return torch.linalg.qr(gaussian).Q.float()


def nystrom_eigh(sketch: InputSketch, tolerance: float) -> tuple[Tensor, Tensor, bool]:
    """Leading eigenpairs of a PSD matrix from its sketch, down to ``tolerance`` times the largest.

    The single-pass Nyström approximation ``A ~ Y (test^T Y)^+ Y^T`` with ``Y = A test`` (Tropp, Yurtsever,
    Udell & Cevher 2017, "Fixed-rank approximation of a positive-semidefinite matrix from streaming
    data", algorithm 3, with its shift for stability; float64). Its eigenvectors are exact for the
    part of ``A`` the test matrix captures; the EKFAC correction then re-fits the eigenvalues in
    whatever basis it is given.

    Args:
        sketch: The factor's ``InputSketch``.
        tolerance: Relative size of the smallest eigenvalue worth keeping.

    Returns:
        ``(values descending, vectors as columns, reached)``: the pairs above ``tolerance`` times the
        largest among the first ``r - SKETCH_OVERSAMPLING``, and whether the spectrum fell below the
        tolerance within them (if not, all of those are returned).
    """
    if not bool(sketch.image.any()):  # an all-zero factor (inputs all zero): any direction, eigenvalue 0
        return sketch.image.new_zeros(1, dtype=torch.float64), sketch.test[:, :1].double(), True
    # Shift by the rounding of the summed image (float32 in training) so the core stays positive definite.
    shift = float(torch.finfo(sketch.image.dtype).eps * sketch.image.norm() * sketch.size**0.5)
    image, test = sketch.image.double(), sketch.test.double().to(sketch.image.device)
    with single_threaded_lapack(image.device):
        while True:
            shifted = image + shift * test
            core = test.T @ shifted
            factor, info = torch.linalg.cholesky_ex((core + core.T) / 2)
            if int(info) == 0:
                break
            shift *= 10.0
        # The pairs are the left singular vectors and squared singular values of E = shifted L^{-T}
        # (core = L L^T); from the r x r eigenproblem of E^T E = L^{-1} (shifted^T shifted) L^{-T},
        # several times faster than an SVD of the d x r matrix E.
        gram = shifted.T @ shifted
        half = torch.linalg.solve_triangular(factor, gram, upper=False)
        squared, right = torch.linalg.eigh(torch.linalg.solve_triangular(factor, half.T, upper=False))
    squared, right = squared.flip(0), right.flip(1)
    values = (squared - shift).clamp(min=0.0)
    usable = max(1, image.shape[1] - SKETCH_OVERSAMPLING)
    values = values[:usable]
    reached = bool(values[-1] <= tolerance * values[0])
    keep = int((values > tolerance * values[0]).sum()) if reached else usable
    keep = max(1, min(keep, int((squared[:keep] > 0).sum())))
    with single_threaded_lapack(image.device):
        coordinates = torch.linalg.solve_triangular(factor.T, right[:, :keep], upper=True)
    vectors = (shifted @ coordinates) / squared[:keep].sqrt()
    return values[:keep], vectors, reached
