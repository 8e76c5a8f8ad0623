"""``InfluenceAudit``: the sample audit at the end of ``fit`` (which training samples help or hurt each class)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from lightning_pareto._modes import eval_mode
from lightning_pareto.audit import AuditTable, as_images, audit_samples, write_audit
from lightning_pareto.callbacks._run import influence_model
from lightning_pareto.callbacks.monitor import resolve_class_names

__all__ = ["InfluenceAudit"]


class InfluenceAudit(Callback):
    """At the end of training, the category-wise influence of every training sample, written as an audit.

    Writes ``samples.csv`` and ``top_samples.csv`` (and, for image data, ``top_<class>.png``, also
    logged to TensorBoard as ``audit/top_samples/<class>``) to ``output_dir``, and prints the per-class
    summary; see :func:`lightning_pareto.audit.audit_samples` and ``lightning-pareto audit``, which does
    the same from a checkpoint. The influence is computed on ``pl_module.net`` (or the module) at the
    trained weights, over the training and first validation datasets. A failure is reported as a
    warning, never raised: the run it audits has already finished.

    Args:
        output_dir: Folder for the files (default ``<trainer.log_dir>/audit``).
        top_k: Helpful and harmful samples listed per class.
        margin: The suspect rule's margin (:func:`~lightning_pareto.audit.suspect_scores`).
        min_harm: The suspect rule's harm floor.
        curvature: ``"ekfac"``, ``"kfac"`` or ``"exact"``.
        damping: The engine's damping (``None``: its default).
        modules: Layers to track (``None``: every Linear/Conv2d).
        image_shape: ``(H, W)`` or ``(C, H, W)`` to draw flat features as thumbnails; ``None`` draws
            them only when samples already are ``(H, W)`` or ``(C, H, W)`` tensors.

    Example:
        >>> from lightning_pareto.callbacks.audit import InfluenceAudit
        >>> InfluenceAudit(top_k=5, image_shape=(8, 8)).top_k
        5
    """

    def __init__(
        self,
        output_dir: str | None = None,
        top_k: int = 8,
        margin: float = 1.0,
        min_harm: float = 3.0,
        curvature: str = "ekfac",
        damping: float | None = None,
        modules: Sequence[str] | None = None,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
        if not margin >= 0 or not min_harm >= 0:
            raise ValueError(f"margin and min_harm must be >= 0, got {margin!r} and {min_harm!r}.")
        if curvature not in ("ekfac", "kfac", "exact"):
            raise ValueError(f"curvature must be 'ekfac', 'kfac' or 'exact', got {curvature!r}.")
        self.output_dir = output_dir
        self.top_k = top_k
        self.margin = margin
        self.min_harm = min_harm
        self.curvature = curvature
        self.damping = damping
        self.modules = list(modules) if modules is not None else None
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.table: AuditTable | None = None  # the last audit

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Audit the trained model; warn instead of raising on any failure."""
        if trainer.world_size > 1:
            rank_zero_warn(
                "InfluenceAudit runs in single-process training only; audit the checkpoint with "
                "`lightning-pareto audit` instead."
            )
            return
        try:
            self._audit(trainer, pl_module)
        except Exception as error:  # noqa: BLE001  (the run is over; an audit failure must not fail it)
            rank_zero_warn(f"InfluenceAudit failed and wrote nothing: {type(error).__name__}: {error}")

    def _audit(self, trainer: Trainer, pl_module: LightningModule) -> None:
        train, val = trainer.train_dataloader, trainer.val_dataloaders
        val = val[0] if isinstance(val, (list, tuple)) and val else val
        if not isinstance(train, DataLoader) or not isinstance(val, DataLoader):
            raise RuntimeError("needs one training and one validation DataLoader on the Trainer")
        dataset = train.dataset
        unshuffled = DataLoader(dataset, batch_size=train.batch_size or 64, shuffle=False)
        with eval_mode(influence_model(pl_module)) as net:
            self.table = audit_samples(
                net,
                unshuffled,
                val,
                resolve_class_names(trainer, pl_module),
                margin=self.margin,
                min_harm=self.min_harm,
                curvature=self.curvature,
                damping=self.damping,
                modules=self.modules,
            )
        output = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "audit")
        writer = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        written = write_audit(
            self.table,
            output,
            top_k=self.top_k,
            images=self._images(dataset),
            writer=writer if hasattr(writer, "add_image") else None,
            global_step=trainer.global_step,
        )
        rank_zero_info(
            "\nSample audit\n"
            + self.table.summary()
            + f"\nWritten to {output}: "
            + ", ".join(sorted(p.name for p in written.values()))
        )

    def _images(self, dataset: Any) -> np.ndarray | None:
        sample = torch.as_tensor(dataset[0][0])
        if self.image_shape is None and sample.ndim not in (2, 3):
            return None
        features = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(len(dataset))]).numpy()
        return as_images(features, self.image_shape)
