"""Has the classifier reached its Pareto performance ceiling? Region counts, PCA ratio, exact criterion."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_pareto.pareto._arrays import as_class_indices, as_influence_matrix
from lightning_pareto.pareto._simplex import min_norm_on_simplex

IMPROVABLE = "improvable"
AT_CEILING = "at the ceiling within tolerance"


@dataclass(frozen=True)
class RegionCounts:
    """How many training samples help every class, hurt every class, or trade one class for another.

    Attributes:
        helps_all: Samples whose influence is positive on every class considered.
        hurts_all: Samples whose influence is negative on every class considered (the paper's
            joint-negative region: removing them is predicted to help every class).
        trade_off: All other samples (mixed signs, or an exact zero).
    """

    helps_all: int
    hurts_all: int
    trade_off: int


@dataclass(frozen=True, eq=False)
class CeilingReport:
    """The Pareto ceiling check of "What Is The Performance Ceiling of My Classifier?" (section 3.3),
    plus the exact first-order criterion.

    Attributes:
        num_samples: Number of training samples n (rows of the influence matrix).
        num_classes: Number of classes K (columns).
        targets: Target class indices the restricted counts refer to (empty when none were given).
        counts: Region counts over all K classes.
        target_counts: Region counts over the target columns only, or ``None`` without targets.
        pca_ratio: The paper's check: explained-variance ratio of the first principal component of the
            n influence vectors (rows of I, all K columns, centred by PCA). NaN when all rows are equal.
            The paper reads a ratio above 0.2 as "room for improvement"; it is a heuristic.
        ratio: Exact criterion with the total weight fixed: ``min_{lam in simplex} ||C lam|| / ||C||_F``
            with ``C = I - mean over rows``. Zero means some non-negative class weighting is orthogonal
            to every reweighting (Gordan's alternative): no first-order Pareto improvement exists.
            Zero when C is all zero (reweighting cannot change anything).
        simplex_weights: The minimising ``lam``, float64 array of shape ``(K,)`` summing to one: the normal
            of the hyperplane the influence vectors lie closest to, i.e. the class trade-off rates.
        ratio_uncentred: The same criterion for I itself, for when the total weight is free (samples
            may be added or removed, not only reweighted).
        simplex_weights_uncentred: Its minimiser, float64 array of shape ``(K,)``.
        tol: Tolerance on ``ratio`` for the verdict.
        verdict: ``"improvable"`` if ``ratio > tol``, else ``"at the ceiling within tolerance"``.
    """

    num_samples: int
    num_classes: int
    targets: tuple[int, ...]
    counts: RegionCounts
    target_counts: RegionCounts | None
    pca_ratio: float
    ratio: float
    simplex_weights: np.ndarray
    ratio_uncentred: float
    simplex_weights_uncentred: np.ndarray
    tol: float
    verdict: str

    @property
    def improvable(self) -> bool:
        """Whether a first-order Pareto improvement exists at tolerance ``tol``."""
        return self.verdict == IMPROVABLE

    def to_dict(self) -> dict[str, Any]:
        """Returns the report as JSON-serialisable builtins (lists, ints, floats, strings)."""
        return {
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "targets": list(self.targets),
            "counts": vars(self.counts).copy(),
            "target_counts": None if self.target_counts is None else vars(self.target_counts).copy(),
            "pca_ratio": self.pca_ratio,
            "ratio": self.ratio,
            "simplex_weights": self.simplex_weights.tolist(),
            "ratio_uncentred": self.ratio_uncentred,
            "simplex_weights_uncentred": self.simplex_weights_uncentred.tolist(),
            "tol": self.tol,
            "verdict": self.verdict,
        }

    def __str__(self) -> str:
        lines = [f"Pareto ceiling report: {self.num_samples} samples x {self.num_classes} classes"]
        lines.append("  all classes:    " + _format_counts(self.counts, self.num_samples))
        if self.target_counts is not None:
            lines.append(f"  targets {list(self.targets)}: " + _format_counts(self.target_counts, self.num_samples))
        lines.append(f"  PCA first-component explained variance (paper's check): {self.pca_ratio:.3f}")
        lines.append(
            f"  min ||C lam|| / ||C||_F, total weight fixed: {self.ratio:.3e} "
            f"at lam = {_format_vector(self.simplex_weights)}"
        )
        lines.append(f"  same without the fixed total (I uncentred):  {self.ratio_uncentred:.3e}")
        comparison = ">" if self.improvable else "<="
        lines.append(f"  verdict: {self.verdict} (ratio {self.ratio:.3e} {comparison} tol {self.tol:.1e})")
        return "\n".join(lines)


def ceiling_report(influence: Any, targets: Iterable[int] | None = None, *, tol: float = 1e-3) -> CeilingReport:
    """Checks whether reweighting the training set can still improve every class (to first order).

    Args:
        influence: Category-wise influence matrix, array-like or torch tensor of shape ``(n, K)``;
            ``I[i, c] > 0`` means up-weighting sample i lowers class c's validation loss.
        targets: Optional class indices whose columns get their own region counts.
        tol: Verdict threshold on the exact criterion ``ratio`` (non-negative).

    Returns:
        A :class:`CeilingReport`.

    Raises:
        ValueError: If ``influence`` is not a finite non-empty 2-D array, ``targets`` is empty, has
            duplicates or out-of-range indices, or ``tol`` is negative or not finite.
    """
    matrix = as_influence_matrix(influence, name="influence")
    num_samples, num_classes = matrix.shape
    target_tuple = () if targets is None else as_class_indices(targets, num_classes, name="targets")
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"`tol` must be a finite non-negative number; got {tol!r}.")

    centred = matrix - matrix.mean(axis=0)
    ratio, simplex_weights = _relative_min_norm(centred)
    ratio_uncentred, simplex_weights_uncentred = _relative_min_norm(matrix)
    return CeilingReport(
        num_samples=num_samples,
        num_classes=num_classes,
        targets=target_tuple,
        counts=_region_counts(matrix),
        target_counts=_region_counts(matrix[:, list(target_tuple)]) if target_tuple else None,
        pca_ratio=_first_component_ratio(centred),
        ratio=ratio,
        simplex_weights=simplex_weights,
        ratio_uncentred=ratio_uncentred,
        simplex_weights_uncentred=simplex_weights_uncentred,
        tol=float(tol),
        verdict=IMPROVABLE if ratio > tol else AT_CEILING,
    )


def _region_counts(matrix: np.ndarray) -> RegionCounts:
    helps_all = int(np.all(matrix > 0, axis=1).sum())
    hurts_all = int(np.all(matrix < 0, axis=1).sum())
    return RegionCounts(helps_all=helps_all, hurts_all=hurts_all, trade_off=matrix.shape[0] - helps_all - hurts_all)


def _first_component_ratio(centred: np.ndarray) -> float:
    squared_singular_values = np.linalg.svd(centred, compute_uv=False) ** 2
    total = squared_singular_values.sum()
    return float(squared_singular_values[0] / total) if total > 0 else float("nan")


def _relative_min_norm(matrix: np.ndarray) -> tuple[float, np.ndarray]:
    frobenius = np.linalg.norm(matrix)
    if frobenius == 0:
        # Nothing can change: every simplex point attains the minimum.
        return 0.0, np.full(matrix.shape[1], 1.0 / matrix.shape[1])
    return min_norm_on_simplex(matrix / frobenius)


def _format_counts(counts: RegionCounts, total: int) -> str:
    def share(count: int) -> str:
        return f"{count} ({100.0 * count / total:.1f}%)"

    return (
        f"helps every class {share(counts.helps_all)}, hurts every class {share(counts.hurts_all)}, "
        f"trade-off {share(counts.trade_off)}"
    )


def _format_vector(vector: np.ndarray) -> str:
    return "[" + ", ".join(f"{value:.3f}" for value in vector) + "]"
