"""TrialFitness against a plain PyTorch training loop, and everything it must leave as it found it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _intervention_helpers import states_equal
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto import IndexedDataset
from lightning_pareto.callbacks._trials import TrialFitness, trial_batch_count


def _toy_problem() -> tuple[nn.Module, torch.optim.Optimizer, IndexedDataset, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 4, generator=generator), torch.randint(0, 3, (96,), generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    # One real step so the optimizer has momentum buffers the trial must copy.
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    val = DataLoader(TensorDataset(x[:48] + 0.1, y[:48]), batch_size=16)
    return model, optimizer, IndexedDataset(TensorDataset(x, y)), val


def _reference_trial(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: IndexedDataset,
    val: DataLoader,
    weights: torch.Tensor,
    batches: int,
    seed: int,
) -> np.ndarray:
    """Plain PyTorch: a deep copy trained with the same batch order, dropout seed and optimizer state."""
    model = copy.deepcopy(model)
    fresh = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    fresh.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    torch.manual_seed(seed)
    loader = DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))
    model.train()
    for step, (x, y, index) in enumerate(loader):
        if step == batches:
            break
        loss = (weights[index] * F.cross_entropy(model(x), y, reduction="none")).mean()
        fresh.zero_grad()
        loss.backward()
        fresh.step()
    model.eval()
    with torch.no_grad():
        xs, ys = (torch.cat(parts) for parts in zip(*val))
        predicted = model(xs).argmax(1)
    return np.array([(predicted[ys == c] == c).double().mean().item() for c in range(3)])


def test_trial_fitness_matches_a_plain_training_loop_and_restores_everything() -> None:
    model, optimizer, train, val = _toy_problem()
    model.train()
    params_before = copy.deepcopy(model.state_dict())
    optimizer_before = copy.deepcopy(optimizer.state_dict())
    grads_before = [p.grad.clone() for p in model.parameters()]
    rng_before = torch.get_rng_state()
    trial = TrialFitness(
        model,
        optimizer,
        lambda logits, y: F.cross_entropy(logits, y, reduction="none"),
        train,
        val,
        3,
        batch_size=16,
        num_batches=4,
        seed=5,
    )
    weights = torch.rand(96, generator=torch.Generator().manual_seed(1)) * 2

    accuracy, unweighted = trial(weights.numpy()), trial(np.zeros(96))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert states_equal(model.state_dict(), params_before) and model.training
    assert states_equal(optimizer.state_dict(), optimizer_before)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads_before))
    expected = _reference_trial(model, optimizer, train, val, weights, batches=4, seed=5)
    np.testing.assert_allclose(accuracy, expected, atol=1e-12)
    assert not np.allclose(accuracy, unweighted)  # the weights matter


@pytest.mark.parametrize(
    ("setting", "epoch_batches", "expected"),
    [
        ("auto", 6, 2),  # a quarter of 6 batches, rounded up
        ("auto", 8, 2),
        ("auto", 1, 1),  # at least one
        ("auto", 2.0, 1),  # limit_train_batches: the Trainer's epoch, not the data set's
        ("auto", float("inf"), 25),  # no finite epoch: the trial loader's (100 batches of 10 samples)
        ("auto", 0, 25),
        ("auto", 400, 25),  # never more than the trial loader's epoch
        (7, 6, 7),  # an explicit count as it is
        (None, 6, None),  # a full epoch
    ],
)
def test_trial_batch_count_resolves_auto_to_a_quarter_epoch(
    setting: object, epoch_batches: float, expected: object
) -> None:
    assert trial_batch_count(setting, epoch_batches, dataset_size=1000, batch_size=10) == expected
