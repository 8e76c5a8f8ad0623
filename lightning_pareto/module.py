"""``ClassifierModule``: the reference LightningModule for any ``nn.Module`` classifier."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics.classification import MulticlassAccuracy, MulticlassStatScores

from lightning_pareto.weighting import SampleWeightedMixin, unpack_batch

__all__ = ["ClassifierModule", "sgd_momentum"]


def sgd_momentum(params: Iterable[Any]) -> Optimizer:
    """The default optimizer: ``torch.optim.SGD(params, lr=0.1, momentum=0.9)``."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _is_config(value: Any) -> bool:
    """Whether a hyperparameter can be stored and re-created from a checkpoint (no live objects)."""
    if isinstance(value, dict):
        return all(_is_config(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_is_config(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


class ClassifierModule(SampleWeightedMixin, LightningModule):
    """Trains any classifier network with per-sample-weighted cross-entropy.

    The training loss is ``sum_i w_i * CE(x_i, y_i) / b`` over a batch of ``b`` samples, with ``w_i``
    read from :attr:`sample_weights` by dataset index (ones while no callback has set weights), so
    weights of mean one keep the loss scale. Validation and test use the unweighted mean.

    Logs ``train_loss``, ``val_loss``, ``val_acc``, ``test_loss`` and ``test_acc``. Validation and
    test steps return ``{"loss", "logits"}`` so callbacks reuse the logits.

    Args:
        net: The classifier, mapping inputs to logits of shape ``(b, num_classes)``.
        num_classes: Number of classes.
        class_names: One name per class (default ``"0"``, ``"1"``, ...).
        optimizer: Builds the optimizer from the parameters (default :func:`sgd_momentum`).
        scheduler: Builds an LR scheduler from the optimizer, or ``None``. ``ReduceLROnPlateau``
            monitors ``val_loss``.

    Example:
        >>> from lightning_pareto.nets import MLP
        >>> module = ClassifierModule(MLP(4, 3), num_classes=3, class_names=["a", "b", "c"])
        >>> module.per_sample_loss(torch.zeros(2, 3), torch.tensor([0, 2])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        class_names: list[str] | None = None,
        optimizer: OptimizerCallable = sgd_momentum,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}.")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        if class_names is None:
            class_names = [str(c) for c in range(num_classes)]
        class_names = [str(name) for name in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries but num_classes is {num_classes}.")
        if len(set(class_names)) != num_classes:
            raise ValueError(f"class_names must be unique, got {class_names}.")
        head = getattr(net, "head", None)
        if isinstance(head, nn.Linear) and head.out_features != num_classes:
            raise ValueError(
                f"net.head has {head.out_features} outputs but num_classes is {num_classes}; build the net with "
                f"num_classes={num_classes}."
            )
        with warnings.catch_warnings():
            # Live objects (a network built in Python) are dropped below; LightningCLI passes their configs.
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        live_objects = [k for k in ("net", "optimizer", "scheduler") if not _is_config(self.hparams.get(k))]
        self.remove_ignored_hparams(live_objects)
        self.net = net
        self.num_classes = num_classes
        self.class_names = class_names
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_class_stats = MulticlassStatScores(num_classes, average=None)  # tp, fp, tn, fn, support
        self.test_per_class: list[float] = []  # per-class test accuracy of the last test run (NaN: no samples)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(b, num_classes)``."""
        return self.net(x)

    def per_sample_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy per sample.

        Args:
            logits: Float tensor of shape ``(b, num_classes)``.
            y: Int64 tensor of shape ``(b,)`` with class indices.

        Returns:
            Float tensor of shape ``(b,)``.
        """
        return F.cross_entropy(logits, y, reduction="none")

    def check_batch(self, logits: Tensor, y: Any) -> None:
        """Raise a clear error for labels that are not class indices or logits of the wrong width.

        Checked on every batch (two comparisons): the sanity-check validation run meets it before training.

        Raises:
            TypeError: If ``y`` is not an integer tensor of class indices.
            ValueError: If ``logits`` is not ``(b, num_classes)``.
        """
        if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
            kind = type(y).__name__ if not isinstance(y, Tensor) else f"a {y.dtype} tensor"
            raise TypeError(
                f"labels must be integer class indices (an int64 tensor), got {kind}; map string or one-hot labels to "
                "indices 0..num_classes-1 first (ArrayDataModule/CSVDataModule do this for string labels)."
            )
        if logits.ndim != 2 or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"the network returns logits of shape {tuple(logits.shape)} but num_classes={self.num_classes}: its last "
                f"layer must have num_classes outputs (e.g. nn.Linear(..., {self.num_classes}))."
            )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Weighted cross-entropy of a batch ``(x, y, index)`` or ``(x, y)``."""
        x, y, index = unpack_batch(batch)
        logits = self(x)
        self.check_batch(logits, y)
        loss = self.weighted_mean(self.per_sample_loss(logits, y), index)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=y.shape[0])
        return loss

    def _evaluate(self, batch: Any, stage: str, accuracy: MulticlassAccuracy) -> dict[str, Tensor]:
        x, y, _ = unpack_batch(batch)
        logits = self(x)
        self.check_batch(logits, y)
        loss = self.per_sample_loss(logits, y).mean()
        accuracy(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=y.shape[0])
        self.log(f"{stage}_acc", accuracy, prog_bar=True, batch_size=y.shape[0])
        return {"loss": loss, "logits": logits.detach()}

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Unweighted loss and accuracy; returns ``{"loss", "logits"}``."""
        return self._evaluate(batch, "val", self.val_accuracy)

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Unweighted loss and accuracy (also per class); returns ``{"loss", "logits"}``."""
        outputs = self._evaluate(batch, "test", self.test_accuracy)
        self.test_class_stats.update(outputs["logits"], unpack_batch(batch)[1])
        return outputs

    def on_test_epoch_start(self) -> None:
        """Start the per-class test accuracy afresh."""
        self.test_class_stats.reset()

    def on_test_epoch_end(self) -> None:
        """Log ``test_acc/<class name>`` for every class with test samples; keep them in :attr:`test_per_class`."""
        stats = self.test_class_stats.compute()  # synced over ranks
        correct, support = stats[:, 0].double(), stats[:, -1].double()
        self.test_per_class = [
            float(c / n) if n > 0 else float("nan") for c, n in zip(correct.tolist(), support.tolist())
        ]
        for name, value in zip(self.class_names, self.test_per_class):
            if value == value:  # not NaN
                self.log(f"test_acc/{name}", value)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Class probabilities of shape ``(b, num_classes)``."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=-1)

    def configure_optimizers(self) -> Any:
        """The optimizer (and scheduler, if given) built from the init callables."""
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}
