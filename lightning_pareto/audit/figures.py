"""Matplotlib figures of the audit: thumbnails of a class's top samples, and the removal-check heatmaps.

Built without pyplot (no GUI backend is touched), like :mod:`lightning_pareto.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lightning_pareto.audit.removal import RemovalCheck
from lightning_pareto.audit.table import AuditTable

__all__ = ["as_images", "figure_pixels", "removal_figure", "top_samples_figure"]


def as_images(features: np.ndarray, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """Training features as displayable images: ``(m, H, W)`` grey or ``(m, H, W, 3)`` colour, scaled to [0, 1].

    Args:
        features: ``(m, ...)``: flat rows (then ``image_shape`` is needed), ``(m, H, W)``, or
            channels-first ``(m, C, H, W)`` with ``C`` 1 or 3.
        image_shape: ``(H, W)`` or ``(C, H, W)`` to reshape flat rows into.

    Raises:
        ValueError: If the features cannot be read as images of that shape.
    """
    images = np.asarray(features, dtype=np.float64)
    if image_shape is not None:
        try:
            images = images.reshape(images.shape[0], *image_shape)
        except ValueError:
            raise ValueError(
                f"features of shape {images.shape[1:]} cannot be shown as images of shape {tuple(image_shape)}."
            ) from None
    if images.ndim == 4 and images.shape[1] in (1, 3):
        images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    if images.ndim not in (3, 4):
        raise ValueError(f"features of shape {images.shape[1:]} are not images; give image_shape=(H, W).")
    low = images.reshape(images.shape[0], -1).min(axis=1)
    high = images.reshape(images.shape[0], -1).max(axis=1)
    span = np.where(high > low, high - low, 1.0)
    shape = (-1,) + (1,) * (images.ndim - 1)
    return (images - low.reshape(shape)) / span.reshape(shape)


def top_samples_figure(table: AuditTable, images: np.ndarray, c: int, k: int) -> Figure:
    """Class ``c``'s ``k`` most helpful samples (top row) and ``k`` most harmful ones (bottom row, suspects first).

    Each thumbnail is titled with its dataset index, its label and its influence on ``c``; a suspected
    mislabel is framed in red with ``-> likely`` (its likely true label). The thumbnails share one
    image (one axes), which keeps drawing cheap.

    Args:
        table: The audit.
        images: ``(n, H, W)`` or ``(n, H, W, 3)`` from :func:`as_images`, row i = training index i.
        c: The class.
        k: Thumbnails per row.
    """
    rows = [("helps", table.top(c, k, "helpful")), ("hurts", table.top(c, k, "harmful"))]
    height, width = images.shape[1:3]
    gap, band = max(1, round(0.15 * width)), max(3, round(0.5 * height))  # between tiles; title space above a row
    cell_w, cell_h = width + gap, height + band
    canvas = np.full((2 * cell_h, max(1, k) * cell_w, *images.shape[3:]), np.nan)
    fig_width = 1.1 * max(1, k) + 0.6
    # The axes fill 94% of the width and 86% of the height (the rest: row labels, title); the image sets the height.
    figure = Figure(figsize=(fig_width, 0.94 * fig_width * canvas.shape[0] / canvas.shape[1] / 0.86))
    axes = figure.add_axes((0.05, 0.02, 0.94, 0.86))
    figure.suptitle(
        f"class {table.class_names[c]}: samples that help it most (top) and hurt it most (bottom)", fontsize=9
    )
    labels = []
    for row, (kind, indices) in enumerate(rows):
        top = row * cell_h + band
        labels.append((top + height / 2, kind))
        for place, i in enumerate(indices[:k].tolist()):
            left = place * cell_w
            canvas[top : top + height, left : left + width] = images[i]
            title = f"#{i} y={table.class_names[table.labels[i]]}\nI={table.influence[i, c]:+.2g}"
            colour = "black"
            if table.suspect[i]:
                title += f" -> {table.class_names[table.likely[i]]}"
                colour = "red"
                axes.add_patch(
                    Rectangle((left - 0.5, top - 0.5), width, height, fill=False, edgecolor="red", linewidth=2.0)
                )
            axes.text(left + width / 2, top - 0.8, title, ha="center", va="bottom", fontsize=6, color=colour)
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    shown = np.where(np.isnan(canvas), 1.0, canvas) if canvas.ndim == 3 else np.ma.masked_invalid(canvas)
    axes.imshow(shown, cmap=None if canvas.ndim == 3 else cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    for y, kind in labels:
        axes.text(-gap, y, kind, ha="right", va="center", rotation=90, fontsize=8)
    axes.set_axis_off()
    return figure


def figure_pixels(figure: Figure, dpi: int = 110) -> np.ndarray:
    """The figure drawn once, as an ``(H, W, 3)`` uint8 array (for a PNG file and a TensorBoard image alike)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _heatmap(axes, values: np.ndarray, class_names: Sequence[str], title: str, label: str) -> None:  # noqa: ANN001
    finite = values[np.isfinite(values)]
    bound = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    image = axes.imshow(values, cmap="RdBu", norm=TwoSlopeNorm(0.0, -bound, bound), interpolation="nearest")
    axes.figure.colorbar(image, ax=axes, label=label, shrink=0.8)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, fontsize=7)
    axes.set_yticks(ticks, class_names, fontsize=7)
    axes.set_xlabel("class measured")
    axes.set_ylabel("class whose samples were removed")
    axes.set_title(title, fontsize=9)
    for t in ticks:  # the targeted category, as the paper frames its diagonal blocks
        axes.add_patch(Rectangle((t - 0.5, t - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5, hatch="//"))


def removal_figure(checks: dict[str, RemovalCheck], class_names: Sequence[str], title: str = "") -> Figure:
    """The paper's Figures 3-4 layout: per kind, cumulative influence and accuracy-change heatmaps and their scatter.

    Rows: beneficial then detrimental removals. Columns: cumulative influence of the removed samples
    (A/D), per-class test-accuracy change after retraining (B/E), and the scatter of the predicted
    effect ``-cumulative`` against the change with its Spearman correlation (C/F).
    """
    figure = Figure(figsize=(16, 4.8 * len(checks)), layout="constrained")
    if title:
        figure.suptitle(title)
    grid = figure.subplots(len(checks), 3, squeeze=False)
    for row, check in enumerate(checks.values()):
        _heatmap(
            grid[row, 0],
            check.cumulative,
            class_names,
            f"{check.kind}: cumulative influence of removed",
            "sum of I[i, c]",
        )
        _heatmap(
            grid[row, 1], 100 * check.change, class_names, f"{check.kind}: test accuracy change", "percentage points"
        )
        axes = grid[row, 2]
        off = ~np.eye(len(class_names), dtype=bool)
        axes.scatter(-check.cumulative[off], 100 * check.change[off], s=10, color="0.5", label="other classes")
        axes.scatter(-np.diag(check.cumulative), 100 * np.diag(check.change), s=25, color="C3", label="targeted class")
        axes.axhline(0.0, color="0.7", linewidth=0.8)
        axes.axvline(0.0, color="0.7", linewidth=0.8)
        axes.set_xlabel("predicted effect of removal: -sum of I[i, c]")
        axes.set_ylabel("test accuracy change (points)")
        axes.set_title(f"{check.kind}: Spearman {check.spearman:+.2f}", fontsize=9)
        axes.legend(fontsize=7)
    return figure
