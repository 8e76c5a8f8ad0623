"""Which samples go: the top of a score ranking, the kept rest, and how many removals were corrupted."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

__all__ = ["check_budget", "corruption_precision", "kept_indices", "select_removals", "top_scores"]


def check_budget(budget: int, num_train: int | None = None) -> None:
    """Check a trimming budget: an int ``b`` with ``0 <= b < num_train``.

    Raises:
        TypeError: If ``budget`` is not an int.
        ValueError: If ``budget`` is negative, or removes every training sample.
    """
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an int (the number of samples to remove), got {budget!r}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0 (the number of samples to remove), got {budget}")
    if num_train is not None and budget >= num_train:
        raise ValueError(
            f"budget={budget} would remove the whole training set of {num_train} samples; use a budget below {num_train}"
        )


def select_removals(scores: Tensor, budget: int) -> Tensor:
    """The ``budget`` most harmful training samples: the largest scores, ties broken by lower index.

    Args:
        scores: Float tensor of shape ``(n,)`` from :func:`harm_scores`.
        budget: Number of samples to remove, ``0 <= budget < n``.

    Returns:
        Int64 tensor of shape ``(budget,)`` with dataset indices, most harmful first.

    Raises:
        TypeError: If ``budget`` is not an int.
        ValueError: If ``scores`` is not 1-D or ``budget`` is outside ``[0, n)``.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (n,), got {tuple(scores.shape)}")
    check_budget(budget, scores.numel())
    return top_scores(scores, budget, what="trimming scores")


def top_scores(scores: Tensor, count: int, *, what: str = "scores") -> Tensor:
    """Positions of the ``count`` largest scores, largest first; ties go to the lower position.

    Non-finite scores rank last, with a ``RuntimeWarning`` naming ``what`` and how many there were
    (a NaN must never be chosen ahead of a real score).

    Args:
        scores: Shape ``(n,)``.
        count: How many positions to return, ``0 <= count <= n``.
        what: What the scores are, for the warning.

    Returns:
        Int64 CPU tensor of shape ``(count,)``.

    Example:
        >>> top_scores(torch.tensor([0.5, 2.0, 0.5, -1.0]), 3)
        tensor([1, 0, 2])
    """
    scores = torch.as_tensor(scores).detach().cpu().to(torch.float64)
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        warnings.warn(
            f"{int((~finite).sum())} of {scores.numel()} {what} are not finite; they are ranked last",
            RuntimeWarning,
            stacklevel=3,
        )
        scores = torch.where(finite, scores, torch.full_like(scores, -math.inf))
    return torch.sort(scores, descending=True, stable=True).indices[:count].clone()


def kept_indices(num_train: int, removed: Tensor) -> Tensor:
    """The training indices not in ``removed``, ascending (int64, shape ``(num_train - len(removed),)``)."""
    keep = torch.ones(num_train, dtype=torch.bool)
    keep[removed] = False
    return keep.nonzero().squeeze(1)


def corruption_precision(removed: Tensor, source: object) -> dict[str, float]:
    """Share of the removed samples that the data set corrupted on purpose.

    Args:
        removed: Int64 dataset indices of the removed training samples, shape ``(b,)``, ``b >= 1``.
        source: Anything with ``flipped_indices`` and/or ``noisy_feature_indices`` (int64 tensors
            of training indices), e.g. a :mod:`lightning_pareto.data` datamodule after ``setup()``.

    Returns:
        ``{"flipped_precision": ..., "noisy_precision": ...}`` for the attributes present and
        non-empty (empty dict when none applies or ``removed`` is empty).
    """
    precision = {}
    if removed.numel() == 0:
        return precision
    for attribute, key in (("flipped_indices", "flipped_precision"), ("noisy_feature_indices", "noisy_precision")):
        corrupted = getattr(source, attribute, None)
        if isinstance(corrupted, Tensor) and corrupted.numel():
            precision[key] = float(torch.isin(removed.cpu(), corrupted.cpu()).double().mean())
    return precision
