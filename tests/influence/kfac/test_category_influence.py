"""Category-wise influence and IV against dense solves, EKFAC against exact, influence against retraining."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _influence_reference import (
    cnn,
    digits,
    loader,
    mlp,
    per_sample_grads,
    reference_influence,
    relative_error,
    single_thread,  # noqa: F401 - fixture
    spearman,
    train,
    train_sgd,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto.influence import InfluenceTimings, category_influence, fit_curvature, influence_value

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits_data() -> tuple[Tensor, Tensor]:
    return digits()


def _median_spearman(approximate: Tensor, exact: Tensor) -> float:
    return statistics.median(spearman(approximate[:, c], exact[:, c]) for c in range(exact.shape[1]))


@pytest.mark.parametrize(
    ("make_model", "fisher"), [(mlp, "ggn"), (mlp, "empirical"), (cnn, "ggn")], ids=["mlp-ggn", "mlp-emp", "cnn-ggn"]
)
def test_exact_matches_dense_solve(digits_data, make_model, fisher) -> None:
    x, y = digits_data[0].double(), digits_data[1]
    model = train(make_model().double(), x[:400], y[:400], steps=40)
    train_set, val_set = (x[:240], y[:240]), (x[240:400], y[240:400])
    expected = reference_influence(model, train_set, val_set, 10, damping=0.05, fisher=fisher)
    actual = category_influence(
        model, loader(*train_set), loader(*val_set), 10, curvature="exact", damping=0.05, fisher=fisher
    )
    assert actual.dtype == torch.float32 and actual.shape == (240, 10)
    assert relative_error(actual, expected) < 1e-6


def test_influence_value_matches_dense_solve(digits_data) -> None:
    x, y = digits_data[0].double(), digits_data[1]
    model = train(mlp().double(), x[:400], y[:400], steps=40)
    train_grads, val_grads = per_sample_grads(model, x[:240], y[:240]), per_sample_grads(model, x[240:400], y[240:400])
    curvature = train_grads.T @ train_grads / 240 + 0.05 * torch.eye(train_grads.shape[1], dtype=torch.float64)
    expected = train_grads @ torch.linalg.solve(curvature, val_grads.mean(dim=0))
    actual = influence_value(
        model, loader(x[:240], y[:240]), loader(x[240:400], y[240:400]), curvature="exact", damping=0.05
    )
    assert actual.shape == (240,)
    assert relative_error(actual, expected) < 1e-6


def test_influence_value_is_the_class_weighted_sum_of_category_influence(digits_data) -> None:
    x, y = digits_data
    model = train(mlp(), x[:300], y[:300], steps=30)
    curvature = fit_curvature(model, loader(x[:300], y[:300]), curvature="ekfac", damping=0.1)
    train_loader, val_loader = loader(x[:300], y[:300]), loader(x[300:500], y[300:500])
    per_class = category_influence(model, train_loader, val_loader, 10, curvature=curvature)
    weights = torch.bincount(y[300:500], minlength=10).float() / 200
    overall = influence_value(model, train_loader, val_loader, curvature=curvature)
    torch.testing.assert_close(overall, per_class @ weights, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def sgd_models(single_thread, digits_data) -> dict[str, nn.Module]:  # noqa: F811
    """Models part-way through training (largest eigenvalue ~1-3), where damping matters."""
    x, y = digits_data
    with torch.random.fork_rng():
        return {
            "mlp": train_sgd(mlp(), x[:1000], y[:1000], epochs=5, lr=0.1),
            "cnn": train_sgd(cnn(), x[:1000], y[:1000], epochs=5, lr=0.05),
        }


@pytest.mark.parametrize(
    ("name", "damping", "relative", "bound"),
    [("mlp", 0.1, False, 0.75), ("mlp", 0.3, True, 0.9), ("cnn", 1.0, True, 0.85)],
    ids=["mlp-0.1", "mlp-0.3-largest", "cnn-1.0-largest"],
)
def test_ekfac_tracks_exact(digits_data, sgd_models, name, damping, relative, bound) -> None:
    # Median over classes of the Spearman correlation with exact influence. Over 5 training seeds
    # (benchmarks/RESULTS.md) EKFAC's median/min are 0.85/0.81 for the MLP at damping 0.1,
    # 0.97/0.94 at 0.3 x the largest eigenvalue, and 0.95/0.93 for the CNN at 1 x the largest.
    x, y = digits_data
    model = sgd_models[name]
    train_loader, val_loader = loader(x[:1000], y[:1000], batch_size=250), loader(x[1000:1400], y[1000:1400], 200)
    exact = fit_curvature(model, train_loader, curvature="exact")
    assert 1.0 < exact.largest_eigenvalue < 30.0  # part-way through training, not converged
    if relative:
        damping *= exact.largest_eigenvalue
    reference = category_influence(model, train_loader, val_loader, 10, curvature=exact, damping=damping)
    correlations = {
        kind: _median_spearman(
            category_influence(model, train_loader, val_loader, 10, curvature=kind, damping=damping), reference
        )
        for kind in ("kfac", "ekfac")
    }
    assert correlations["ekfac"] >= bound
    assert correlations["kfac"] >= bound - 0.05


def test_removal_prediction_matches_leave_one_out_retraining(digits_data) -> None:
    # L2-regularised softmax regression: with fisher="ggn" and damping = the L2 strength the exact
    # curvature is the Hessian of the training objective, so I[i, c] / n predicts the change of the
    # class-c validation loss when sample i is removed.
    x, y = digits_data[0].double(), digits_data[1]
    n, l2 = 300, 1e-2
    train_x, train_y, val_x, val_y = x[:n], y[:n], x[n : 2 * n], y[n : 2 * n]

    def objective(model: nn.Module, keep: Tensor) -> Tensor:
        loss = F.cross_entropy(model(train_x[keep]), train_y[keep], reduction="sum") / n
        return loss + 0.5 * l2 * sum(p.square().sum() for p in model.parameters())

    def fit(model: nn.Module, keep: Tensor, tolerance: float) -> nn.Module:
        optimizer = torch.optim.LBFGS(
            model.parameters(),
            max_iter=2000,
            tolerance_grad=tolerance,
            tolerance_change=0.0,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = objective(model, keep)
            loss.backward()
            return loss

        optimizer.step(closure)
        return model

    def class_losses(model: nn.Module) -> Tensor:
        with torch.no_grad():
            losses = F.cross_entropy(model(val_x), val_y, reduction="none")
        return torch.stack([losses[val_y == c].mean() for c in range(10)])

    torch.manual_seed(0)
    model = fit(nn.Linear(64, 10).double(), torch.ones(n, dtype=torch.bool), tolerance=1e-10)
    scores = category_influence(
        model, loader(train_x, train_y), loader(val_x, val_y), 10, curvature="exact", fisher="ggn", damping=l2
    ).double()
    before = class_losses(model)
    removed = np.random.default_rng(0).choice(n, size=60, replace=False)
    actual, predicted = [], []
    for i in removed:
        retrained = nn.Linear(64, 10).double()
        retrained.load_state_dict(model.state_dict())  # warm start
        keep = torch.ones(n, dtype=torch.bool)
        keep[i] = False
        actual.append(class_losses(fit(retrained, keep, tolerance=1e-7)) - before)
        predicted.append(scores[i] / n)
    actual_t, predicted_t = torch.stack(actual), torch.stack(predicted)
    pearson = np.corrcoef(actual_t.flatten(), predicted_t.flatten())[0, 1]
    per_class = [np.corrcoef(actual_t[:, c], predicted_t[:, c])[0, 1] for c in range(10)]
    assert pearson >= 0.9 and min(per_class) >= 0.9
    # Same sign and scale: removal of a helpful sample (I > 0) raises the loss by about I / n.
    assert 0.8 < float(actual_t.abs().mean() / predicted_t.abs().mean()) < 1.25


def _circular_uniform(per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two classes uniform on unit disks centred at (-1.5, 0) and (1.5, 0): linearly separable."""
    points, labels = [], []
    for label, centre in enumerate((-1.5, 1.5)):
        radius, angle = np.sqrt(rng.uniform(size=per_class)), rng.uniform(0, 2 * np.pi, size=per_class)
        points.append(np.stack([centre + radius * np.cos(angle), radius * np.sin(angle)], axis=1))
        labels.append(np.full(per_class, label))
    return np.concatenate(points), np.concatenate(labels)


