"""What the callbacks read from the Trainer: the network, the loss and each rank's shard."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_pareto import ClassifierModule
from lightning_pareto.callbacks._run import influence_model, loss_function, rank_shard, trainer_datasets
from lightning_pareto.nets import MLP


def test_influence_runs_on_the_net_and_with_the_modules_loss() -> None:
    module = ClassifierModule(MLP(2, 3), 3)
    assert influence_model(module) is module.net
    bare = nn.Linear(2, 3)
    assert influence_model(bare) is bare  # no ``net``: the module itself
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(loss_function(bare)(logits, y), F.cross_entropy(logits, y, reduction="none"))


def test_rank_shards_are_disjoint_and_cover_every_sample() -> None:
    shards = [list(rank_shard(SimpleNamespace(global_rank=r, world_size=3), 10)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_datasets_need_one_training_and_one_validation_loader() -> None:
    with pytest.raises(RuntimeError, match="one training and one validation DataLoader"):
        trainer_datasets(SimpleNamespace(train_dataloader=None, val_dataloaders=[]))
