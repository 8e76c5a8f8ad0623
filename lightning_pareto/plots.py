"""Matplotlib figures for TensorBoard and reports (built without pyplot, so no GUI backend is touched)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

if TYPE_CHECKING:
    from lightning_pareto.pareto.ceiling import CeilingReport

__all__ = [
    "accuracy_heatmap",
    "ceiling_figure",
    "influence_scatter",
    "per_class_curves",
    "predicted_vs_realised",
    "weights_histogram",
]


def accuracy_heatmap(
    accuracy: np.ndarray, class_names: Sequence[str], epochs: Sequence[int] | None = None, discarded: Sequence[int] = ()
) -> Figure:
    """Per-class accuracy over epochs as a heatmap (rows: epochs, columns: classes).

    Args:
        accuracy: Float array of shape ``(E, K)`` with accuracies in ``[0, 1]``; NaN marks a class
            missing from that validation run and is drawn grey.
        class_names: ``K`` column labels.
        epochs: ``E`` row labels (default ``0 .. E-1``).
        discarded: Epochs whose training was rolled back (an intervention redid or undid them): their
            rows are hatched and labelled ``"<epoch> discarded"``.

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
    size = (min(1.0 + 0.6 * num_classes, 16.0), min(1.5 + 0.3 * num_epochs, 12.0))
    figure = Figure(figsize=size, layout="constrained")
    axes = figure.add_subplot()
    axes.set_facecolor("0.8")  # the colour of missing (NaN) cells
    image = axes.imshow(
        np.ma.masked_invalid(accuracy), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest"
    )
    figure.colorbar(image, ax=axes, label="validation accuracy")
    axes.set_xticks(range(num_classes), [str(n) for n in class_names], rotation=45 if num_classes > 10 else 0)
    dropped = {row for row, epoch in enumerate(epochs) if epoch in set(discarded)}
    tick_rows = sorted(set(range(0, num_epochs, max(1, num_epochs // 20))) | dropped)
    axes.set_yticks(tick_rows, [f"{epochs[i]} discarded" if i in dropped else str(epochs[i]) for i in tick_rows])
    for row in dropped:
        axes.add_patch(
            Rectangle((-0.5, row - 0.5), num_classes, 1.0, fill=False, hatch="//", edgecolor="white", linewidth=0.0)
        )
    axes.set_xlabel("class")
    axes.set_ylabel("epoch" + (" (discarded: rolled back by an intervention)" if dropped else ""))
    if num_epochs * num_classes <= 200:
        for (row, col), value in np.ndenumerate(accuracy):
            if np.isfinite(value):
                axes.text(
                    col,
                    row,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if value > 0.6 else "white",
                )
    return figure


def per_class_curves(
    accuracy: np.ndarray,
    class_names: Sequence[str],
    epochs: Sequence[int],
    discarded: Sequence[int] = (),
    interventions: Sequence[tuple[float, str]] = (),
) -> Figure:
    """Per-class validation accuracy over epochs, one colour per class, interventions and discarded epochs marked.

    Each class is a line through the epochs that stand; an epoch an intervention rolled back (its
    training discarded) is a hatched band, with each class's accuracy there as a hollow marker off the
    line. Interventions are dashed vertical lines between the epoch whose state they start from and
    the next, labelled at the top.

    Args:
        accuracy: Float array of shape ``(E, K)`` with accuracies in ``[0, 1]`` (NaN: class missing).
        class_names: ``K`` class names, the legend.
        epochs: ``E`` epoch numbers, one per row.
        discarded: Epochs whose training was discarded.
        interventions: ``(x, label)`` per intervention, ``x`` on the epoch axis (e.g. ``6.5``: after epoch 6).

    Returns:
        A matplotlib ``Figure`` not tracked by pyplot.

    Raises:
        ValueError: If the shapes of the arguments disagree.
    """
    accuracy = np.asarray(accuracy, dtype=np.float64)
    epochs = np.asarray(list(epochs), dtype=np.float64)
    if accuracy.ndim != 2 or accuracy.shape[1] != len(class_names):
        raise ValueError(f"accuracy must have shape (epochs, {len(class_names)}), got {accuracy.shape}.")
    if epochs.shape[0] != accuracy.shape[0]:
        raise ValueError(f"epochs has {epochs.shape[0]} labels for {accuracy.shape[0]} rows.")
    dropped = np.isin(epochs, list(discarded))
    colours = class_colours(len(class_names))
    figure = Figure(figsize=(9.0, 5.0), layout="constrained")
    axes = figure.add_subplot()
    for epoch in epochs[dropped]:
        axes.axvspan(epoch - 0.5, epoch + 0.5, facecolor="0.92", hatch="//", edgecolor="0.75", linewidth=0.0)
    for c, name in enumerate(class_names):
        kept = ~dropped & np.isfinite(accuracy[:, c])
        axes.plot(
            epochs[kept], accuracy[kept, c], color=colours[c], marker="o", markersize=3, linewidth=1.5, label=str(name)
        )
        axes.plot(
            epochs[dropped],
            accuracy[dropped, c],
            linestyle="none",
            marker="o",
            markersize=5,
            markerfacecolor="none",
            markeredgecolor=colours[c],
        )
    for x, label in interventions:
        axes.axvline(x, color="black", linestyle="--", linewidth=1.0)
        axes.annotate(
            label,
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -2),
            textcoords="offset points",
            rotation=90,
            va="top",
            ha="left",
            fontsize=8,
        )
    handles, labels = axes.get_legend_handles_labels()
    if interventions:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.0))
        labels.append("intervention")
    if dropped.any():
        handles.append(Patch(facecolor="0.92", hatch="//", edgecolor="0.75"))
        labels.append("discarded epoch")
    axes.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    axes.grid(alpha=0.3)
    return figure


def predicted_vs_realised(
    class_names: Sequence[str],
    labels: Sequence[str],
    predicted: np.ndarray,
    realised: np.ndarray,
    targets: Sequence[Sequence[int]],
) -> Figure:
    """Per intervention and class: the LP's predicted gain beside the realised change of validation accuracy.

    One row per intervention, two panels: left the first-order predicted gain ``Delta_c = I[:, c]^T delta / n``
    (the predicted decrease of class ``c``'s mean validation loss, in nats), right the realised change of
    the class's validation accuracy (points) over the weighted epoch(s). Target classes are drawn dark.

    Args:
        class_names: ``K`` class names.
        labels: One title per intervention (``M`` of them).
        predicted: Float array ``(M, K)`` (NaN: no prediction).
        realised: Float array ``(M, K)`` of accuracy changes as fractions (NaN: not measured).
        targets: The target class indices of each intervention.

    Returns:
        A matplotlib ``Figure`` not tracked by pyplot.

    Raises:
        ValueError: If the shapes of the arguments disagree.
    """
    predicted, realised = np.asarray(predicted, dtype=np.float64), np.asarray(realised, dtype=np.float64)
    rows, num_classes = len(labels), len(class_names)
    if predicted.shape != (rows, num_classes) or realised.shape != (rows, num_classes) or len(targets) != rows:
        raise ValueError(
            f"predicted and realised must have shape ({rows}, {num_classes}) and targets {rows} entries, "
            f"got {predicted.shape}, {realised.shape} and {len(targets)}."
        )
    figure = Figure(figsize=(9.0, 0.6 + 2.2 * max(rows, 1)), layout="constrained")
    grid = figure.subplots(max(rows, 1), 2, squeeze=False)
    positions = np.arange(num_classes)
    for row, label in enumerate(labels):
        shades = ["tab:blue" if c in set(targets[row]) else "lightsteelblue" for c in range(num_classes)]
        for axes, values, unit in (
            (grid[row, 0], predicted[row], "predicted gain (nats)"),
            (grid[row, 1], 100 * realised[row], "realised change (points)"),
        ):
            axes.bar(positions, np.nan_to_num(values), color=shades)
            axes.axhline(0.0, color="0.3", linewidth=0.8)
            axes.set_xticks(
                positions, [str(n) for n in class_names], rotation=45 if num_classes > 10 else 0, fontsize=8
            )
            axes.set_ylabel(unit, fontsize=8)
        grid[row, 0].set_title(label, fontsize=9, loc="left")
    figure.suptitle(
        "Predicted (first order, validation loss) vs realised (validation accuracy); dark = target", fontsize=9
    )
    return figure


def class_colours(num_classes: int) -> list[tuple[float, float, float, float]]:
    """``num_classes`` distinct colours: matplotlib's ``tab10`` up to 10 classes, ``tab20`` up to 20, else ``turbo``."""
    if num_classes <= 10:
        return [colormaps["tab10"](c) for c in range(num_classes)]
    if num_classes <= 20:
        return [colormaps["tab20"](c) for c in range(num_classes)]
    return [colormaps["turbo"](c / max(num_classes - 1, 1)) for c in range(num_classes)]


def influence_scatter(
    influence: np.ndarray,
    targets: Sequence[int],
    class_names: Sequence[str],
    weights: np.ndarray | None = None,
) -> Figure:
    """Category-wise influence of every training sample on the targeted classes, as in Figures 1-2 of "What Is The Performance Ceiling of My Classifier?".

    The x axis is the influence on the target classes (their mean when there are several), the y
    axis the mean influence on all other classes; with all classes targeted, the first target is
    plotted against the mean of the others. Positive means the sample helps. The quadrant counts are
    printed in the corners: the lower-left quadrant holds the samples that hurt both sides.

    Args:
        influence: Float array of shape ``(n, K)``.
        targets: Target class indices (non-empty).
        class_names: ``K`` class names for the axis labels.
        weights: Optional per-sample weights, float array of shape ``(n,)``, shown as colour
            (blue below one, red above one).

    Returns:
        A matplotlib ``Figure`` not tracked by pyplot.

    Raises:
        ValueError: If the shapes disagree or ``targets`` is empty.
    """
    influence = np.asarray(influence, dtype=np.float64)
    if influence.ndim != 2 or influence.shape[1] != len(class_names):
        raise ValueError(f"influence must have shape (n, {len(class_names)}), got {influence.shape}.")
    targets = list(targets)
    if not targets:
        raise ValueError("targets is empty; name at least one class to plot against the others.")
    others = [c for c in range(influence.shape[1]) if c not in targets]
    if not others:
        targets, others = targets[:1], targets[1:]
    x, y = influence[:, targets].mean(axis=1), influence[:, others].mean(axis=1)
    figure = Figure(figsize=(5.5, 4.5), layout="constrained")
    axes = figure.add_subplot()
    if weights is None:
        axes.scatter(x, y, s=8, alpha=0.6, color="tab:blue", linewidths=0)
    else:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != x.shape:
            raise ValueError(f"weights must have shape ({x.shape[0]},), got {weights.shape}.")
        norm = TwoSlopeNorm(
            vmin=min(float(weights.min()), 1.0 - 1e-6), vcenter=1.0, vmax=max(float(weights.max()), 1.0 + 1e-6)
        )
        points = axes.scatter(x, y, c=weights, cmap="coolwarm", norm=norm, s=8, alpha=0.8, linewidths=0)
        figure.colorbar(points, ax=axes, label="sample weight")
    axes.axhline(0.0, color="0.4", linewidth=0.8)
    axes.axvline(0.0, color="0.4", linewidth=0.8)
    for sign_x, sign_y, (h, v) in (
        (1, 1, (0.98, 0.98)),
        (-1, 1, (0.02, 0.98)),
        (-1, -1, (0.02, 0.02)),
        (1, -1, (0.98, 0.02)),
    ):
        count = int(np.sum((sign_x * x > 0) & (sign_y * y > 0)))
        axes.text(
            h,
            v,
            str(count),
            transform=axes.transAxes,
            ha="right" if h > 0.5 else "left",
            va="top" if v > 0.5 else "bottom",
            fontsize=9,
            color="0.2",
        )
    axes.set_xlabel("influence on " + _joined(class_names, targets))
    axes.set_ylabel("mean influence on " + _joined(class_names, others))
    return figure


def weights_histogram(weights: np.ndarray, w_min: float | None = None, w_max: float | None = None) -> Figure:
    """Histogram of per-sample weights (log counts), with the uniform weight one marked.

    Args:
        weights: Float array of shape ``(n,)``.
        w_min: Lower bound of the weights, drawn as a dotted line when given.
        w_max: Upper bound of the weights, drawn as a dotted line when given.

    Returns:
        A matplotlib ``Figure`` not tracked by pyplot.

    Raises:
        ValueError: If ``weights`` is not a non-empty 1-D array.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or weights.size == 0:
        raise ValueError(f"weights must be a non-empty 1-D array, got shape {weights.shape}.")
    figure = Figure(figsize=(5.5, 3.5), layout="constrained")
    axes = figure.add_subplot()
    axes.hist(weights, bins=50, color="tab:blue", log=True)
    axes.axvline(1.0, color="black", linewidth=1.0, label="uniform")
    for bound in (w_min, w_max):
        if bound is not None:
            axes.axvline(bound, color="0.5", linestyle=":", linewidth=1.0)
    down, up = int(np.sum(weights < 1.0 - 1e-9)), int(np.sum(weights > 1.0 + 1e-9))
    axes.set_title(
        f"{down} down-weighted ({int(np.sum(weights <= 1e-9))} at 0), {up} up-weighted of {weights.size}", fontsize=9
    )
    axes.set_xlabel("sample weight")
    axes.set_ylabel("samples")
    return figure


def ceiling_figure(report: CeilingReport, class_names: Sequence[str]) -> Figure:
    """The Pareto ceiling check: region counts and the trade-off normal found by the exact criterion.

    Left: how many samples help every class, hurt every class or trade classes off (also restricted
    to the target classes when the report has targets). Right: the simplex weights ``lambda`` that
    minimise ``||C lambda|| / ||C||``, i.e. the class trade-off rates of the hyperplane the influence
    vectors lie closest to; the title gives that ratio, the paper's PCA ratio and the verdict.

    Args:
        report: A :class:`~lightning_pareto.pareto.CeilingReport`.
        class_names: ``K`` class names.

    Returns:
        A matplotlib ``Figure`` not tracked by pyplot.

    Raises:
        ValueError: If ``class_names`` does not have one name per class of the report.
    """
    if len(class_names) != report.num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for a report over {report.num_classes} classes.")
    figure = Figure(figsize=(9.0, 3.5), layout="constrained")
    counts_axes, weights_axes = figure.subplots(1, 2, width_ratios=[1.0, 1.6])
    regions = ("helps all", "hurts all", "trade-off")
    groups = [("all classes", report.counts)]
    if report.target_counts is not None:
        groups.append(("targets", report.target_counts))
    width = 0.8 / len(groups)
    for position, (label, counts) in enumerate(groups):
        values = [counts.helps_all, counts.hurts_all, counts.trade_off]
        offsets = np.arange(3) + (position - (len(groups) - 1) / 2) * width
        counts_axes.bar(offsets, values, width=width, label=label)
    counts_axes.set_xticks(range(3), regions)
    counts_axes.set_ylabel("training samples")
    counts_axes.legend(fontsize=8)
    weights_axes.bar(range(report.num_classes), report.simplex_weights, color="tab:gray")
    weights_axes.set_xticks(
        range(report.num_classes), [str(n) for n in class_names], rotation=45 if report.num_classes > 10 else 0
    )
    weights_axes.set_ylim(0.0, 1.0)
    # lambda: the non-negative class weights (summing to one) of the hyperplane the influence vectors lie closest to.
    weights_axes.set_ylabel("lambda: class weight in the trade-off normal", fontsize=8)
    figure.suptitle(
        f"{report.verdict}: min ||C lambda||/||C|| = {report.ratio:.2e}, PCA ratio {report.pca_ratio:.2f}", fontsize=10
    )
    return figure


def _joined(class_names: Sequence[str], classes: Sequence[int], limit: int = 4) -> str:
    names = [str(class_names[c]) for c in classes]
    return ", ".join(names) if len(names) <= limit else ", ".join(names[:limit]) + f" (+{len(names) - limit})"