def test_flipped_labels_dominate_the_all_classes_negative_region() -> None:
    # Seed 003, Fig. 2A-C: 300 + 300 circular-uniform samples, 50 blue and 20 orange labels flipped.
    rng = np.random.default_rng(0)
    features, labels = _circular_uniform(300, rng)
    val_features, val_labels = _circular_uniform(150, rng)
    flipped = np.concatenate([rng.choice(300, 50, replace=False), 300 + rng.choice(300, 20, replace=False)])
    noisy = labels.copy()
    noisy[flipped] = 1 - noisy[flipped]
    x, y = torch.tensor(features, dtype=torch.float32), torch.tensor(noisy)
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    val_loader = loader(torch.tensor(val_features, dtype=torch.float32), torch.tensor(val_labels))
    scores = category_influence(model, loader(x, y), val_loader, 2).numpy()  # EKFAC, default damping

    is_flipped = np.zeros(600, dtype=bool)
    is_flipped[flipped] = True
    joint_negative = (scores < 0).all(axis=1)
    assert joint_negative.sum() >= 10
    assert is_flipped[joint_negative].mean() >= 0.9  # flipped are 12% of the data
    # Every flipped sample hurts its true class; clean samples help on average.
    assert (scores[flipped, labels[flipped]] < 0).mean() >= 0.95
    assert (scores[is_flipped].mean(axis=0) < 0).all() and (scores[~is_flipped].mean(axis=0) > 0).all()


