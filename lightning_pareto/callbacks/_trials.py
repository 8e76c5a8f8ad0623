"""Trial fitness: score a candidate weighting by training from the same state and measuring validation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from lightning_pareto._modes import training_mode
from lightning_pareto.callbacks._accuracy import finite_accuracy, per_class_accuracy
from lightning_pareto.callbacks._snapshot import cpu_copy, preserved_rng
from lightning_pareto.weighting import unpack_batch

__all__ = ["TRIAL_EPOCH_FRACTION", "TrialFitness", "trial_batch_count"]

TRIAL_EPOCH_FRACTION = 4
"""``trial_batches="auto"`` trains one in this many of a training epoch's batches."""


def trial_batch_count(
    setting: int | Literal["auto"] | None, epoch_batches: float, dataset_size: int, batch_size: int
) -> int | None:
    """The batches one trial trains: ``trial_batches`` resolved against the run.

    Args:
        setting: ``InterventionSettings.trial_batches``: a count, ``"auto"`` or ``None`` (a full epoch).
        epoch_batches: The Trainer's training batches per epoch (``trainer.num_training_batches``; it
            follows ``limit_train_batches`` and, under DDP, is one rank's share); ignored unless finite
            and positive.
        dataset_size: Training samples, for the trial loader's own epoch.
        batch_size: The trial's batch size.

    Returns:
        The count for :class:`TrialFitness` (``None``: its loader's full epoch). ``"auto"`` gives a
        quarter of the Trainer's epoch, rounded up (at least one, at most the trial loader's epoch).
    """
    if setting != "auto":
        return setting
    loader_batches = max(1, math.ceil(dataset_size / max(1, batch_size)))
    finite = isinstance(epoch_batches, (int, float)) and math.isfinite(epoch_batches) and epoch_batches >= 1
    batches = min(int(epoch_batches), loader_batches) if finite else loader_batches
    return max(1, math.ceil(batches / TRIAL_EPOCH_FRACTION))


class TrialFitness:
    """Per-class validation accuracy after training from a fixed state with candidate weights.

    Each call trains ``num_batches`` batches (seeded order and dropout, identical for every
    candidate) with the loss ``sum_i w_i * loss_i / b`` and a fresh copy of the optimizer (its
    ``state_dict`` loaded, momentum included), measures per-class validation accuracy, and puts the
    model back exactly: parameters, buffers, ``.grad`` and training flags. The live optimizer, the
    global random states and Lightning's counters are never touched. LR schedulers, gradient
    clipping, accumulation and mixed precision of the real loop are not replayed: the trial uses the
    optimizer's current learning rate.

    Args:
        model: The classifier trained in place (``pl_module.net`` or the module itself).
        optimizer: The run's optimizer, copied for every trial.
        per_sample_loss: ``(logits (b, K), y (b,)) -> (b,)`` losses.
        train_dataset: Training samples ``(x, y, index)``.
        val_loader: Validation batches.
        num_classes: Number of classes ``K``.
        batch_size: Training batch size of the trial.
        num_batches: Batches per trial; ``None`` trains one full epoch.
        seed: Seed of the batch order and of dropout.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        per_sample_loss: Callable[[Tensor, Tensor], Tensor],
        train_dataset: Dataset,
        val_loader: DataLoader,
        num_classes: int,
        *,
        batch_size: int,
        num_batches: int | None,
        seed: int,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.per_sample_loss = per_sample_loss
        self.train_dataset = train_dataset
        self.val_loader = val_loader
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.calls = 0

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """Train with ``weights`` (float array of shape ``(n,)``) and return per-class accuracy ``(K,)``."""
        self.calls += 1
        with self._restoring_model(), preserved_rng(), training_mode(self.model, True):
            torch.manual_seed(self.seed)
            optimizer = self._optimizer_copy()
            device = next(self.model.parameters()).device
            weight_table = torch.as_tensor(np.asarray(weights), dtype=torch.float32, device=device)
            loader = DataLoader(
                self.train_dataset,
                batch_size=self.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(self.seed),
            )
            for step, batch in enumerate(loader):
                if self.num_batches is not None and step >= self.num_batches:
                    break
                x, y, index = unpack_batch(batch)
                x, y = move_data_to_device(x, device), torch.as_tensor(y).to(device)
                losses = self.per_sample_loss(self.model(x), y)
                loss = (weight_table[torch.as_tensor(index).to(device)] * losses).sum() / losses.shape[0]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return finite_accuracy(per_class_accuracy(self.model, self.val_loader, self.num_classes))

    def _optimizer_copy(self) -> Optimizer:
        groups = [dict(group) for group in self.optimizer.param_groups]
        copy = type(self.optimizer)(groups, **self.optimizer.defaults)
        # A fresh copy of the state: load_state_dict keeps tensors already on the right device.
        copy.load_state_dict(cpu_copy(self.optimizer.state_dict()))
        return copy

    @contextmanager
    def _restoring_model(self) -> Iterator[None]:
        """Put parameters, buffers and ``.grad`` back after the block (training flags: :func:`training_mode`)."""
        state = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
        grads = [(param, param.grad) for param in self.model.parameters()]
        try:
            for param, _ in grads:
                param.grad = None
            yield
        finally:
            self.model.load_state_dict(state)
            for param, grad in grads:
                param.grad = grad
