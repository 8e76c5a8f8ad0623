"""The sample-weight contract: store, weighted mean, exact removal by zero weights, clear errors."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto import ClassifierModule, IndexedDataset, SampleWeightStore
from lightning_pareto.nets import MLP
from lightning_pareto.weighting import (
    SampleWeightedMixin,
    require_indexed_batches,
    require_sample_weights,
    unpack_batch,
)


def test_store_is_ones_until_set_then_returns_weights_by_index() -> None:
    store = SampleWeightStore()
    assert not store.active and store.weights is None
    assert torch.equal(store.lookup(torch.tensor([3, 0, 7])), torch.ones(3))
    store.set(torch.arange(10, dtype=torch.float64) / 2)
    assert store.active and store.weights.dtype == torch.float32
    assert torch.equal(store.lookup(torch.tensor([3, 0, 7])), torch.tensor([1.5, 0.0, 3.5]))
    store.clear()
    assert torch.equal(store.lookup(torch.tensor([3])), torch.ones(1))


def test_store_copies_its_input_and_round_trips_state() -> None:
    weights = torch.rand(5)
    store = SampleWeightStore()
    store.set(weights)
    weights.zero_()
    assert store.lookup(torch.arange(5)).min() > 0
    restored = SampleWeightStore()
    restored.load_state_dict(store.state_dict())
    assert torch.equal(restored.weights, store.weights)
    restored.load_state_dict(SampleWeightStore().state_dict())
    assert not restored.active


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        (torch.tensor([1, 2]), TypeError, "floating-point"),
        ([1.0, 2.0], TypeError, "torch.Tensor"),
        (torch.ones(2, 2), ValueError, "1-D"),
        (torch.tensor([1.0, float("nan")]), ValueError, "finite"),
        (torch.tensor([1.0, -0.5]), ValueError, "non-negative"),
    ],
)
def test_store_rejects_bad_weights(weights: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        SampleWeightStore().set(weights)


def test_store_rejects_out_of_range_indices() -> None:
    store = SampleWeightStore()
    store.set(torch.ones(4))
    with pytest.raises(IndexError, match="out of range"):
        store.lookup(torch.tensor([0, 4]))


def test_weighted_mean_equals_hand_computed_weighted_mean() -> None:
    module = ClassifierModule(MLP(3, 4), num_classes=4)
    weights = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0, 1.5])
    module.sample_weights.set(weights)
    loss = torch.tensor([0.2, 1.0, 5.0, 0.4])
    index = torch.tensor([4, 1, 2, 0])
    expected = (3.0 * 0.2 + 2.0 * 1.0 + 0.0 * 5.0 + 0.5 * 0.4) / 4
    assert module.weighted_mean(loss, index).item() == pytest.approx(expected)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_loss_is_weighted_cross_entropy() -> None:
    module = ClassifierModule(MLP(3, 4), num_classes=4)
    module.sample_weights.set(torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0]))
    x, y, index = torch.randn(3, 3), torch.tensor([1, 3, 0]), torch.tensor([4, 0, 1])
    logits = module.net(x)
    hand = sum(w * -torch.log_softmax(logits[i], dim=0)[y[i]] for i, w in enumerate([3.0, 0.5, 2.0])) / 3
    assert module.training_step((x, y, index), 0).item() == pytest.approx(hand.item(), rel=1e-6)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_zero_weights_remove_samples_from_the_gradient_exactly() -> None:
    module = ClassifierModule(MLP(5, 3, hidden=(8,)), num_classes=3).double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    index = torch.arange(8)
    keep = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    module.sample_weights.set(keep.double())
    weighted = torch.autograd.grad(module.training_step((x, y, index), 0), list(module.parameters()))
    # Reference: the plain mean cross-entropy on the kept samples only, scaled by (kept / batch).
    subset_loss = F.cross_entropy(module.net(x[keep]), y[keep]) * keep.sum() / len(keep)
    subset = torch.autograd.grad(subset_loss, list(module.parameters()))
    for a, b in zip(weighted, subset):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_weighted_mean_without_indices_is_plain_mean_only_while_inactive() -> None:
    module = ClassifierModule(MLP(3, 2), num_classes=2)
    loss = torch.tensor([1.0, 3.0])
    assert module.weighted_mean(loss, None).item() == pytest.approx(2.0)
    module.sample_weights.set(torch.ones(2))
    with pytest.raises(ValueError, match="IndexedDataset"):
        module.weighted_mean(loss, None)


def test_unpack_batch_accepts_pairs_and_triples_only() -> None:
    x, y, index = torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), torch.arange(2)
    assert unpack_batch((x, y, index))[2] is index
    assert unpack_batch([x, y])[2] is None
    with pytest.raises(TypeError, match="IndexedDataset"):
        unpack_batch({"x": x})
    with pytest.raises(TypeError, match="got 1 elements"):
        unpack_batch((x,))


def test_require_sample_weights_names_the_fix() -> None:
    class Plain(L.LightningModule):
        pass

    with pytest.raises(TypeError, match="SampleWeightedMixin"):
        require_sample_weights(Plain(), "CourseCorrection")
    module = ClassifierModule(MLP(3, 2), num_classes=2)
    assert require_sample_weights(module, "x") is module.sample_weights


class _NeedsIndices(L.Callback):
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_indexed_batches(trainer, "NeedsIndices")


def _loaders(indexed: bool) -> tuple[DataLoader, DataLoader]:
    data = TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,)))
    dataset = IndexedDataset(data) if indexed else data
    return DataLoader(dataset, batch_size=8), DataLoader(dataset, batch_size=8)


def test_callback_needing_indices_fails_at_setup_without_them(quiet_trainer_kwargs: dict[str, Any]) -> None:
    trainer = L.Trainer(max_epochs=1, callbacks=[_NeedsIndices()], **quiet_trainer_kwargs)
    module = ClassifierModule(MLP(3, 2), num_classes=2)
    with pytest.raises(ValueError, match=r"NeedsIndices needs the dataset index.*IndexedDataset\(dataset\)"):
        trainer.fit(module, *_loaders(indexed=False))
    assert trainer.global_step == 0


def test_callback_needing_indices_accepts_indexed_batches(quiet_trainer_kwargs: dict[str, Any]) -> None:
    trainer = L.Trainer(max_epochs=1, callbacks=[_NeedsIndices()], **quiet_trainer_kwargs)
    trainer.fit(ClassifierModule(MLP(3, 2), num_classes=2), *_loaders(indexed=True))
    assert trainer.global_step == 2


def test_users_own_module_opts_in_with_the_mixin() -> None:
    class MyModule(SampleWeightedMixin, L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 2)

    module = MyModule()
    module.sample_weights.set(torch.tensor([2.0, 0.0]))
    assert module.weighted_mean(torch.tensor([1.0, 1.0]), torch.tensor([0, 1])).item() == pytest.approx(1.0)
    checkpoint: dict[str, Any] = {}
    module.on_save_checkpoint(checkpoint)
    fresh = MyModule()
    fresh.on_load_checkpoint(checkpoint)
    assert torch.equal(fresh.sample_weights.weights, torch.tensor([2.0, 0.0]))