def test_rows_follow_indices_or_loader_order(digits_data) -> None:
    x, y = digits_data[0][:200].double(), digits_data[1][:200]
    model = train(mlp().double(), x, y, steps=20)
    curvature = fit_curvature(model, loader(x, y), curvature="exact", damping=0.1)
    val_loader = loader(x[100:], y[100:])
    ordered = category_influence(model, loader(x, y, indexed=False), val_loader, 10, curvature=curvature)
    shuffled = category_influence(model, loader(x, y, shuffle=True), val_loader, 10, curvature=curvature)
    torch.testing.assert_close(shuffled, ordered, rtol=1e-5, atol=1e-7)
    # Without indices, a reordered dataset reorders the rows.
    permutation = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    permuted = category_influence(
        model, loader(x[permutation], y[permutation], indexed=False), val_loader, 10, curvature=curvature
    )
    torch.testing.assert_close(permuted, ordered[permutation], rtol=1e-5, atol=1e-7)


class DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(64, 16)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(torch.relu(self.body(x))))


def _assert_untouched(model: DropoutNet) -> None:
    assert model.training and model.drop.training and model.head.training
    assert not model.body.weight.requires_grad and model.head.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_model_state_restored_and_no_gradients_left(digits_data) -> None:
    x, y = digits_data[0][:128], digits_data[1][:128]
    torch.manual_seed(0)
    model = DropoutNet().train()
    model.body.weight.requires_grad_(False)
    first = category_influence(model, loader(x, y), loader(x, y), 10, curvature="ekfac")
    _assert_untouched(model)
    # Eval mode inside: dropout off, so the result is deterministic.
    torch.testing.assert_close(category_influence(model, loader(x, y), loader(x, y), 10, curvature="ekfac"), first)

    class Failing:
        dataset = range(128)

        def __iter__(self):
            yield x[:64], y[:64]
            raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        category_influence(model, Failing(), loader(x, y), 10, curvature="kfac")
    _assert_untouched(model)


@pytest.mark.parametrize(
    "context",
    [lambda: torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad, torch.inference_mode],
    ids=["autocast", "no_grad", "inference_mode"],
)
def test_callers_autocast_and_grad_mode_do_not_reach_the_passes(digits_data, context) -> None:
    x, y = digits_data[0][:128], digits_data[1][:128]
    model = train(mlp(), x, y, steps=10)
    plain = category_influence(model, loader(x, y), loader(x, y), 10, curvature="ekfac", damping=0.1)
    with context():
        inside = category_influence(model, loader(x, y), loader(x, y), 10, curvature="ekfac", damping=0.1)
    torch.testing.assert_close(inside, plain)


