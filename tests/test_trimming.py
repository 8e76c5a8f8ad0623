"""Tests of influence-based data trimming: scores, selection, the trim() protocol and its fitters."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, hessian
from torch.utils.data import DataLoader, Dataset

from lightning_pareto.data import GaussiansDataModule
from lightning_pareto.nets import LogisticRegression
from lightning_pareto.trimming import (
    Fitter,
    LBFGSFit,
    ScoringOptions,
    corruption_precision,
    harm_scores,
    kept_indices,
    select_removals,
    trim,
)

WEIGHT_DECAY = 0.01


def _noisy_gaussians(seed: int = 0) -> GaussiansDataModule:
    """Two well-separated Gaussians with 10% of the 150 training labels flipped (15 samples)."""
    datamodule = GaussiansDataModule(separation=4.0, label_noise=0.1, seed=seed)
    datamodule.setup("fit")
    return datamodule


def _trained_logistic(datamodule: GaussiansDataModule) -> nn.Module:
    torch.manual_seed(0)
    net = LogisticRegression(2, 2)
    LBFGSFit(weight_decay=WEIGHT_DECAY).fit(net, datamodule.train_dataset, num_classes=2, seed=0)
    return net


def _loaders(datamodule: GaussiansDataModule) -> tuple[DataLoader, DataLoader]:
    return DataLoader(datamodule.train_dataset, batch_size=64), DataLoader(datamodule.val_dataset, batch_size=64)


def _reference_iv(net: nn.Module, datamodule: GaussiansDataModule, damping: float) -> torch.Tensor:
    """IV_i = g_V^T (H + damping I)^{-1} g_i with the dense autograd Hessian of the mean training loss."""
    params = {name: p.detach().double() for name, p in net.named_parameters()}
    names = list(params)
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].reshape(-1) for n in names])
    reference = copy.deepcopy(net).double()

    def loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, [s.numel() for s in shapes])
        unflat = {n: piece.reshape(s) for n, piece, s in zip(names, pieces, shapes)}
        return F.cross_entropy(functional_call(reference, unflat, (x,)), y)

    x, y = (t.double() if t.is_floating_point() else t for t in datamodule.train_arrays)
    x_val, y_val = (t.double() if t.is_floating_point() else t for t in datamodule.val_arrays)
    curvature = hessian(loss)(flat, x, y) + damping * torch.eye(flat.numel(), dtype=torch.float64)
    query = torch.linalg.solve(curvature, grad(loss)(flat, x_val, y_val))
    per_sample = torch.stack([grad(loss)(flat, x[i : i + 1], y[i : i + 1]) for i in range(len(y))])
    return per_sample @ query


def test_iv_scores_are_minus_the_dense_influence_value() -> None:
    datamodule = _noisy_gaussians()
    net = _trained_logistic(datamodule)
    scores = harm_scores(net, *_loaders(datamodule), "iv", options=ScoringOptions(damping=WEIGHT_DECAY))
    expected = -_reference_iv(net, datamodule, WEIGHT_DECAY)
    assert scores.shape == (150,) and scores.dtype == torch.float64
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize(("method", "min_precision"), [("fi", 0.8), ("iv", 0.8), ("fi_approx", 0.3)])
def test_influence_methods_find_flipped_labels(method: str, min_precision: float) -> None:
    """15 of 150 labels are flipped (chance precision 0.1): the most harmful samples are mostly flipped ones."""
    datamodule = _noisy_gaussians()
    net = _trained_logistic(datamodule)
    scores = harm_scores(net, *_loaders(datamodule), method, options=ScoringOptions(damping=WEIGHT_DECAY))
    removed = select_removals(scores, 15)
    precision = corruption_precision(removed, datamodule)["flipped_precision"]
    assert precision >= min_precision


def test_fi_approx_without_approximation_error_ranks_like_exact_fi() -> None:
    """alpha = 1 scores every sample exactly and rank k >= min(p, d) is an exact SVD: the order is FI's."""
    datamodule = _noisy_gaussians()
    net = _trained_logistic(datamodule)
    loaders = _loaders(datamodule)
    exact = harm_scores(net, *loaders, "fi", options=ScoringOptions(curvature="kfac"))
    approx = harm_scores(net, *loaders, "fi_approx", options=ScoringOptions(rank=2, alpha=1.0))
    assert torch.equal(torch.argsort(exact, stable=True), torch.argsort(approx, stable=True))


