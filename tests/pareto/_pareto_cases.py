"""Synthetic influence matrices and independent references for the Pareto tests.

Nothing here calls ``lightning_pareto``: the references are written from the definitions.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog


def trade_off_influence(num_samples: int, num_classes: int, seed: int, noisy_fraction: float = 0.05) -> np.ndarray:
    """Influence with the structure seen in practice: a sample helps its own class and mildly hurts the
    others (a trade-off), while a few "mislabelled" samples hurt every class. Shape (n, K), float64."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_samples)
    strength = rng.gamma(2.0, 0.5, num_samples)
    influence = -strength[:, None] * rng.uniform(0.0, 0.3, (num_samples, num_classes))
    influence[np.arange(num_samples), labels] = strength * rng.uniform(0.5, 1.5, num_samples)
    influence += 0.1 * rng.normal(size=(num_samples, num_classes)) * strength[:, None]
    noisy = rng.random(num_samples) < noisy_fraction
    influence[noisy] = -np.abs(influence[noisy])
    return influence * 1e-3


def hyperplane_influence(num_samples: int, normal: np.ndarray, seed: int, offset: float = 0.0) -> np.ndarray:
    """Random influence vectors on the hyperplane ``normal^T x = offset``: shape (n, len(normal))."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(num_samples, len(normal)))
    unit = normal / np.linalg.norm(normal)
    points -= np.outer(points @ unit, unit)
    return points + offset * unit / np.linalg.norm(normal)


def min_norm_by_faces(matrix: np.ndarray) -> tuple[float, np.ndarray]:
    """``min ||matrix lam||`` over the simplex by enumerating faces: on each subset of columns solve the
    equality-constrained least squares (its KKT system) and keep feasible points. Exact for small K."""
    num_columns = matrix.shape[1]
    best_norm, best_point = np.inf, np.zeros(num_columns)
    gram = matrix.T @ matrix
    for size in range(1, num_columns + 1):
        for face in combinations(range(num_columns), size):
            face_gram = gram[np.ix_(face, face)]
            kkt = np.block([[2 * face_gram, np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
            rhs = np.zeros(size + 1)
            rhs[-1] = 1.0
            solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]
            if np.any(solution < -1e-12) or abs(solution.sum() - 1) > 1e-9:
                continue
            point = np.zeros(num_columns)
            point[list(face)] = solution
            norm = float(np.linalg.norm(matrix @ point))
            if norm < best_norm:
                best_norm, best_point = norm, point
    return best_norm, best_point


def reference_lp_gains(
    influence: np.ndarray,
    targets: list[int],
    thresholds: dict[int, float],
    *,
    w_min: float,
    w_max: float,
    trust: float,
) -> tuple[float, np.ndarray]:
    """The reweighting LP written with |delta_i| <= t_i (a different formulation from the package's):
    maximise sum_t Delta_t / mean|I_t| subject to Delta_c >= -tau_c for c in ``thresholds``, Delta_t >= 0,
    sum delta = 0, w_min - 1 <= delta <= w_max - 1, sum t <= trust * n. Returns (objective, Delta)."""
    num_samples, num_classes = influence.shape
    scale = np.abs(influence).mean(axis=0)
    identity = sp.identity(num_samples, format="csr")
    # Variables [delta, t].
    cost = np.concatenate([-(influence[:, targets] / scale[targets]).sum(axis=1), np.zeros(num_samples)])
    # Rows -Delta_c * n / scale_c <= tau_c * n / scale_c: coefficients of order one, so that HiGHS's
    # absolute feasibility tolerance (1e-7) is negligible.
    gain_rows = [(-influence[:, c] / scale[c], tau * num_samples / scale[c]) for c, tau in thresholds.items()]
    gain_rows += [(-influence[:, t] / scale[t], 0.0) for t in targets]
    a_ub = sp.vstack(
        [
            sp.hstack([identity, -identity]),
            sp.hstack([-identity, -identity]),
            sp.csr_matrix(np.concatenate([np.zeros(num_samples), np.ones(num_samples)])[None, :]),
            sp.csr_matrix(np.array([np.concatenate([row, np.zeros(num_samples)]) for row, _ in gain_rows])),
        ]
    )
    b_ub = np.concatenate([np.zeros(2 * num_samples), [trust * num_samples], [tau for _, tau in gain_rows]])
    a_eq = sp.csr_matrix(np.concatenate([np.ones(num_samples), np.zeros(num_samples)])[None, :])
    bounds = [(w_min - 1.0, w_max - 1.0)] * num_samples + [(0.0, None)] * num_samples
    result = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[0.0], bounds=bounds, method="highs")
    assert result.status == 0, result.message
    delta = result.x[:num_samples]
    return float(-result.fun) / num_samples, influence.T @ delta / num_samples
