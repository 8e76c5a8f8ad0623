"""The validation guard of held weights and of redone epochs: which classes a weighted epoch hurt."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["accuracy_change", "noise_tolerance", "redo_verdict", "shrink_weights", "violations"]


def accuracy_change(before: Sequence[float | None], after: Sequence[float | None]) -> list[float | None]:
    """Per-class ``after - before`` (``None`` where either side has no value).

    Example:
        >>> accuracy_change([0.5, None, 0.75], [0.75, 0.5, 0.5])
        [0.25, None, -0.25]
    """
    return [None if _missing(b) or _missing(a) else float(a) - float(b) for b, a in zip(before, after)]


def violations(
    before: Sequence[float | None],
    after: Sequence[float | None],
    targets: Sequence[int],
    tolerance: float | Sequence[float],
) -> list[int]:
    """Non-target classes whose accuracy fell by more than ``tolerance`` (one, or one per class) from ``before`` to ``after``.

    Example:
        >>> violations([0.9, 0.9, 0.5], [0.8, 0.89, 0.4], targets=[2], tolerance=0.05)
        [0]
        >>> violations([0.9, 0.9, 0.5], [0.8, 0.89, 0.4], targets=[2], tolerance=[0.15, 0.05, 0.05])
        []
    """
    change = accuracy_change(before, after)
    limits = [float(tolerance)] * len(change) if isinstance(tolerance, (int, float)) else [float(t) for t in tolerance]
    return [c for c, d in enumerate(change) if c not in targets and d is not None and d < -limits[c]]


def noise_tolerance(
    accuracy: Sequence[float | None], support: Sequence[int], tolerance: float, z: float = 2.0
) -> list[float]:
    """Per-class tolerance no smaller than the validation noise of an epoch-to-epoch accuracy change.

    A class with ``n`` validation samples at accuracy ``p`` moves by about ``sqrt(2 p (1 - p) / n)``
    between two epochs from sampling noise alone (two binomial proportions); ``z`` of those is not
    taken for harm. With 36 samples a class at 90% gets 0.14, with 100 samples 0.085.

    Example:
        >>> [round(t, 3) for t in noise_tolerance([0.9, 0.9, None], [36, 10000, 0], tolerance=0.03)]
        [0.141, 0.03, 0.03]
    """
    limits = []
    for p, n in zip(accuracy, support):
        noise = 0.0 if p is None or math.isnan(p) or n <= 0 else z * math.sqrt(2.0 * p * (1.0 - p) / n)
        limits.append(max(tolerance, noise))
    return limits


def redo_verdict(
    before: Sequence[float | None],
    bad: Sequence[float | None],
    redo: Sequence[float | None],
    dropped: Sequence[int],
    tolerance: float | Sequence[float],
) -> str:
    """Why a Course Correction redo is rejected ("" = accepted).

    A redo is kept only if it beats the detrimental epoch on the dropped classes (mean change > 0) and
    is not itself detrimental: no other class below its accuracy before the detrimental epoch by more
    than ``tolerance`` (one, or one per class). The detrimental epoch's own values of the other classes
    are no reference: a class that absorbed the dropped classes' predictions there is inflated.

    Example:
        >>> redo_verdict([0.8, 0.9], [0.2, 0.95], [0.6, 0.88], dropped=[0], tolerance=0.03)
        ''
        >>> redo_verdict([0.8, 0.9], [0.2, 0.95], [0.6, 0.8], dropped=[0], tolerance=0.03)
        'the redo lowered class 1 by 10.0 points against the epoch before the detrimental one'
    """
    gains = [d for c, d in enumerate(accuracy_change(bad, redo)) if c in dropped and d is not None]
    if not gains or sum(gains) / len(gains) <= 0:
        return "the redo did not raise the dropped classes above the detrimental epoch"
    hurt = violations(before, redo, dropped, tolerance)
    if hurt:
        change = accuracy_change(before, redo)
        worst = min(hurt, key=lambda c: change[c])  # type: ignore[arg-type, return-value]
        return (
            f"the redo lowered class {worst} by {-100 * change[worst]:.1f} points against the epoch before the "  # type: ignore[operator]
            "detrimental one"
        )
    return ""


def shrink_weights(weights: torch.Tensor, factor: float) -> torch.Tensor:
    """Weights moved towards one: ``1 + factor * (w - 1)`` (the trust radius times ``factor``).

    The result stays within the original bounds and keeps the mean, so the LP's constraints
    still hold with every predicted change scaled by ``factor``.

    Example:
        >>> shrink_weights(torch.tensor([0.0, 1.0, 2.0]), 0.5)
        tensor([0.5000, 1.0000, 1.5000])
    """
    return 1.0 + factor * (weights - 1.0)


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)
