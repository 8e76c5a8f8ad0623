"""Target classes as users name them: a list of class names/indices, or ``"worst:k"`` at a chosen epoch."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["check_targets", "parse_worst", "worst_classes"]

_WORST = re.compile(r"^worst:(\d+)$")


def parse_worst(targets: Any) -> int | None:
    """``k`` of a ``"worst:k"`` target string, ``None`` for a list of classes.

    Raises:
        ValueError: If ``targets`` is a string other than ``"worst:k"``.

    Example:
        >>> parse_worst("worst:2"), parse_worst(["3", 8])
        (2, None)
    """
    if not isinstance(targets, str):
        return None
    match = _WORST.match(targets.strip())
    if match is None:
        raise ValueError(f"targets as a string must be 'worst:k' with k a positive integer, got {targets!r}.")
    return int(match.group(1))


def check_targets(targets: Any) -> int | None:
    """Check a ``targets`` argument before training; ``k`` of ``"worst:k"``, else ``None``.

    Raises:
        ValueError: If ``targets`` is neither ``"worst:k"`` nor a non-empty list of classes.
    """
    worst_k = parse_worst(targets)
    if worst_k is None:
        if not isinstance(targets, (list, tuple)):
            raise ValueError(f"targets must be a list of class names/indices or 'worst:k', got {targets!r}.")
        if not targets:
            raise ValueError("targets is empty; name at least one class, or use 'worst:k'.")
    return worst_k


def worst_classes(accuracy: Sequence[float | None], k: int) -> list[int]:
    """The ``k`` classes with the lowest accuracy (classes without a value left out), in index order.

    Example:
        >>> worst_classes([0.9, 0.2, float("nan"), 0.5], 2)
        [1, 3]
    """
    present = [(a, c) for c, a in enumerate(accuracy) if a is not None and not math.isnan(a)]
    return sorted(c for _, c in sorted(present)[:k])
