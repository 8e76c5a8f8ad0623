"""Gram accumulation ``total += rows^T rows`` for the K-FAC covariance factors, upper triangle only."""

from __future__ import annotations

from torch import Tensor

__all__ = ["accumulate_gram", "aligned", "symmetrized"]

# Factors at least _STRIPS_FROM wide accumulate only their upper triangle in row strips (see _strips).
_STRIP_WIDTH, _STRIPS_FROM = 800, 192
# Widths BLAS blocks well: strips and the padded products of the correction are multiples of this.
_ALIGNMENT = 32


def accumulate_gram(total: Tensor, rows: Tensor, *, ones_last: bool = False, ones_implied: bool = False) -> None:
    """``total += rows^T rows``; from ``_STRIPS_FROM`` columns on only the upper triangle.

    The upper triangle is written in row strips (``total[strip, start:] += rows[:, strip]^T rows[:, start:]``),
    about 60% of the full product's work for the 3,137 inputs of a Linear after a feature map (no
    BLAS ``syrk`` through torch; SciPy's leaves OpenBLAS threads spinning). Finish with ``symmetrized``.

    Args:
        total: Square tensor ``(d, d)`` to accumulate into.
        rows: Tensor ``(m, d)``.
        ones_last: The last column of ``rows`` is all ones (the bias slot of layer inputs): its row
            of the Gram matrix is the column sums and the row count, so the product runs over the
            other ``d - 1`` columns only (MKL is up to twice as fast on a width of 3,136 or 288 as
            on 3,137 or 289). Finish with ``symmetrized(total, ones_last=True)``.
        ones_implied: As ``ones_last``, for ``rows`` without that column (a Linear layer's input as
            it is): ``total`` is one wider than ``rows``.
    """
    if ones_last or ones_implied:
        features = rows if ones_implied else rows[:, :-1]
        total[:-1, -1] += features.sum(dim=0)
        total[-1, -1] += rows.shape[0]
        rows, total = features, total[:-1, :-1]
    strips = _strips(rows.shape[1])
    if not strips:
        total.addmm_(rows.T, rows)
        return
    for start, stop in strips:
        total[start:stop, start:].addmm_(rows[:, start:stop].T, rows[:, start:])


def symmetrized(total: Tensor, *, ones_last: bool = False) -> Tensor:
    """Fill in place what ``accumulate_gram`` left out (lower triangle, ones row); returns ``total``."""
    if ones_last:
        symmetrized(total[:-1, :-1])
        total[-1, :-1] = total[:-1, -1]
        return total
    for start, stop in _strips(total.shape[0]):  # diagonal blocks were written whole
        total[stop:, start:stop] = total[start:stop, stop:].T
    return total


def _strips(width: int) -> list[tuple[int, int]]:
    """``accumulate_gram``'s row strips ``(start, stop)`` of a ``width``-wide factor; none below ``_STRIPS_FROM``.

    Strips of ``_STRIP_WIDTH`` from ``2 * _STRIP_WIDTH`` columns on, three strips (widths a multiple
    of 32, which BLAS blocks well) below that, the remainder joined to the last strip when it is
    under half a strip. Three strips skip a third of the product (the MNIST CNN's 289-wide conv factor).
    """
    if width < _STRIPS_FROM:
        return []
    strip = _STRIP_WIDTH if width >= 2 * _STRIP_WIDTH else aligned(-(-width // 3))
    edges = [*range(0, width, strip), width]
    if edges[-1] - edges[-2] < strip // 2:
        del edges[-2]
    return list(zip(edges[:-1], edges[1:]))


def aligned(width: int) -> int:
    """``width`` rounded up to a multiple of ``_ALIGNMENT``."""
    return -(-width // _ALIGNMENT) * _ALIGNMENT
