"""Tests of the InfluenceTrimming callback: removal through zero weights, equivalence with subset training, errors."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, Subset, TensorDataset

from lightning_pareto import ClassifierModule, IndexedDataset
from lightning_pareto.callbacks.trimming import InfluenceTrimming
from lightning_pareto.data import GaussiansDataModule
from lightning_pareto.nets import LogisticRegression

NUM_TRAIN = 150


def _datamodule() -> GaussiansDataModule:
    """150 training samples in one batch (full-batch steps), 10% of the labels flipped."""
    return GaussiansDataModule(separation=4.0, label_noise=0.1, batch_size=NUM_TRAIN, seed=0)


def _module() -> ClassifierModule:
    torch.manual_seed(0)
    return ClassifierModule(LogisticRegression(2, 2), 2, optimizer=partial(torch.optim.SGD, lr=0.5))


def _trainer(kwargs: dict[str, Any], epochs: int, *callbacks: Any) -> Trainer:
    return Trainer(max_epochs=epochs, callbacks=list(callbacks), **kwargs)


def test_removed_samples_get_zero_weight_and_the_gradient_is_the_subset_mean(quiet_trainer_kwargs: dict) -> None:
    datamodule, module = _datamodule(), _module()
    trimming = InfluenceTrimming(method="iv", budget=12, at_epoch=0, damping=0.01)
    _trainer(quiet_trainer_kwargs, 1, trimming).fit(module, datamodule)

    removed = trimming.removed
    assert removed is not None and removed.shape == (12,) and len(set(removed.tolist())) == 12
    weights = module.sample_weights.weights
    keep = torch.ones(NUM_TRAIN, dtype=torch.bool)
    keep[removed] = False
    assert torch.all(weights[removed] == 0)
    torch.testing.assert_close(weights[keep], torch.full((NUM_TRAIN - 12,), NUM_TRAIN / (NUM_TRAIN - 12)))

    x, y = datamodule.train_arrays
    weighted_loss = module.weighted_mean(module.per_sample_loss(module(x), y), torch.arange(NUM_TRAIN))
    weighted = torch.autograd.grad(weighted_loss, list(module.parameters()))
    subset_loss = F.cross_entropy(module(x[keep]), y[keep])
    expected = torch.autograd.grad(subset_loss, list(module.parameters()))
    for got, want in zip(weighted, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_trimming_mid_run_equals_training_on_the_subset_from_then_on(quiet_trainer_kwargs: dict) -> None:
    datamodule, module = _datamodule(), _module()
    trimming = InfluenceTrimming(method="iv", budget=10, at_epoch=2, damping=0.01)
    _trainer(quiet_trainer_kwargs, 4, trimming).fit(module, datamodule)

    reference, reference_data = _module(), _datamodule()
    _trainer(quiet_trainer_kwargs, 2).fit(reference, reference_data)
    keep = sorted(set(range(NUM_TRAIN)) - set(trimming.removed.tolist()))
    subset = DataLoader(Subset(reference_data.train_dataset, keep), batch_size=NUM_TRAIN)
    _trainer(quiet_trainer_kwargs, 2).fit(reference, train_dataloaders=subset)
    for got, want in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    assert float(torch.isin(trimming.removed, datamodule.flipped_indices).double().mean()) >= 0.8  # mostly flips


def test_logs_the_removal_under_trim(quiet_trainer_kwargs: dict) -> None:
    datamodule, module = _datamodule(), _module()
    trimming = InfluenceTrimming(method="random", budget=30, at_epoch=1, seed=5)
    trainer = _trainer(quiet_trainer_kwargs, 2, trimming)
    trainer.fit(module, datamodule)
    metrics = trainer.callback_metrics
    assert float(metrics["trim/removed"]) == 30
    expected = float(torch.isin(trimming.removed, datamodule.flipped_indices).double().mean())
    assert float(metrics["trim/flipped_precision"]) == pytest.approx(expected)
    assert "trim/score_seconds" in metrics


def test_resuming_from_a_checkpoint_keeps_the_removal(quiet_trainer_kwargs: dict, tmp_path: Path) -> None:
    datamodule, module = _datamodule(), _module()
    first = InfluenceTrimming(method="random", budget=20, at_epoch=1, seed=1)
    trainer = _trainer(quiet_trainer_kwargs, 2, first)
    trainer.fit(module, datamodule)
    trainer.save_checkpoint(tmp_path / "trimmed.ckpt")

    resumed_module = _module()
    second = InfluenceTrimming(method="random", budget=20, at_epoch=1, seed=2)  # would pick other samples
    _trainer(quiet_trainer_kwargs, 3, second).fit(resumed_module, _datamodule(), ckpt_path=tmp_path / "trimmed.ckpt")
    assert torch.equal(second.removed, first.removed)
    assert torch.equal(resumed_module.sample_weights.weights, module.sample_weights.weights)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "loss"}, "method must be one of"),
        ({"budget": -1}, "budget must be >= 0"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"rank": 0}, "rank"),
        ({"at_epoch": -1}, "at_epoch"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InfluenceTrimming(**kwargs)


class _Untrainable(ClassifierModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        raise AssertionError("training started despite bad input")


def test_budget_of_the_whole_training_set_fails_before_training(quiet_trainer_kwargs: dict) -> None:
    module = _Untrainable(LogisticRegression(2, 2), 2)
    with pytest.raises(ValueError, match="whole training set of 150"):
        _trainer(quiet_trainer_kwargs, 1, InfluenceTrimming(budget=NUM_TRAIN)).fit(module, _datamodule())


def test_influence_methods_need_validation_data(quiet_trainer_kwargs: dict) -> None:
    datamodule = _datamodule()
    datamodule.setup("fit")
    loader = DataLoader(datamodule.train_dataset, batch_size=NUM_TRAIN)
    module = _Untrainable(LogisticRegression(2, 2), 2)
    with pytest.raises(ValueError, match="no validation data"):
        _trainer(quiet_trainer_kwargs, 1, InfluenceTrimming(method="iv", budget=5)).fit(
            module, train_dataloaders=loader
        )


def test_batches_without_indices_fail_at_setup(quiet_trainer_kwargs: dict) -> None:
    data = TensorDataset(torch.randn(20, 2), torch.randint(0, 2, (20,)))
    module = _Untrainable(LogisticRegression(2, 2), 2)
    with pytest.raises(ValueError, match="IndexedDataset"):
        _trainer(quiet_trainer_kwargs, 1, InfluenceTrimming(method="random", budget=5)).fit(
            module, train_dataloaders=DataLoader(data, batch_size=20)
        )


def test_modules_without_a_weight_store_fail_at_setup(quiet_trainer_kwargs: dict) -> None:
    class Plain(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            raise AssertionError("training started despite bad input")

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = IndexedDataset(TensorDataset(torch.randn(20, 2), torch.randint(0, 2, (20,))))
    with pytest.raises(TypeError, match="sample_weights"):
        _trainer(quiet_trainer_kwargs, 1, InfluenceTrimming(method="random", budget=5)).fit(
            Plain(), train_dataloaders=DataLoader(data, batch_size=20)
        )
