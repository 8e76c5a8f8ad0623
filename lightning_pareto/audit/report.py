"""``audit_samples``: category-wise influence of every training sample at a trained model, as an
:class:`~lightning_pareto.audit.AuditTable`; ``write_audit``: its CSVs, thumbnails and TensorBoard figures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from matplotlib.image import imsave
from torch import nn

from lightning_pareto.audit.figures import figure_pixels, top_samples_figure
from lightning_pareto.audit.table import AuditTable, audit_table
from lightning_pareto.influence import category_influence

__all__ = ["ImageWriter", "audit_samples", "training_labels", "write_audit"]


class ImageWriter(Protocol):
    """What :func:`write_audit` logs images to: a ``torch.utils.tensorboard.SummaryWriter`` or Lightning's
    ``TensorBoardLogger.experiment``."""

    def add_image(
        self, tag: str, img_tensor: Any, global_step: int | None = None, dataformats: str = "CHW"
    ) -> None: ...


def training_labels(train_loader: Iterable, n: int | None = None) -> np.ndarray:
    """Labels of the training set in dataset-index order, read from batches ``(x, y, index)`` (or ``(x, y)``
    in loader order).

    Raises:
        ValueError: If some index in ``[0, n)`` never appears.
    """
    parts, positions, seen = [], [], 0
    for batch in train_loader:
        y = torch.as_tensor(batch[1]).reshape(-1).cpu()
        index = torch.as_tensor(batch[2]).reshape(-1).cpu() if len(batch) > 2 else torch.arange(seen, seen + y.numel())
        seen += y.numel()
        parts.append(y)
        positions.append(index)
    labels, index = torch.cat(parts).numpy(), torch.cat(positions).numpy()
    n = int(index.max()) + 1 if n is None else n
    result = np.full(n, -1, dtype=np.int64)
    result[index] = labels
    if (result < 0).any():
        raise ValueError(f"the training loader never yielded {int((result < 0).sum())} of {n} indices.")
    return result


def audit_samples(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    class_names: Sequence[str],
    *,
    margin: float = 1.0,
    min_harm: float = 3.0,
    curvature: str = "ekfac",
    damping: float | None = None,
    modules: Sequence[str] | None = None,
    fisher: str = "empirical",
    curvature_samples: int | None = None,
    progress: bool | None = None,
) -> AuditTable:
    """Which training samples help or hurt each class at this model, and which look mislabelled.

    Args:
        model: The trained classifier (logits ``(b, K)``); not modified.
        train_loader: Training batches ``(x, y, index)`` (or unshuffled ``(x, y)``), labels as trained on.
        val_loader: Validation batches ``(x, y)`` or ``(x, y, index)``: the classes' losses are measured here.
        class_names: ``K`` names.
        margin, min_harm: The suspect rule's options (:func:`~lightning_pareto.audit.suspect_scores`).
        curvature, damping, modules, fisher, curvature_samples, progress: The influence engine's options
            (:func:`lightning_pareto.influence.category_influence`).

    Returns:
        The :class:`~lightning_pareto.audit.AuditTable` (row i = training index i).

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> train = DataLoader(TensorDataset(x[:40], y[:40], torch.arange(40)), batch_size=16)
        >>> val = DataLoader(TensorDataset(x[40:], y[40:]), batch_size=16)
        >>> table = audit_samples(nn.Linear(4, 3), train, val, ["a", "b", "c"])
        >>> table.influence.shape, table.suspect.dtype
        ((40, 3), dtype('bool'))
    """
    influence = category_influence(
        model,
        train_loader,
        val_loader,
        len(class_names),
        curvature=curvature,
        damping=damping,
        modules=modules,
        fisher=fisher,
        curvature_samples=curvature_samples,
        progress=progress,
    )
    labels = training_labels(train_loader, influence.shape[0])
    return audit_table(influence.numpy(), labels, class_names, margin, min_harm)


def write_audit(
    table: AuditTable,
    output_dir: str | Path,
    *,
    top_k: int = 8,
    images: np.ndarray | None = None,
    writer: ImageWriter | None = None,
    global_step: int | None = None,
) -> dict[str, Path]:
    """Write ``samples.csv``, ``top_samples.csv`` and, given images, ``top_<class>.png`` per class.

    Args:
        table: The audit.
        output_dir: Folder (created if missing).
        top_k: Helpful and harmful samples listed per class.
        images: ``(n, H, W)`` or ``(n, H, W, 3)`` in [0, 1] (:func:`~lightning_pareto.audit.as_images`),
            row i = training index i; ``None``: no thumbnails.
        writer: Also log each class's thumbnails as the image ``audit/top_samples/<class>``.
        global_step: Step of the logged images.

    Returns:
        Name -> path of every file written.
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    written = {
        "samples": table.write_samples_csv(output / "samples.csv"),
        "top_samples": table.write_top_csv(output / "top_samples.csv", top_k),
    }
    if images is None:
        return written
    for c, name in enumerate(table.class_names):
        pixels = figure_pixels(top_samples_figure(table, images, c, top_k))
        path = output / f"top_{_file_safe(name)}.png"
        imsave(path, pixels)
        written[f"top_{name}"] = path
        if writer is not None:
            writer.add_image(f"audit/top_samples/{name}", pixels, global_step=global_step, dataformats="HWC")
    return written


def _file_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
