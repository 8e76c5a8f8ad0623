"""Per-class accuracy of a model on a loader, outside Lightning's loops (trial epochs, test comparisons)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassStatScores

from lightning_pareto.callbacks._modes import training_mode
from lightning_pareto.weighting import unpack_batch

__all__ = ["finite_accuracy", "per_class_accuracy"]


def per_class_accuracy(model: nn.Module, loader: DataLoader, num_classes: int) -> np.ndarray:
    """Accuracy of every class on a loader, in eval mode without gradients.

    Args:
        model: Maps a batch's inputs to logits ``(b, num_classes)``.
        loader: Yields ``(x, y)`` or ``(x, y, index)``.
        num_classes: Number of classes ``K``.

    Returns:
        Float64 array of shape ``(K,)``; NaN for classes without samples.
    """
    device = next(model.parameters()).device
    # Local counts only: this runs on one rank (trial fitness) while the others wait, so no sync.
    stats = MulticlassStatScores(num_classes, average=None, sync_on_compute=False).to(device)
    with training_mode(model, False), torch.no_grad():
        for batch in loader:
            x, y, _ = unpack_batch(batch)
            stats.update(model(move_data_to_device(x, device)), torch.as_tensor(y).to(device))
    counts = stats.compute().cpu().double().numpy()  # columns tp, fp, tn, fn, support
    correct, total = counts[:, 0], counts[:, 4]
    return np.where(total > 0, correct / np.maximum(total, 1.0), np.nan)


def finite_accuracy(accuracy: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Per-class accuracy with missing classes (NaN/``None``) as 0, for comparisons of two runs.

    A class without validation samples has no accuracy; 0 in both the trial and the reference means "no change".
    """
    return np.nan_to_num(np.array(accuracy, dtype=np.float64), nan=0.0)