def test_non_finite_rows_are_returned_and_counted(digits_data) -> None:
    x, y = digits_data[0][:128].clone(), digits_data[1][:128]
    model = train(mlp(), x, y, steps=10)
    curvature = fit_curvature(model, loader(x, y), curvature="kfac", damping=0.1)
    x[5, 3] = float("nan")
    with pytest.warns(UserWarning, match="1 of 128 influence rows are not finite"):
        scores = category_influence(model, loader(x, y), loader(x[6:], y[6:]), 10, curvature=curvature)
    assert torch.isnan(scores[5]).all() and torch.isfinite(scores[torch.arange(128) != 5]).all()


def test_rows_the_loader_skips_are_nan_and_counted(digits_data) -> None:
    x, y = digits_data[0][:100], digits_data[1][:100]
    model = train(mlp(), x, y, steps=10)
    dataset = TensorDataset(x, y, torch.arange(100))
    partial = DataLoader(dataset, batch_size=25, sampler=list(range(0, 100, 2)))  # sized by the full data set
    with pytest.warns(UserWarning, match="50 of 100 influence rows are not finite"):
        scores = category_influence(model, partial, loader(x, y), 10, curvature="kfac", damping=0.1)
    assert torch.isnan(scores[1::2]).all() and torch.isfinite(scores[::2]).all()


def test_class_without_validation_samples_gets_a_zero_column(digits_data) -> None:
    x, y = digits_data[0][:200], digits_data[1][:200]
    model = train(mlp(), x, y, steps=10)
    keep = y != 3
    with pytest.warns(UserWarning, match="no validation samples for class 3"):
        scores = category_influence(model, loader(x, y), loader(x[keep], y[keep]), 10, curvature="kfac")
    assert (scores[:, 3] == 0).all() and (scores[:, [0, 1, 2, 4]] != 0).any(dim=0).all()


def test_bad_labels_fail_before_the_training_passes(digits_data) -> None:
    x, y = digits_data[0][:64], digits_data[1][:64]

    class Untouchable:
        def __iter__(self):
            raise AssertionError("the train loader must not be iterated")

    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=9\)"):
        category_influence(mlp(), Untouchable(), loader(x, y), 9)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        category_influence(mlp(), Untouchable(), loader(x, y), 0)
    with pytest.raises(ValueError, match="modules must be None when a fitted Curvature is passed"):
        curvature = fit_curvature(mlp(), loader(x, y), curvature="kfac")
        category_influence(mlp(), Untouchable(), loader(x, y), 10, curvature=curvature, modules=["0"])
    with pytest.raises(ValueError, match="fitted on another model"):
        category_influence(mlp(), Untouchable(), loader(x, y), 10, curvature=curvature)


def test_index_outside_the_dataset_is_an_error(digits_data) -> None:
    x, y = digits_data[0][:64], digits_data[1][:64]
    bad = DataLoader(TensorDataset(x, y, torch.arange(64) + 10), batch_size=32)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, len\(train_loader.dataset\)=64\)"):
        category_influence(mlp(), bad, loader(x, y), 10, curvature="kfac")


def test_head_only_tracking_and_timings(digits_data) -> None:
    x, y = digits_data[0][:256].double(), digits_data[1][:256]
    model = train(mlp().double(), x, y, steps=20)
    timings = InfluenceTimings()
    scores = category_influence(
        model, loader(x, y), loader(x, y), 10, curvature="exact", damping=0.05, modules=["2"], timings=timings
    )
    # Reference: the head's per-sample gradients only (the last 330 of the 2,410 parameters).
    train_grads = per_sample_grads(model, x, y)[:, -330:]
    class_means = torch.stack([train_grads[y == c].mean(dim=0) for c in range(10)])
    damped = train_grads.T @ train_grads / 256 + 0.05 * torch.eye(330, dtype=torch.float64)
    assert relative_error(scores, train_grads @ torch.linalg.solve(damped, class_means.T)) < 1e-6
    assert min(timings.factors, timings.eigen, timings.queries, timings.precondition, timings.scores) > 0
    assert timings.correction == 0.0
