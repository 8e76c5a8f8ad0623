"""Smallest norm of a convex combination of matrix columns (the minimum-norm point of their hull)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def min_norm_on_simplex(matrix: np.ndarray) -> tuple[float, np.ndarray]:
    """Solves ``min ||matrix @ lam||_2`` over the probability simplex exactly.

    With ``mu = s * lam`` (``s >= 0``, ``lam`` on the simplex), the non-negative least-squares problem
    ``min_{mu >= 0} ||matrix mu||^2 + (1^T mu - 1)^2`` equals ``min_lam d(lam)^2 / (1 + d(lam)^2)`` with
    ``d(lam) = ||matrix lam||`` after minimising over ``s``; the map is increasing in ``d``, so the NNLS
    minimiser, renormalised to sum one, is the simplex minimiser. The n rows are first reduced to the
    ``K x K`` triangular factor of a QR decomposition (same Gram matrix), so the NNLS has K + 1 rows.

    Args:
        matrix: Float64 array of shape ``(n, K)``, not all zero; scale it to norm about one for accuracy.

    Returns:
        The minimal norm (float) and the minimising simplex point, a float64 array of shape ``(K,)``.
    """
    num_columns = matrix.shape[1]
    triangular = np.linalg.qr(matrix, mode="r")
    augmented = np.vstack([triangular, np.ones((1, num_columns))])
    target = np.zeros(augmented.shape[0])
    target[-1] = 1.0
    mu, _ = nnls(augmented, target, maxiter=50 * num_columns)
    simplex_point = mu / mu.sum()
    return float(np.linalg.norm(matrix @ simplex_point)), simplex_point
