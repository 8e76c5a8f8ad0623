"""The trim() protocol: exactly the top b removed, retraining from the same start equals training on the kept subset."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _trimming_cases import WEIGHT_DECAY, noisy_gaussians, reference_iv, trained_logistic
from torch import nn
from torch.utils.data import Dataset

from lightning_pareto.nets import LogisticRegression
from lightning_pareto.trimming import (
    Fitter,
    LBFGSFit,
    corruption_precision,
    kept_indices,
    select_removals,
    trim,
)


class _RecordingFit(Fitter):
    """Records what each fit starts from and trains on, then delegates to L-BFGS."""

    def __init__(self) -> None:
        self.inner = LBFGSFit(weight_decay=WEIGHT_DECAY)
        self.weight_decay = self.inner.weight_decay
        self.seen: list[torch.Tensor] = []
        self.starts: list[dict[str, torch.Tensor]] = []

    def fit(self, net: nn.Module, train: Dataset, *, num_classes: int, seed: int) -> None:
        self.seen.append(torch.tensor(sorted(train[i][2] for i in range(len(train)))))
        self.starts.append({k: v.clone() for k, v in net.state_dict().items()})
        self.inner.fit(net, train, num_classes=num_classes, seed=seed)


def test_trim_removes_exactly_the_top_b_and_retrains_on_the_rest_from_the_same_start() -> None:
    datamodule = noisy_gaussians()
    torch.manual_seed(1)
    net = LogisticRegression(2, 2)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    fitter = _RecordingFit()
    report = trim(net, datamodule, methods=["iv", "random"], budgets=[0, 4, 9], seed=0, fitter=fitter)

    assert [(o.method, o.budget) for o in report.outcomes] == [(m, b) for m in ("iv", "random") for b in (0, 4, 9)]
    assert len(fitter.seen) == 1 + 2 * 2  # the baseline, then one retraining per positive budget
    assert torch.equal(fitter.seen[0], torch.arange(150))
    for start in fitter.starts:
        assert all(torch.equal(start[k], initial[k]) for k in initial)
    assert all(torch.equal(net.state_dict()[k], initial[k]) for k in initial)  # the given net is not trained

    retrained = iter(fitter.seen[1:])
    for outcome in report.outcomes:
        assert outcome.removed.shape == (outcome.budget,)
        assert len(set(outcome.removed.tolist())) == outcome.budget
        if outcome.budget == 0:
            assert outcome.test_acc == report.baseline_acc
            continue
        kept = next(retrained)
        assert len(kept) == 150 - outcome.budget
        assert not bool(torch.isin(kept, outcome.removed).any())
        assert torch.equal(kept, kept_indices(150, outcome.removed))

    # iv's budgets are nested prefixes of one ranking, computed on the baseline model with damping = weight decay.
    iv = [o for o in report.outcomes if o.method == "iv"]
    assert torch.equal(iv[2].removed[:4], iv[1].removed)
    baseline = trained_logistic(datamodule)
    expected = select_removals(-reference_iv(baseline, datamodule, WEIGHT_DECAY), 9)
    assert set(iv[2].removed.tolist()) == set(expected.tolist())


def test_trim_accuracy_equals_training_directly_on_the_kept_subset() -> None:
    """Leave-b-out retraining: the reported accuracy is that of a model fitted on the kept samples alone."""
    datamodule = noisy_gaussians()
    torch.manual_seed(2)
    net = LogisticRegression(2, 2)
    report = trim(net, datamodule, methods="fi", budgets=10, seed=0, fitter=LBFGSFit(weight_decay=WEIGHT_DECAY))
    (outcome,) = report.outcomes
    keep = kept_indices(150, outcome.removed)
    x, y = datamodule.train_arrays
    direct = copy.deepcopy(net).double()
    optimizer = torch.optim.LBFGS(
        direct.parameters(), max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        penalty = sum(p.square().sum() for p in direct.parameters())
        loss = F.cross_entropy(direct(x[keep].double()), y[keep]) + 0.5 * WEIGHT_DECAY * penalty
        loss.backward()
        return loss

    optimizer.step(closure)
    x_test, y_test = datamodule.test_arrays
    accuracy = float((direct(x_test.double()).argmax(-1) == y_test).double().mean())
    assert outcome.test_acc == pytest.approx(accuracy)
    assert (
        outcome.precision["flipped_precision"] == corruption_precision(outcome.removed, datamodule)["flipped_precision"]
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"methods": "loss", "budgets": 5}, ValueError, "method must be one of"),
        ({"methods": "fi", "budgets": -1}, ValueError, "budget must be >= 0"),
        ({"methods": "fi", "budgets": 150}, ValueError, "whole training set"),
        ({"methods": [], "budgets": 5}, ValueError, "at least one"),
    ],
)
def test_trim_rejects_bad_input_before_training(kwargs: dict, error: type, message: str) -> None:
    class Untouchable(Fitter):
        def fit(self, net: nn.Module, train: Dataset, *, num_classes: int, seed: int) -> None:
            raise AssertionError("trained despite bad input")

    with pytest.raises(error, match=message):
        trim(LogisticRegression(2, 2), noisy_gaussians(), fitter=Untouchable(), **kwargs)
