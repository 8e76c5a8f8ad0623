"""Argument checks shared by the Pareto functions: influence matrices and class-index lists."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def as_float_array(value: Any) -> np.ndarray:
    """Converts a NumPy array, nested sequence or torch tensor to a float64 NumPy array.

    Torch is never imported here: a tensor is recognised by its ``detach`` method.

    Args:
        value: Array-like of numbers, or a torch tensor on any device.

    Returns:
        A float64 array (a copy when a conversion was needed).
    """
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def as_influence_matrix(influence: Any, name: str = "I") -> np.ndarray:
    """Checks and converts a category-wise influence matrix.

    Args:
        influence: Array-like or tensor of shape ``(n, K)``: row i is training sample i's influence
            vector, column c its influence on class c (positive = the sample helps class c).
        name: Argument name used in error messages.

    Returns:
        The matrix as a float64 array of shape ``(n, K)``.

    Raises:
        ValueError: If the matrix is not two-dimensional, is empty or holds NaN or infinite values.
    """
    matrix = as_float_array(influence)
    if matrix.ndim != 2:
        raise ValueError(
            f"`{name}` must be an influence matrix of shape (num_samples, num_classes); got shape {matrix.shape}."
        )
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"`{name}` must have at least one row and one column; got shape {matrix.shape}.")
    if not np.all(np.isfinite(matrix)):
        bad_rows = np.flatnonzero(~np.all(np.isfinite(matrix), axis=1))
        raise ValueError(
            f"`{name}` holds NaN or infinite values in {bad_rows.size} rows (first: {bad_rows[:5].tolist()}); "
            "recompute the influence (e.g. with more damping) or drop those rows."
        )
    return matrix


def as_class_indices(classes: Iterable[int] | int, num_classes: int, name: str) -> tuple[int, ...]:
    """Checks a non-empty list of distinct class indices.

    Args:
        classes: A class index or an iterable of class indices.
        num_classes: Number of classes K; indices must lie in ``[0, K)``.
        name: Argument name used in error messages.

    Returns:
        The indices as a tuple of ints, in the order given.

    Raises:
        TypeError: If an entry is not an integer.
        ValueError: If the list is empty, has duplicates or an index out of range.
    """
    if isinstance(classes, (int, np.integer)):
        classes = [classes]
    if hasattr(classes, "detach"):
        classes = classes.detach().cpu().tolist()
    indices = list(classes)
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"`{name}` must hold integer class indices; got {index!r} ({type(index).__name__}).")
    if not indices:
        raise ValueError(f"`{name}` must name at least one class; got an empty list.")
    out_of_range = [int(i) for i in indices if not 0 <= i < num_classes]
    if out_of_range:
        raise ValueError(f"`{name}` has class indices {out_of_range} outside [0, {num_classes}).")
    if len(set(int(i) for i in indices)) != len(indices):
        raise ValueError(f"`{name}` has duplicated class indices: {[int(i) for i in indices]}.")
    return tuple(int(i) for i in indices)
