"""Figures: the per-class accuracy heatmap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_pareto.plots import accuracy_heatmap


def test_heatmap_draws_epochs_by_classes_and_masks_missing_cells() -> None:
    accuracy = np.array([[0.5, math.nan, 1.0], [0.75, 0.25, 1.0]])
    figure = accuracy_heatmap(accuracy, ["a", "b", "c"], epochs=[4, 9])
    axes = figure.axes[0]
    image = axes.images[0].get_array()
    assert image.shape == (2, 3)
    assert image.mask.tolist() == [[False, True, False], [False, False, False]]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["4", "9"]
    assert sorted(t.get_text() for t in axes.texts) == ["0.25", "0.50", "0.75", "1.00", "1.00"]


def test_heatmap_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"shape \(epochs, 2\)"):
        accuracy_heatmap(np.zeros((3, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="epochs has 1 labels for 3 rows"):
        accuracy_heatmap(np.zeros((3, 2)), ["a", "b"], epochs=[0])
