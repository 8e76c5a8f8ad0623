"""Unbalanced MNIST and Redundant MNIST, built from any 10-digit set.

The harder pools of "Enhancing Prediction Performance through Influence Measure", appendix D.2.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Unbalanced MNIST: digits 0-4 each 1/55 of the pool, digits 5-9 each 10/55.
UNBALANCED_SHARES = (1, 1, 1, 1, 1, 10, 10, 10, 10, 10)
# Redundant MNIST: 1 vs 7 vs "neither" (every other digit).
REDUNDANT_CLASS_NAMES = ["1", "7", "neither"]


def _check_digits(labels: Tensor, who: str) -> None:
    if labels.ndim != 1 or labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) > 9:
        raise ValueError(f"{who} needs digit labels 0-9 (MNIST-like data), got labels in a different range")


def unbalanced_positions(labels: Tensor, seed: int, size: int | None = None) -> Tensor:
    """Positions of an Unbalanced-MNIST subset: digits 0-4 each 1/55 of it, digits 5-9 each 10/55.

    The subset is the largest with exactly these shares that the available digits allow (or
    ``size``, rounded down to a multiple of 55).

    Args:
        labels: Int64 digit labels ``(N,)`` in ``[0, 9]``.
        seed: Seed of the per-digit draws.
        size: Wanted subset size; ``None``: as large as possible.

    Returns:
        Sorted int64 positions into ``labels``.

    Raises:
        ValueError: If the labels are not digits, or there are too few of some digit for ``size``.
    """
    _check_digits(labels, "the unbalanced variant")
    counts = torch.bincount(labels, minlength=10)
    unit = min(int(counts[digit]) // share for digit, share in enumerate(UNBALANCED_SHARES))
    if size is not None:
        if size // sum(UNBALANCED_SHARES) > unit:
            raise ValueError(f"the data has too few samples of some digit for an unbalanced pool of {size} samples")
        unit = size // sum(UNBALANCED_SHARES)
    if unit < 1:
        raise ValueError("the data has too few samples of some digit for an unbalanced pool (needs 10 of each of 5-9)")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for digit, share in enumerate(UNBALANCED_SHARES):
        members = torch.nonzero(labels == digit).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[: unit * share]])
    return torch.cat(chosen).sort().values


def redundant_labels(labels: Tensor) -> Tensor:
    """Redundant-MNIST labels: digit 1 -> 0, digit 7 -> 1, every other digit -> 2 ("neither").

    Args:
        labels: Int64 digit labels ``(N,)`` in ``[0, 9]``.

    Returns:
        Int64 labels ``(N,)`` in ``{0, 1, 2}`` (names :data:`REDUNDANT_CLASS_NAMES`).
    """
    _check_digits(labels, "the redundant variant")
    mapped = torch.full_like(labels, 2)
    mapped[labels == 1] = 0
    mapped[labels == 7] = 1
    return mapped
