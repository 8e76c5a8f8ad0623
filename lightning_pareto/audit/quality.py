"""How well the suspect rule finds known label flips, beside the loss-based baseline."""

from __future__ import annotations

import numpy as np

__all__ = ["flip_detection"]


def _precision_recall(flagged: np.ndarray, flipped: np.ndarray) -> tuple[float, float]:
    hits = int((flagged & flipped).sum())
    precision = hits / int(flagged.sum()) if flagged.any() else float("nan")
    recall = hits / int(flipped.sum()) if flipped.any() else float("nan")
    return precision, recall


def flip_detection(suspect: np.ndarray, flipped_indices: np.ndarray, training_loss: np.ndarray) -> dict[str, float]:
    """Precision and recall of the suspects against the known flips, and of the loss baseline at the same count.

    The baseline flags the ``m`` samples with the highest training loss, ``m`` = the number of suspects
    (ties in index order), so the two are compared at equal effort.

    Args:
        suspect: ``(n,)`` bool mask.
        flipped_indices: Training indices whose label was flipped.
        training_loss: ``(n,)`` per-sample training loss at the same model.

    Returns:
        ``{"suspects", "flips", "precision", "recall", "loss_precision", "loss_recall"}`` (NaN where undefined).

    Example:
        >>> quality = flip_detection(np.array([True, True, False, False]), np.array([0, 2]),
        ...                          np.array([0.1, 0.2, 3.0, 0.0]))
        >>> quality["precision"], quality["recall"], quality["loss_precision"]
        (0.5, 0.5, 0.5)
    """
    suspect = np.asarray(suspect, dtype=bool)
    flipped = np.zeros(suspect.size, dtype=bool)
    flipped[np.asarray(flipped_indices, dtype=np.int64)] = True
    count = int(suspect.sum())
    by_loss = np.zeros(suspect.size, dtype=bool)
    loss = np.nan_to_num(np.asarray(training_loss, dtype=np.float64), nan=-np.inf)
    by_loss[np.argsort(-loss, kind="stable")[:count]] = True
    precision, recall = _precision_recall(suspect, flipped)
    loss_precision, loss_recall = _precision_recall(by_loss, flipped)
    return {
        "suspects": count,
        "flips": int(flipped.sum()),
        "precision": precision,
        "recall": recall,
        "loss_precision": loss_precision,
        "loss_recall": loss_recall,
    }
