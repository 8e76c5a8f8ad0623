"""What the intervention callbacks read from the running Trainer: strategy, network, loss and data."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["check_strategy", "influence_model", "loss_function", "rank_shard", "trainer_datasets"]


def check_strategy(trainer: Trainer, who: str) -> None:
    """Raise unless the run uses one device or one of Lightning's DDP strategies.

    Args:
        trainer: The Trainer.
        who: The callback's name, for the message.

    Raises:
        ValueError: For FSDP, DeepSpeed or any other strategy that shards or wraps the parameters.
    """
    strategy = trainer.strategy
    if isinstance(strategy, SingleDeviceStrategy) or (
        isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy)
    ):
        return
    raise ValueError(
        f"{who} supports single-device training and Lightning's DDP strategies (strategy='ddp', 'ddp_spawn', "
        f"'ddp_fork', ...), not {type(strategy).__name__}: FSDP and DeepSpeed shard the parameters, and the influence "
        "passes need the whole model on every rank. Train with strategy='ddp'."
    )


def influence_model(pl_module: LightningModule) -> nn.Module:
    """The network influence is computed on: ``pl_module.net`` when it is a module (so ``modules=["head"]``
    names its layers), else the LightningModule itself."""
    net = getattr(pl_module, "net", None)
    return net if isinstance(net, nn.Module) else pl_module


def loss_function(pl_module: LightningModule) -> Callable[[Tensor, Tensor], Tensor]:
    """The module's ``per_sample_loss(logits, y)``, else per-sample cross-entropy."""
    loss = getattr(pl_module, "per_sample_loss", None)
    if callable(loss):
        return loss
    return lambda logits, y: F.cross_entropy(logits, y, reduction="none")


def trainer_datasets(trainer: Trainer) -> tuple[Dataset, Dataset, int]:
    """The training and (first) validation datasets of the run, and the training batch size.

    Raises:
        RuntimeError: Unless the Trainer holds one training and one validation ``DataLoader``.
    """
    train = trainer.train_dataloader
    val = trainer.val_dataloaders
    if isinstance(val, (list, tuple)):
        val = val[0] if val else None
    if not isinstance(train, DataLoader) or not isinstance(val, DataLoader):
        raise RuntimeError(
            "the interventions need one training and one validation DataLoader on the Trainer, got "
            f"{type(train).__name__} and {type(val).__name__}"
        )
    return train.dataset, val.dataset, int(train.batch_size or 1)


def rank_shard(trainer: Trainer, size: int) -> range:
    """This rank's sample indices: every ``world_size``-th from its rank, no padding (all of them alone)."""
    return range(trainer.global_rank, size, trainer.world_size)
