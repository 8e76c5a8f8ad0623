"""Figures: the per-class accuracy heatmap, the per-class curves, predicted vs realised gains."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_pareto.plots import accuracy_heatmap, per_class_curves, predicted_vs_realised


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


def test_curves_give_each_class_its_own_colour_and_keep_discarded_epochs_off_the_lines() -> None:
    names = [str(c) for c in range(10)]
    accuracy = np.linspace(0.1, 0.9, 50).reshape(5, 10)
    figure = per_class_curves(accuracy, names, epochs=[0, 1, 2, 3, 4], discarded=[2], interventions=[(1.5, "#1 x")])
    axes = figure.axes[0]
    lines = [line for line in axes.get_lines() if line.get_label() in names]
    assert [line.get_label() for line in lines] == names
    assert len({line.get_color() for line in lines}) == 10  # distinct colours (tab10), not markers
    for c, line in enumerate(lines):
        assert line.get_xdata().tolist() == [0, 1, 3, 4]  # the discarded epoch 2 is not on the line ...
        np.testing.assert_allclose(line.get_ydata(), accuracy[[0, 1, 3, 4], c])
    hollow = [
        line
        for line in axes.get_lines()
        if line.get_linestyle() == "None" and list(np.asarray(line.get_xdata())) == [2]
    ]
    assert len(hollow) == 10  # ... but drawn as a marker of its own
    verticals = [line for line in axes.get_lines() if list(np.asarray(line.get_xdata(), dtype=float)) == [1.5, 1.5]]
    assert len(verticals) == 1 and [t.get_text() for t in axes.texts] == ["#1 x"]
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend == [*names, "intervention", "discarded epoch"]


def test_heatmap_names_discarded_epochs() -> None:
    figure = accuracy_heatmap(np.full((3, 2), 0.5), ["a", "b"], epochs=[0, 1, 2], discarded=[1])
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["0", "1 discarded", "2"]


def test_predicted_vs_realised_draws_both_quantities_per_class() -> None:
    predicted = np.array([[0.02, -0.01, float("nan")]])
    realised = np.array([[0.05, -0.10, 0.0]])
    figure = predicted_vs_realised(["a", "b", "c"], ["#1"], predicted, realised, [[0]])
    left, right = figure.axes
    np.testing.assert_allclose([bar.get_height() for bar in left.patches], [0.02, -0.01, 0.0])
    np.testing.assert_allclose([bar.get_height() for bar in right.patches], [5.0, -10.0, 0.0])  # points
    assert "nats" in left.get_ylabel() and "points" in right.get_ylabel()
    with pytest.raises(ValueError, match="shape"):
        predicted_vs_realised(["a", "b"], ["#1"], predicted, realised, [[0]])
