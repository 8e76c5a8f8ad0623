"""The acquisition loop: what is queried, what is trained, restart vs continue, and bad input before training."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import Callback
from torch import nn

from lightning_pareto import ClassifierModule
from lightning_pareto.active import BALD, RandomSampling, Strategy, make_strategy
from lightning_pareto.active import loop as loop_module
from lightning_pareto.active.loop import random_initial_pool, run_active_learning
from lightning_pareto.nets import LogisticRegression

K = 3


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    return torch.randn(n, 4, generator=generator) + 2.0 * nn.functional.one_hot(y, 4).float(), y


def _module(seed: int = 0) -> ClassifierModule:
    torch.manual_seed(seed)
    return ClassifierModule(LogisticRegression(4, K), K, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))


class _FirstFeature(Strategy):
    """Scores = first input feature; records what each loader yields."""

    name = "first_feature"

    def __init__(self) -> None:
        self.pool_batches: list[tuple[int, int]] = []
        self.labeled_sizes: list[int] = []

    def score(self, model, pool_loader, labeled_loader, *, val_loader=None, seed=0):
        parts = []
        for batch in pool_loader:
            self.pool_batches.append((len(batch), len(batch[0])))  # (tuple length, batch size)
            parts.append(batch[0][:, 0])
        self.labeled_sizes.append(sum(len(batch[0]) for batch in labeled_loader))
        return torch.cat(parts).double()


class _WeightRecorder(Callback):
    def __init__(self) -> None:
        self.starts: list[torch.Tensor] = []
        self.ends: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module):
        self.starts.append(pl_module.net.head.weight.detach().clone())

    def on_train_end(self, trainer, pl_module):
        self.ends.append(pl_module.net.head.weight.detach().clone())


def test_queries_the_top_scores_from_the_oracle_and_tests_each_round():
    pool, labels = _data(40)
    x_test, y_test = _data(30, seed=1)
    strategy = _FirstFeature()
    asked: list[torch.Tensor] = []

    def oracle(positions: torch.Tensor) -> torch.Tensor:
        asked.append(positions.clone())
        return labels[positions]

    initial = torch.tensor([0, 1, 2, 3, 4, 5])
    module = _module()
    seen = []
    results = run_active_learning(
        module,
        strategy,
        pool,
        oracle,
        (x_test, y_test),
        initial=initial,
        acquisition_size=4,
        rounds=3,
        max_epochs=2,
        batch_size=8,
        pool_batch_size=7,
        on_round=seen.append,
    )
    assert [r.round for r in results] == [0, 1, 2, 3] and seen == results
    assert [r.n_labeled for r in results] == [6, 10, 14, 18]
    assert results[0].seconds == 0.0 and results[0].queried.numel() == 0
    assert all(r.seconds > 0 and r.train_seconds > 0 for r in results[1:])

    # Each round queries the 4 unlabelled points with the largest first feature, in that order.
    remaining = [i for i in range(40) if i not in initial.tolist()]
    for result in results[1:]:
        expected = sorted(remaining, key=lambda i: -float(pool[i, 0]))[:4]
        assert result.queried.tolist() == expected
        remaining = [i for i in remaining if i not in expected]
    assert [a.tolist() for a in asked] == [initial.tolist()] + [r.queried.tolist() for r in results[1:]]

    # The pool is scored in batches of pool_batch_size, inputs only (no labels leak to the strategy).
    assert {length for length, _ in strategy.pool_batches} == {1}
    assert max(size for _, size in strategy.pool_batches) == 7
    assert strategy.labeled_sizes == [6, 10, 14]

    # The reported accuracy is the final model's, recomputed here.
    with torch.no_grad():
        accuracy = (module.eval()(x_test).argmax(-1) == y_test).double().mean().item()
    assert results[-1].test_acc == pytest.approx(accuracy)


@pytest.mark.parametrize("restart", [True, False])
def test_restart_from_initial_weights_or_continue(restart):
    pool, labels = _data(30)
    recorder = _WeightRecorder()
    module = _module()
    initial_weight = module.net.head.weight.detach().clone()
    run_active_learning(
        module,
        RandomSampling(),
        pool,
        lambda i: labels[i],
        _data(10, 1),
        initial=torch.arange(6),
        acquisition_size=3,
        rounds=2,
        max_epochs=2,
        restart=restart,
        trainer_kwargs={"callbacks": [recorder]},
    )
    assert len(recorder.starts) == 3
    for number, start in enumerate(recorder.starts):
        reference = initial_weight if restart or number == 0 else recorder.ends[number - 1]
        torch.testing.assert_close(start, reference, rtol=0, atol=0)
    assert not torch.equal(recorder.ends[-1], initial_weight)


def test_same_seed_same_run_and_non_finite_scores_are_queried_last():
    pool, labels = _data(30)

    class _HalfNaN(Strategy):
        name = "half_nan"

        def score(self, model, pool_loader, labeled_loader, *, val_loader=None, seed=0):
            size = sum(len(batch[0]) for batch in pool_loader)
            scores = torch.arange(size, dtype=torch.float64)
            scores[size // 2 :] = float("nan")
            return scores

    runs = []
    for _ in range(2):
        with pytest.warns(RuntimeWarning, match="not finite"):
            runs.append(
                run_active_learning(
                    _module(),
                    _HalfNaN(),
                    pool,
                    lambda i: labels[i],
                    _data(12, 1),
                    initial=torch.arange(6),
                    acquisition_size=3,
                    rounds=1,
                    max_epochs=2,
                    seed=4,
                )
            )
    # Unlabelled positions 6..29: the finite scores are the first 12, largest = positions 17, 16, 15.
    assert runs[0][1].queried.tolist() == [17, 16, 15]
    assert [r.test_acc for r in runs[0]] == [r.test_acc for r in runs[1]]


def test_random_initial_pool_is_seeded_and_distinct():
    first = random_initial_pool(100, 10, seed=3)
    assert first.tolist() == sorted(set(first.tolist())) and len(first) == 10
    assert torch.equal(first, random_initial_pool(100, 10, seed=3))
    assert not torch.equal(first, random_initial_pool(100, 10, seed=4))
    with pytest.raises(ValueError, match="initial_size"):
        random_initial_pool(10, 10, seed=0)


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the loop gets as far as training."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr(loop_module, "fit_quietly", refuse)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"acquisition_size": 25}, "larger than the unlabelled pool"),
        ({"rounds": 0}, "rounds must be an int >= 1"),
        ({"rounds": 5, "acquisition_size": 5}, "exceeds the unlabelled pool of 24"),
        ({"initial": torch.tensor([0, 0, 1])}, "distinct pool positions"),
        ({"initial": torch.tensor([0, 30])}, "distinct pool positions"),
        ({"strategy": BALD()}, "dropout"),
        ({"strategy": make_strategy("iv")}, "needs a validation set"),
        ({"label_fn": lambda i: torch.full_like(i, K)}, "outside"),
        ({"pool_batch_size": 0}, "pool_batch_size"),
    ],
)
def test_bad_input_fails_before_training(no_training, overrides, match):
    pool, labels = _data(30)
    arguments = {
        "strategy": RandomSampling(),
        "label_fn": lambda i: labels[i],
        "initial": torch.arange(6),
        "acquisition_size": 4,
        "rounds": 2,
    }
    arguments.update(overrides)
    strategy, label_fn = arguments.pop("strategy"), arguments.pop("label_fn")
    module = _module()
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(ValueError, match=match):
        run_active_learning(module, strategy, pool, label_fn, _data(10, 1), **arguments)
    assert all(torch.equal(before[key], value) for key, value in module.state_dict().items())


def test_initial_pool_missing_classes_warns(no_training):
    pool, labels = _data(30)
    missing_class_two = pytest.warns(UserWarning, match=r"no sample of classes \[2\]")
    with missing_class_two, pytest.raises(AssertionError, match="training"):
        run_active_learning(
            _module(),
            RandomSampling(),
            pool,
            lambda i: labels[i],
            _data(10, 1),
            initial=torch.tensor([0, 1, 3, 4]),
            acquisition_size=4,
            rounds=2,
        )
