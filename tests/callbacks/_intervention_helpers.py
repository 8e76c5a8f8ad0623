"""Small runs for the intervention-callback tests: data, module, scripted accuracies, probes, fake influence."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lightning_pareto import ClassifierModule, PerClassAccuracy
from lightning_pareto.data import ArrayDataModule
from lightning_pareto.nets import MLP

NUM_CLASSES = 3


def blobs_datamodule(seed: int = 0, label_noise: float = 0.1, num_samples: int = 300) -> ArrayDataModule:
    """Three overlapping 2-D Gaussian blobs: 180 training, 60 validation, 60 test samples, batches of 32."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % NUM_CLASSES
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 1.7]])
    features = centres[labels] + rng.normal(scale=0.9, size=(num_samples, 2))
    return ArrayDataModule(
        features,
        labels,
        class_names=["a", "b", "c"],
        batch_size=32,
        val_size=60,
        test_size=60,
        label_noise=label_noise,
        seed=seed,
    )


def classifier(lr: float = 0.2, step_size: int = 2) -> ClassifierModule:
    """A 2-16-3 MLP with SGD (momentum 0.9) and a StepLR schedule, so rollbacks have optimizer and scheduler state."""
    torch.manual_seed(0)
    return ClassifierModule(
        MLP(2, NUM_CLASSES, hidden=(16,)),
        NUM_CLASSES,
        class_names=["a", "b", "c"],
        optimizer=lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9),
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.5),
    )


def trainer(root: Any, callbacks: list[Callback], max_epochs: int, **overrides: Any) -> Trainer:
    """A quiet CPU Trainer writing under ``root``."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": str(root),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "max_epochs": max_epochs,
        "callbacks": callbacks,
    }
    options.update(overrides)
    return L.Trainer(**options)


# Keys every line of interventions.jsonl carries, whichever callback wrote it.
RECORD_KEYS = (
    "epoch",
    "mode",
    "targets",
    "before",
    "after",
    "bad",
    "status",
    "reason",
    "seconds",
    "ceiling",
    "n_weighted",
    "thresholds",
)


class ScriptedAccuracy(PerClassAccuracy):
    """A PerClassAccuracy whose history is scripted per epoch, so drops happen exactly where a test wants them.

    Args:
        script: ``epoch -> per-class accuracy``; epochs not in it get ``default``.
        default: Accuracy of unscripted epochs.
        support: Validation samples per class.
    """

    def __init__(
        self, script: dict[int, Sequence[float]], default: Sequence[float] = (0.8, 0.8, 0.8), support: int = 1000
    ) -> None:
        super().__init__(log_figure_every_n_epochs=0)
        self.script = {epoch: list(values) for epoch, values in script.items()}
        self.default = list(default)
        self.support = support  # validation samples per class: sets the sampling noise the guards allow for

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        accuracy = self.script.get(trainer.current_epoch, self.default)
        self._history.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "accuracy": accuracy,
                "support": [self.support] * len(accuracy),
            }
        )


class Probe(Callback):
    """Records, per epoch, the training state at its start (deep copies) and the weights and indices of every batch."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []
        self.batch_weights: dict[int, list[Tensor | None]] = {}
        self.batch_indices: dict[int, list[Tensor]] = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.starts.append(
            {
                "epoch": trainer.current_epoch,
                "params": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
                "scheduler": copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict()),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state()[1].copy(),
            }
        )

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        store = pl_module.sample_weights
        weights = None if not store.active else store.lookup(batch[2]).clone()
        self.batch_weights.setdefault(trainer.current_epoch, []).append(weights)
        self.batch_indices.setdefault(trainer.current_epoch, []).append(batch[2].clone())

    def batch_order(self, epoch: int) -> list[list[int]]:
        """The dataset indices of every batch of ``epoch``, in order."""
        return [index.tolist() for index in self.batch_indices[epoch]]

    def weighted_epochs(self) -> list[int]:
        """Epochs in which some batch saw non-uniform weights."""
        return sorted(
            e
            for e, seen in self.batch_weights.items()
            if any(w is not None and not torch.allclose(w, torch.ones_like(w)) for w in seen)
        )


def patch_influence(monkeypatch: Any, make: Callable[[int, int], Tensor]) -> list[int]:
    """Replace the influence engine's ``category_influence`` with ``make(n, K)``; returns a call counter list."""
    calls: list[int] = []

    def fake(model: Any, train_loader: Any, val_loader: Any, num_classes: int, **kwargs: Any) -> Tensor:
        calls.append(len(train_loader.dataset))
        return make(len(train_loader.dataset), num_classes)

    monkeypatch.setattr("lightning_pareto.influence.category_influence", fake)
    return calls


def random_influence(n: int, k: int) -> Tensor:
    """A seeded Gaussian influence matrix: plenty of samples help each class, so the LP finds gains."""
    return torch.from_numpy(np.random.default_rng(1).normal(size=(n, k))).float()


def states_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Bit-for-bit equality of nested states (tensors compared with ``torch.equal``)."""
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b))
    return a == b
