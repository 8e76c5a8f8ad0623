"""Seeded corruption of training sets: label flips and feature noise."""

from __future__ import annotations

import numpy as np

__all__ = ["add_feature_noise", "check_fraction", "flip_labels", "flip_labels_per_class"]


def check_fraction(name: str, value: float) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is a number in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r} (0 disables it).")


def _flip(y: np.ndarray, chosen: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Give each chosen sample a label drawn uniformly from the *other* classes."""
    flipped = y.copy()
    shift = rng.integers(1, num_classes, size=chosen.size)
    flipped[chosen] = (y[chosen] + shift) % num_classes
    return flipped


def flip_labels(
    y: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(fraction * n)`` labels, each to a different class chosen uniformly.

    Args:
        y: Int64 array of shape ``(n,)`` with labels in ``[0, num_classes)``.
        fraction: Share of labels to flip, in ``[0, 1)``.
        num_classes: Number of classes (>= 2).
        rng: Source of randomness.

    Returns:
        ``(noisy_y, flipped)``: the new labels and the sorted int64 positions that were flipped.

    Example:
        >>> y, flipped = flip_labels(np.zeros(10, dtype=np.int64), 0.3, 2, np.random.default_rng(0))
        >>> int(y.sum()), flipped.size
        (3, 3)
    """
    check_fraction("label_noise", fraction)
    chosen = np.sort(rng.choice(y.size, size=int(round(fraction * y.size)), replace=False)).astype(np.int64)
    return _flip(y, chosen, num_classes, rng), chosen


def flip_labels_per_class(
    y: np.ndarray, counts: list[int], num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``counts[c]`` randomly chosen labels of each class ``c`` to another class.

    Args:
        y: Int64 array of shape ``(n,)``.
        counts: Number of labels to flip per class, one entry per class.
        num_classes: Number of classes.
        rng: Source of randomness.

    Returns:
        ``(noisy_y, flipped)`` as in :func:`flip_labels`.

    Raises:
        ValueError: If ``counts`` has the wrong length, a negative entry, or more than a class holds.
    """
    if len(counts) != num_classes:
        raise ValueError(f"flips_per_class needs one count per class ({num_classes}), got {list(counts)}.")
    chosen = []
    for c, count in enumerate(counts):
        members = np.flatnonzero(y == c)
        if not 0 <= count <= members.size:
            raise ValueError(f"flips_per_class[{c}]={count} but class {c} has {members.size} training samples.")
        chosen.append(rng.choice(members, size=count, replace=False))
    picked = np.sort(np.concatenate(chosen)).astype(np.int64)
    return _flip(y, picked, num_classes, rng), picked


def add_feature_noise(
    x: np.ndarray, fraction: float, rng: np.random.Generator, variance: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Add white noise of the given variance to ``round(fraction * n)`` random rows (the FI paper's appendix D.1).

    Args:
        x: Float array of shape ``(n, ...)``.
        fraction: Share of rows to perturb, in ``[0, 1)``.
        rng: Source of randomness.
        variance: Variance of the Gaussian noise.

    Returns:
        ``(noisy_x, rows)``: the new features and the sorted int64 rows that were perturbed.
    """
    check_fraction("feature_noise", fraction)
    rows = np.sort(rng.choice(x.shape[0], size=int(round(fraction * x.shape[0])), replace=False)).astype(np.int64)
    noisy = x.copy()
    noisy[rows] += rng.normal(0.0, np.sqrt(variance), size=noisy[rows].shape).astype(x.dtype)
    return noisy, rows
