"""Validation of the FI engine's options, shared by FI^util, the metric factors and FI^active."""

from __future__ import annotations

import math
from collections.abc import Sequence

from lightning_pareto.influence.curvature import CURVATURES

APPROXIMATIONS = ("kfsvd", "subsample")
DEFAULT_ALPHA = 0.2
"""Fraction scored exactly under ``approx="subsample"`` when ``alpha`` is not given."""


def check_approx(approx: str | Sequence[str] | None) -> frozenset[str]:
    """The set of approximations asked for: ``None``, one name or a list of ``APPROXIMATIONS``."""
    if approx is None:
        return frozenset()
    names = [approx] if isinstance(approx, str) else list(approx)
    if not names or not all(isinstance(name, str) and name in APPROXIMATIONS for name in names):
        raise ValueError(f"approx must be None, 'kfsvd', 'subsample' or a list of them, got {approx!r}")
    return frozenset(names)


def check_rank(rank: int | None, approximations: frozenset[str]) -> None:
    """``rank`` is KFSVD's, an int >= 1, given exactly when ``"kfsvd"`` is asked for."""
    if "kfsvd" not in approximations:
        if rank is not None:
            raise ValueError("rank is the truncated-SVD rank of approx='kfsvd'; pass approx='kfsvd' or drop rank")
        return
    if rank is None:
        raise ValueError("approx='kfsvd' needs rank=k, an int >= 1 (the truncated-SVD rank of J)")
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int >= 1, got {rank!r}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")


def check_alpha(alpha: float | None, approximations: frozenset[str]) -> float:
    """The subsampling fraction in ``(0, 1]``: ``alpha``, ``DEFAULT_ALPHA`` when ``None``, 1 without ``"subsample"``."""
    if "subsample" not in approximations:
        if alpha is not None:
            raise ValueError(
                "alpha is the fraction scored exactly under approx='subsample'; pass approx='subsample' or drop alpha"
            )
        return 1.0
    alpha = DEFAULT_ALPHA if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number in (0, 1], got {alpha!r}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    return float(alpha)


def check_curvature(
    curvature: str | None, damping: float | None, svd_tol: float, approximations: frozenset[str]
) -> str:
    """The curvature to fit (``None``: ``"kfac"`` with KFSVD, else ``"exact"``), with ``damping`` and ``svd_tol`` checked."""
    if curvature is None:
        curvature = "kfac" if "kfsvd" in approximations else "exact"
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    valid_number = isinstance(damping, (int, float)) and not isinstance(damping, bool)
    if damping is not None and not (valid_number and math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be None or a finite number >= 0, got {damping!r}")
    if not (isinstance(svd_tol, (int, float)) and 0.0 <= svd_tol < 1.0):
        raise ValueError(f"svd_tol must lie in [0, 1), got {svd_tol!r}")
    return curvature


def check_quantile_range(quantile_range: tuple[float, float]) -> None:
    """``(low, high)`` with ``0 <= low <= high <= 1``."""
    valid = (
        isinstance(quantile_range, (tuple, list))
        and len(quantile_range) == 2
        and all(isinstance(q, (int, float)) and not isinstance(q, bool) and math.isfinite(q) for q in quantile_range)
        and 0.0 <= quantile_range[0] <= quantile_range[1] <= 1.0
    )
    if not valid:
        raise ValueError(f"quantile_range must be (low, high) with 0 <= low <= high <= 1, got {quantile_range!r}")
