"""Matplotlib figures for TensorBoard and reports (built without pyplot, so no GUI backend is touched)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = ["accuracy_heatmap"]


def accuracy_heatmap(accuracy: np.ndarray, class_names: Sequence[str], epochs: Sequence[int] | None = None) -> Figure:
    """Per-class accuracy over epochs as a heatmap (rows: epochs, columns: classes).

    Args:
        accuracy: Float array of shape ``(E, K)`` with accuracies in ``[0, 1]``; NaN marks a class
            missing from that validation run and is drawn grey.
        class_names: ``K`` column labels.
        epochs: ``E`` row labels (default ``0 .. E-1``).

    Returns:
        A matplotlib ``Figure`` that pyplot does not track (nothing to close; it is garbage-collected).

    Raises:
        ValueError: If the shapes of the arguments disagree.
    """
    accuracy = np.asarray(accuracy, dtype=np.float64)
    if accuracy.ndim != 2 or accuracy.shape[1] != len(class_names):
        raise ValueError(f"accuracy must have shape (epochs, {len(class_names)}), got {accuracy.shape}.")
    epochs = list(range(accuracy.shape[0])) if epochs is None else list(epochs)
    if len(epochs) != accuracy.shape[0]:
        raise ValueError(f"epochs has {len(epochs)} labels for {accuracy.shape[0]} rows.")
    num_epochs, num_classes = accuracy.shape
    figure = Figure(figsize=(min(1.0 + 0.6 * num_classes, 16.0), min(1.5 + 0.3 * num_epochs, 12.0)), layout="constrained")
    axes = figure.add_subplot()
    axes.set_facecolor("0.8")  # the colour of missing (NaN) cells
    image = axes.imshow(np.ma.masked_invalid(accuracy), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto",
                        interpolation="nearest")
    figure.colorbar(image, ax=axes, label="validation accuracy")
    axes.set_xticks(range(num_classes), [str(n) for n in class_names], rotation=45 if num_classes > 10 else 0)
    tick_rows = range(0, num_epochs, max(1, num_epochs // 20))
    axes.set_yticks(list(tick_rows), [str(epochs[i]) for i in tick_rows])
    axes.set_xlabel("class")
    axes.set_ylabel("epoch")
    if num_epochs * num_classes <= 200:
        for (row, col), value in np.ndenumerate(accuracy):
            if np.isfinite(value):
                axes.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="black" if value > 0.6 else "white")
    return figure
