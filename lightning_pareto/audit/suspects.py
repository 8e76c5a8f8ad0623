"""The suspected-mislabel rule: a training sample that hurts another class strongly, and more than it helps its own.

Influence columns differ in scale from class to class, so the rule works on column-normalised
influence ``Ĩ[:, c] = I[:, c] / mean_i |I[i, c]|`` (the common scale the Pareto LP uses). A flipped
sample (an image of class ``t`` labelled ``y``) teaches the model to call ``t``-like inputs ``y``: its
influence on its labelled class ``y`` stays positive and it is strongly negative on ``t``. Measured on
digits and MNIST-5k (MLPs, ``benchmarks/audit_flips.py``, ``benchmarks/RESULTS.md`` "Sample audit"):

- no flipped sample had a negative influence on its own labelled class, so the rules "hurts every
  class" and "hurts its own class and all but one" flag nothing;
- the class a flipped sample hurts most (other than its label) is its true class for 93% (digits) and
  81% (MNIST-5k) of the flips at 20% noise, hence :func:`likely_labels`;
- "harm > help" alone (``harm = -min_{c != y} Ĩ[i, c]``, ``help = Ĩ[i, y]``) flags 28-30% of a
  *clean* training set, samples whose help and harm are both tiny; the floor ``harm > min_harm``
  (default 3, three times the class's mean absolute influence) cuts that to 7%; with it the precision on
  20% flips is 0.98 (digits) and 0.94 (MNIST-5k), medians over three data seeds.
"""

from __future__ import annotations

import numpy as np

__all__ = ["column_scale", "likely_labels", "suspect_scores", "suspects"]


def _check(influence: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    influence = np.asarray(influence, dtype=np.float64)
    labels = np.asarray(labels)
    if influence.ndim != 2 or influence.shape[1] < 2:
        raise ValueError(f"influence must have shape (n, K) with K >= 2, got {influence.shape}.")
    if labels.shape != (influence.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {influence.shape[0]} integer class indices, got shape {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= influence.shape[1]):
        raise ValueError(f"labels must lie in [0, {influence.shape[1]}), got {labels.min()}..{labels.max()}.")
    return influence, labels.astype(np.int64)


def column_scale(influence: np.ndarray) -> np.ndarray:
    """Each class column's mean absolute influence over finite entries (1 where a column is all zero or NaN).

    Example:
        >>> column_scale(np.array([[1.0, -4.0], [-3.0, 0.0]]))
        array([2., 2.])
    """
    influence = np.asarray(influence, dtype=np.float64)
    finite = np.isfinite(influence)
    count = finite.sum(axis=0)
    total = np.where(finite, np.abs(influence), 0.0).sum(axis=0)
    scale = total / np.maximum(count, 1)
    return np.where(scale > 0, scale, 1.0)


def _normalised(influence: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-normalised influence, each row's help to its own class, and the others (own class masked to +inf)."""
    scaled = influence / column_scale(influence)
    rows = np.arange(scaled.shape[0])
    own = scaled[rows, labels]
    others = scaled.copy()
    others[rows, labels] = np.inf
    return scaled, own, others


def suspect_scores(influence: np.ndarray, labels: np.ndarray, margin: float = 1.0, min_harm: float = 3.0) -> np.ndarray:
    """How far each sample's largest harm to another class clears ``margin`` x its own-class help and ``min_harm``.

    ``score_i = min(harm_i - margin * help_i, harm_i - min_harm)`` with ``harm_i = -min_{c != y_i} Ĩ[i, c]``,
    ``help_i = Ĩ[i, y_i]`` and ``Ĩ`` the column-normalised influence (:func:`column_scale`); a sample
    is a suspect when ``score_i > 0``. Rows with a non-finite entry score NaN (never suspects).

    Args:
        influence: ``(n, K)`` category-wise influence, ``I[i, c] > 0``: sample i helps class c.
        labels: ``(n,)`` training labels as the model saw them.
        margin: How many times its help to its own class the harm must exceed (>= 0).
        min_harm: The least harm, in units of the class's mean absolute influence (>= 0).

    Returns:
        Float64 array of shape ``(n,)``.

    Example:
        >>> influence = np.array([[2.0, 1.0], [1.0, -3.0], [-1.0, 2.0]])
        >>> suspect_scores(influence, np.array([0, 0, 1]), min_harm=0.0).round(2)
        array([-2.  ,  0.75, -0.25])
        >>> suspect_scores(influence, np.array([0, 0, 1]), min_harm=1.0).round(2)
        array([-2.  ,  0.5 , -0.25])
    """
    influence, labels = _check(influence, labels)
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}.")
    if not min_harm >= 0:
        raise ValueError(f"min_harm must be >= 0, got {min_harm!r}.")
    _, own, others = _normalised(influence, labels)
    harm = -others.min(axis=1)
    score = np.minimum(harm - margin * own, harm - min_harm)
    score[~np.isfinite(influence).all(axis=1)] = np.nan
    return score


def suspects(influence: np.ndarray, labels: np.ndarray, margin: float = 1.0, min_harm: float = 3.0) -> np.ndarray:
    """Boolean ``(n,)`` mask of suspected mislabels: :func:`suspect_scores` ``> 0``."""
    with np.errstate(invalid="ignore"):
        return suspect_scores(influence, labels, margin, min_harm) > 0


def likely_labels(influence: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For each sample, the class other than its label that it hurts most (normalised): the likely true label.

    Example:
        >>> likely_labels(np.array([[5.0, -1.0, -9.0], [-2.0, 4.0, 1.0]]), np.array([0, 1]))
        array([2, 0])
    """
    influence, labels = _check(influence, labels)
    _, _, others = _normalised(np.nan_to_num(influence, nan=0.0, posinf=0.0, neginf=0.0), labels)
    return others.argmin(axis=1)