def test_random_scores_are_seeded_and_leave_the_global_rng_alone() -> None:
    datamodule = _noisy_gaussians()
    net = LogisticRegression(2, 2)
    state = torch.get_rng_state()
    first = harm_scores(net, *_loaders(datamodule), "random", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, harm_scores(net, *_loaders(datamodule), "random", seed=3))
    assert not torch.equal(first, harm_scores(net, *_loaders(datamodule), "random", seed=4))


def test_select_removals_takes_the_largest_with_ties_by_index_and_non_finite_last() -> None:
    assert select_removals(torch.tensor([0.5, 2.0, 1.0, 2.0, -1.0, 0.7]), 3).tolist() == [1, 3, 2]
    assert select_removals(torch.zeros(4), 0).tolist() == []
    with pytest.warns(RuntimeWarning, match="1 of 6 trimming scores are not finite"):
        assert select_removals(torch.tensor([0.5, 2.0, float("nan"), 2.0, -1.0, 0.7]), 5).tolist() == [1, 3, 5, 0, 4]


@pytest.mark.parametrize(
    ("budget", "error", "message"),
    [(-1, ValueError, "budget must be >= 0"), (6, ValueError, "whole training set"), (2.0, TypeError, "int")],
)
def test_select_removals_rejects_bad_budgets(budget: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        select_removals(torch.zeros(6), budget)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"rank": 0}, "rank"),
        ({"curvature": "diag"}, "curvature"),
        ({"damping": -1.0}, "damping"),
    ],
)
def test_scoring_options_reject_bad_values(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScoringOptions(**options)


def test_harm_scores_rejects_unknown_methods() -> None:
    datamodule = _noisy_gaussians()
    with pytest.raises(ValueError, match="method must be one of"):
        harm_scores(LogisticRegression(2, 2), *_loaders(datamodule), "loss")  # type: ignore[arg-type]


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
    datamodule = _noisy_gaussians()
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
    baseline = _trained_logistic(datamodule)
    expected = select_removals(-_reference_iv(baseline, datamodule, WEIGHT_DECAY), 9)
    assert set(iv[2].removed.tolist()) == set(expected.tolist())


def test_trim_accuracy_equals_training_directly_on_the_kept_subset() -> None:
    """Leave-b-out retraining: the reported accuracy is that of a model fitted on the kept samples alone."""
    datamodule = _noisy_gaussians()
    torch.manual_seed(2)
    net = LogisticRegression(2, 2)
    report = trim(net, datamodule, methods="fi", budgets=10, seed=0, fitter=LBFGSFit(weight_decay=WEIGHT_DECAY))
    (outcome,) = report.outcomes
    keep = kept_indices(150, outcome.removed)
    x, y = datamodule.train_arrays
    direct = copy.deepcopy(net).double()
    optimizer = torch.optim.LBFGS(direct.parameters(), max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

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
    assert outcome.precision["flipped_precision"] == corruption_precision(outcome.removed, datamodule)["flipped_precision"]


def test_lbfgs_fit_reaches_a_stationary_point_of_the_regularised_loss() -> None:
    datamodule = _noisy_gaussians()
    net = _trained_logistic(datamodule).double()
    x, y = datamodule.train_arrays
    penalty = sum(p.square().sum() for p in net.parameters())
    loss = F.cross_entropy(net(x.double()), y) + 0.5 * WEIGHT_DECAY * penalty
    gradients = torch.autograd.grad(loss, list(net.parameters()))
    assert max(float(g.abs().max()) for g in gradients) < 1e-5
    assert next(_trained_logistic(datamodule).parameters()).dtype == torch.float32  # cast back after the fit


def test_corruption_precision_counts_flipped_and_noisy_samples() -> None:
    class Corrupted:
        flipped_indices = torch.tensor([1, 4, 7])
        noisy_feature_indices = torch.tensor([2])

    precision = corruption_precision(torch.tensor([1, 2, 3, 4]), Corrupted())
    assert precision == {"flipped_precision": 0.5, "noisy_precision": 0.25}
    assert corruption_precision(torch.tensor([1]), object()) == {}


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
        trim(LogisticRegression(2, 2), _noisy_gaussians(), fitter=Untouchable(), **kwargs)
