"""Images for the thumbnails and the removal-check figure."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_pareto.audit import RemovalCheck, as_images, removal_figure


def test_as_images_reshapes_flat_rows_and_scales_each_image_to_unit_range() -> None:
    flat = np.arange(2 * 64, dtype=np.float32).reshape(2, 64)
    images = as_images(flat, (8, 8))
    assert images.shape == (2, 8, 8)
    np.testing.assert_allclose(images.reshape(2, -1).min(axis=1), 0.0)
    np.testing.assert_allclose(images.reshape(2, -1).max(axis=1), 1.0)
    np.testing.assert_allclose(images[0], (flat[0].reshape(8, 8) - 0) / 63)
    colour = as_images(np.random.default_rng(0).normal(size=(3, 3, 5, 5)))
    assert colour.shape == (3, 5, 5, 3)
    assert as_images(np.ones((2, 1, 4, 4))).shape == (2, 4, 4)  # constant images stay finite
    with pytest.raises(ValueError, match="not images"):
        as_images(np.zeros((4, 30)))
    with pytest.raises(ValueError, match="cannot be shown"):
        as_images(np.zeros((4, 30)), (8, 8))


def test_removal_figure_has_heatmaps_and_scatter_per_kind() -> None:
    rng = np.random.default_rng(0)
    checks = {
        kind: RemovalCheck(kind, [np.arange(3)] * 3, rng.normal(size=(3, 3)), rng.normal(size=(3, 3)))
        for kind in ("beneficial", "detrimental")
    }
    figure = removal_figure(checks, ["a", "b", "c"], title="t")
    titles = [axes.get_title() for axes in figure.axes if axes.get_title()]
    assert len(titles) == 6
    assert titles[2].startswith("beneficial: Spearman") and titles[5].startswith("detrimental: Spearman")
