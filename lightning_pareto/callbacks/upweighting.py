"""``ClassUpweighting``: multiply the loss of chosen classes' training samples by a constant factor.

The honest baseline of the influence-based interventions: what a practitioner does without any
influence function. It shares their weight contract, target syntax and schedule, so
``benchmarks/effect.py`` compares like with like.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from lightning_pareto.callbacks._targets import check_targets, worst_classes
from lightning_pareto.callbacks.monitor import class_indices, require_monitor, resolve_class_names
from lightning_pareto.weighting import (
    UNUSED_WEIGHTS,
    require_indexed_batches,
    require_sample_weights,
    require_single_weight_writer,
    unpack_batch,
    weights_unused,
)

__all__ = ["ClassUpweighting", "class_weights"]


def class_weights(labels: torch.Tensor, targets: list[int], factor: float) -> torch.Tensor:
    """Per-sample weights: ``factor`` for samples whose label is a target class, one for the others.

    Args:
        labels: Int64 tensor ``(n,)`` of training labels, position = dataset index.
        targets: Target class indices.
        factor: Weight of the target classes' samples.

    Returns:
        Float32 tensor ``(n,)``.

    Example:
        >>> class_weights(torch.tensor([0, 1, 2, 1]), [1], 2.0)
        tensor([1., 2., 1., 2.])
    """
    weights = torch.ones(labels.shape[0], dtype=torch.float32)
    weights[torch.isin(labels, torch.as_tensor(targets, dtype=labels.dtype))] = float(factor)
    return weights


class ClassUpweighting(Callback):
    """Naive class upweighting: the loss of every training sample of the target classes times ``factor``.

    No influence is computed: this is the baseline the influence-based
    :class:`~lightning_pareto.DirectImprovement` has to beat ("What Is The Performance Ceiling of My
    Classifier?" improves chosen classes by reweighting individual samples; this reweights whole
    classes). The weights go through the same sample-weight contract and stay in force from the
    chosen epoch to the end of training.

    Args:
        targets: Classes to upweight: names or indices (``["3", 8]``), or ``"worst:k"`` for the ``k``
            classes with the lowest validation accuracy after epoch ``at_epoch`` (needs
            :class:`~lightning_pareto.PerClassAccuracy` and ``at_epoch``).
        factor: Weight of the target classes' samples (the others keep weight one); must be > 0.
        at_epoch: Epoch (0-based) after whose validation the weights are set, as
            ``DirectImprovement(at_epochs=[at_epoch])``; ``None`` sets them before the first epoch.

    Example::

        trainer = Trainer(max_epochs=20, callbacks=[PerClassAccuracy(), ClassUpweighting(targets=["3", "8"], factor=2.0)])
    """

    writes_sample_weights = True

    def __init__(self, targets: list[int | str] | str, factor: float = 2.0, at_epoch: int | None = None) -> None:
        self.worst_k = check_targets(targets)
        if (
            isinstance(factor, bool)
            or not isinstance(factor, (int, float))
            or not (math.isfinite(factor) and factor > 0)
        ):
            raise ValueError(f"factor must be a finite number > 0, got {factor!r}.")
        if at_epoch is not None and (isinstance(at_epoch, bool) or not isinstance(at_epoch, int) or at_epoch < 0):
            raise ValueError(f"at_epoch must be None (from the start) or an epoch index >= 0, got {at_epoch!r}.")
        if self.worst_k is not None and at_epoch is None:
            raise ValueError("targets='worst:k' picks the classes at a validation: give at_epoch as well.")
        self.targets = targets
        self.factor = float(factor)
        self.at_epoch = at_epoch
        self.applied: list[int] | None = None
        self.class_names: list[str] = []
        self._target_indices: list[int] = []
        self._lookups = -1  # the weight store's lookup count at the epoch's start
        self._warned = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the weight contract, indexed batches and the targets before training."""
        if stage != "fit":
            return
        who = type(self).__name__
        require_sample_weights(pl_module, who)
        require_indexed_batches(trainer, who)
        require_single_weight_writer(trainer, self, who)
        self.class_names = resolve_class_names(trainer, pl_module)
        if self.worst_k is None:
            self._target_indices = class_indices(list(self.targets), self.class_names, "targets")
        else:
            require_monitor(trainer, who)
            if not 1 <= self.worst_k < len(self.class_names):
                raise ValueError(
                    f"targets='worst:{self.worst_k}' needs 1 <= k < {len(self.class_names)} (the number of classes)."
                )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Set the weights before the first epoch when no ``at_epoch`` is given (or re-set them on resume)."""
        if self.at_epoch is None and self.applied is None:
            self._apply(trainer, pl_module, self._target_indices)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Count the weight lookups of the epoch, to notice weights that never reach the loss."""
        self._lookups = require_sample_weights(pl_module, type(self).__name__).lookups

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After the chosen epoch's validation: pick the targets (``worst:k``) and set the weights."""
        store = require_sample_weights(pl_module, type(self).__name__)
        if weights_unused(store, self._lookups) and not self._warned:
            self._warned = True
            rank_zero_warn(f"ClassUpweighting: {UNUSED_WEIGHTS}.")
        if self.at_epoch is None or trainer.current_epoch != self.at_epoch or self.applied is not None:
            return
        targets = self._target_indices
        if self.worst_k is not None:
            monitor = require_monitor(trainer, type(self).__name__)
            latest = monitor.latest()
            if latest is None or latest["epoch"] != trainer.current_epoch:
                rank_zero_warn(f"ClassUpweighting: no validation after epoch {trainer.current_epoch}; weights not set.")
                return
            targets = worst_classes(latest["accuracy"], self.worst_k)
        self._apply(trainer, pl_module, targets)

    def state_dict(self) -> dict[str, Any]:
        """The classes upweighted so far (the weights themselves are in the module's checkpoint)."""
        return {"applied": self.applied}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.applied = state_dict.get("applied")

    def _apply(self, trainer: Trainer, pl_module: LightningModule, targets: list[int]) -> None:
        dataset = trainer.train_dataloader.dataset if isinstance(trainer.train_dataloader, DataLoader) else None
        if dataset is None:
            raise RuntimeError("ClassUpweighting needs one training DataLoader on the Trainer.")
        labels = torch.empty(len(dataset), dtype=torch.int64)
        for batch in DataLoader(dataset, batch_size=1024, shuffle=False):
            _, y, index = unpack_batch(batch)
            labels[torch.as_tensor(index)] = torch.as_tensor(y).long()
        require_sample_weights(pl_module, type(self).__name__).set(class_weights(labels, targets, self.factor))
        self.applied = list(targets)
        names = [self.class_names[c] for c in targets]
        rank_zero_info(
            f"ClassUpweighting: the loss of classes {names} weighted x{self.factor:g} from epoch "
            f"{trainer.current_epoch + (0 if self.at_epoch is None else 1)} on."
        )
