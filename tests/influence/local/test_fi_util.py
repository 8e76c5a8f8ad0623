"""FI^util (seed 000) against a literal, naive Algorithm 1 and the closed forms it must satisfy."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, vmap
from torch.utils.data import DataLoader, Dataset

from lightning_pareto.influence import InfluenceTimings
from lightning_pareto.influence._layout import flatten_layout, unflatten_layout
from lightning_pareto.influence.curvature import fit_curvature
from lightning_pareto.influence.local import fi_util, metric_factors, pairwise_fi, query_gradients


@pytest.fixture(autouse=True)
def _one_thread():
    # These problems are tiny: one thread avoids thread contention on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Indexed(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.y[i], i


class _MLP(nn.Module):
    """Two hidden tanh layers (smooth, so the Hessian is well defined everywhere) and a head."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _TinyCNN(nn.Module):
    """A Conv2d on flat 4x4 one-channel images, tanh, and a Linear head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=3, padding=1)
        self.head = nn.Linear(2 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x.reshape(-1, 1, 4, 4))).flatten(1))


def _blobs(n: int, d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centres = 1.5 * torch.randn(k, d, generator=generator, dtype=torch.float64)
    return centres[y] + torch.randn(n, d, generator=generator, dtype=torch.float64), y


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight_decay: float = 1e-3) -> nn.Module:
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        penalty = sum(p.square().sum() for p in model.parameters())
        loss = nn.functional.cross_entropy(model(x), y) + weight_decay * penalty
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def _problem(d: int, k: int, model: nn.Module, seed: int = 0, n: int = 30):
    torch.manual_seed(seed)
    x, y = _blobs(n, d, k, seed)
    xv, yv = _blobs(20, d, k, seed + 100)
    # Flip two labels so some samples are clearly harmful.
    y = y.clone()
    y[:2] = (y[:2] + 1) % k
    _fit(model.double(), x, y)
    train = DataLoader(_Indexed(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val = DataLoader(_Indexed(xv, yv), batch_size=8)
    return model, train, val, (x, y, xv, yv)


def _naive_fi(model: nn.Module, x, y, xv, yv, *, damping: float | None = None, query=None, h_inv=None) -> torch.Tensor:
    """Algorithm 1, literally: per-sample J by jacrev, dense H^{-1}, pinv(G_z); float64.

    ``query`` (a function theta -> scalar loss) replaces the validation mean loss (Algorithm 2);
    ``h_inv`` (in ``model.parameters()`` order) replaces the inverse Hessian.
    """
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def params(flat):
        out, start = {}, 0
        for name, shape in zip(names, shapes):
            out[name] = flat[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        return out

    def log_probs(flat, inputs):
        return torch.log_softmax(functional_call(model, params(flat), (inputs[None],))[0], dim=-1)

    def loss(flat, inputs, label):
        return -log_probs(flat, inputs)[label]

    n = len(x)
    if h_inv is None:
        h = hessian(lambda flat: vmap(loss, in_dims=(None, 0, 0))(flat, x, y).mean())(theta)
        identity = torch.eye(len(h), dtype=h.dtype)
        h_inv = torch.linalg.pinv(h, hermitian=True) if damping is None else torch.linalg.inv(h + damping * identity)
    if query is None:
        g_v = grad(lambda flat: sum(loss(flat, xv[j], yv[j]) for j in range(len(xv))) / len(xv))(theta)
    else:
        g_v = grad(query)(theta)
    values = []
    for i in range(n):
        jac = jacrev(lambda inputs, label=y[i]: grad(loss)(theta, inputs, label))(x[i])  # (p, d)
        d_theta_d_omega = -h_inv @ jac / n  # appendix A, eq. A.7
        a = jacrev(log_probs, argnums=0)(theta, x[i]) @ d_theta_d_omega + jacrev(log_probs, argnums=1)(theta, x[i])
        probs = log_probs(theta, x[i]).exp()
        metric = a.T @ torch.diag(probs) @ a
        v = g_v @ d_theta_d_omega
        values.append(v @ torch.linalg.pinv(metric, hermitian=True) @ v)
    return torch.stack(values)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-6) -> None:
    assert actual.dtype == torch.float64
    error = ((actual - expected).abs() / expected.abs().clamp_min(1e-12 * expected.abs().max())).max()
    assert error < rtol, f"max relative error {error:.3e}"


@pytest.mark.parametrize(("d", "k"), [(3, 2), (4, 3)], ids=["binary", "3-class"])
def test_fi_util_equals_naive_algorithm_1_for_softmax_regression(d: int, k: int) -> None:
    model, train, val, (x, y, xv, yv) = _problem(d, k, nn.Linear(d, k))
    expected = _naive_fi(model, x, y, xv, yv)
    _assert_close(fi_util(model, train, val), expected)
    assert expected.std() > 0.1 * expected.mean()  # a non-degenerate ranking was compared


def test_fi_util_with_damping_equals_naive_damped_inverse() -> None:
    model, train, val, (x, y, xv, yv) = _problem(3, 3, nn.Linear(3, 3), seed=1)
    _assert_close(fi_util(model, train, val, damping=0.05), _naive_fi(model, x, y, xv, yv, damping=0.05))


def test_fi_util_generic_path_equals_naive_for_a_whole_mlp() -> None:
    # modules=None on a non-linear net goes through torch.func: all parameters, raw input.
    model, train, val, (x, y, xv, yv) = _problem(2, 3, _MLP(2, 3), seed=2)
    _assert_close(fi_util(model, train, val, damping=1e-2), _naive_fi(model, x, y, xv, yv, damping=1e-2))


def test_fi_util_equals_naive_for_a_small_conv_net() -> None:
    model, train, val, (x, y, xv, yv) = _problem(16, 3, _TinyCNN(3), seed=13, n=24)
    _assert_close(fi_util(model, train, val, damping=0.1), _naive_fi(model, x, y, xv, yv, damping=0.1))


def test_last_layer_mode_equals_naive_on_penultimate_features() -> None:
    model, train, val, (x, y, xv, yv) = _problem(2, 3, _MLP(2, 3), seed=3)
    with torch.no_grad():
        features, val_features = model.body(x), model.body(xv)
    expected = _naive_fi(model.head, features, y, val_features, yv)
    _assert_close(fi_util(model, train, val, modules=["head"]), expected)


def test_rows_follow_dataset_index_and_loader_order_without_index() -> None:
    model, train, val, (x, y, xv, yv) = _problem(3, 2, nn.Linear(3, 2), seed=4)
    by_index = fi_util(model, train, val)  # the training loader shuffles
    ordered = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    torch.testing.assert_close(fi_util(model, ordered, val), by_index, rtol=1e-10, atol=0)


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_kronecker_curvature_equals_naive_with_the_engines_inverse(kind: str) -> None:
    d, k = 3, 3
    model, train, val, (x, y, xv, yv) = _problem(d, k, nn.Linear(d, k), seed=11)
    curvature = fit_curvature(model, train, curvature=kind, damping=0.1)
    basis = torch.eye(k * (d + 1), dtype=torch.float64)
    solved = curvature.inverse_hvp(unflatten_layout(curvature.tracked, basis))
    layout_inverse = flatten_layout(curvature.tracked, solved)
    # Layout entry (class c, column l) is weight[c, l] for l < d and bias[c] for l = d.
    rows, cols = torch.meshgrid(torch.arange(k), torch.arange(d + 1), indexing="ij")
    to_naive = torch.where(cols < d, rows * d + cols, k * d + rows).reshape(-1)
    h_inv = torch.empty_like(layout_inverse)
    h_inv[to_naive[:, None], to_naive[None, :]] = layout_inverse
    expected = _naive_fi(model, x, y, xv, yv, h_inv=h_inv)
    _assert_close(fi_util(model, train, val, curvature=kind, damping=0.1), expected)


def test_shu_zhu_closed_form_without_parameter_path() -> None:
    # FI of log P(y|x) under the fixed-model metric equals (1 - p_y) / p_y (Shu & Zhu 2019).
    for model, d, k in [(nn.Linear(4, 3), 4, 3), (_MLP(3, 2), 3, 2)]:
        model, train, _, (x, y, _, _) = _problem(d, k, model, seed=5)
        factors = metric_factors(model, train, parameter_path=False)
        assert factors.param_rows is None
        x, y = x[factors.index], y[factors.index]
        inputs = x.clone().requires_grad_(True)
        log_p = torch.log_softmax(model(inputs), dim=-1).gather(1, y[:, None]).sum()
        (direction,) = torch.autograd.grad(log_p, inputs)
        fi = (factors.whitened @ direction[..., None]).squeeze(-1).square().sum(-1)
        p_y = torch.softmax(model(x), dim=-1).gather(1, y[:, None])[:, 0].detach()
        _assert_close(fi, (1 - p_y) / p_y)


def test_kfsvd_with_full_rank_and_exact_curvature_equals_exact() -> None:
    model, train, val, _ = _problem(4, 3, nn.Linear(4, 3), seed=6)
    exact = fi_util(model, train, val)
    full = fi_util(model, train, val, curvature="exact", approx="kfsvd", rank=4)
    _assert_close(full, exact)
    truncated = fi_util(model, train, val, curvature="exact", approx="kfsvd", rank=1)
    assert torch.isfinite(truncated).all() and not torch.allclose(truncated, exact, rtol=1e-3)


def test_kfsvd_full_rank_equals_exact_on_the_generic_path() -> None:
    model, train, val, _ = _problem(2, 3, _MLP(2, 3), seed=12, n=20)
    exact = fi_util(model, train, val, damping=1e-2)
    _assert_close(fi_util(model, train, val, damping=1e-2, curvature="exact", approx="kfsvd", rank=2), exact)


def test_subsampling_with_alpha_one_gives_the_exact_ranking() -> None:
    model, train, val, _ = _problem(3, 2, nn.Linear(3, 2), seed=7, n=40)
    exact = fi_util(model, train, val)
    scores = fi_util(model, train, val, approx="subsample", alpha=1.0)
    assert torch.equal(torch.argsort(scores), torch.argsort(exact))
    assert scores.min() == 0.0 and scores.max() == 1.0


def test_subsampling_keeps_computed_ranks_and_is_seeded() -> None:
    model, train, val, _ = _problem(3, 2, nn.Linear(3, 2), seed=8, n=40)
    exact = fi_util(model, train, val)
    scores = fi_util(model, train, val, approx="subsample", alpha=0.5, seed=3)
    again = fi_util(model, train, val, approx="subsample", alpha=0.5, seed=3)
    assert torch.equal(scores, again)
    quantiles = torch.arange(20, dtype=torch.float64) / 19
    computed = torch.isin(scores, quantiles)
    assert computed.sum() >= 20  # the 20 exactly scored samples sit on the rank grid
    assert spearmanr(scores.numpy(), exact.numpy()).statistic > 0.3
    assert ((scores >= 0) & (scores <= 1)).all()


def test_pairwise_fi_equals_naive_algorithm_2_inner_loop() -> None:
    model, train, _, (x, y, xv, _) = _problem(3, 3, nn.Linear(3, 3), seed=9, n=20)
    factors = metric_factors(model, train)
    queries = xv[:4]
    gradients = query_gradients(model, DataLoader(queries, batch_size=3))
    fi = pairwise_fi(factors, gradients, chunk_size=3)
    assert fi.shape == (4, 20)
    predicted = model(queries).argmax(-1)
    order = factors.index
    for u in range(4):

        def query_loss(flat, u=u):
            weight, bias = flat[:9].reshape(3, 3), flat[9:]
            return nn.functional.cross_entropy((queries[u] @ weight.T + bias)[None], predicted[u : u + 1])

        expected = _naive_fi(model, x, y, None, None, query=query_loss)
        _assert_close(fi[u], expected[order])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"approx": "subsample", "alpha": 0.0}, "alpha"),
        ({"approx": "subsample", "alpha": 1.5}, "alpha"),
        ({"approx": "subsample", "alpha": -0.1}, "alpha"),
        ({"approx": "kfsvd", "rank": 0, "curvature": "exact"}, "rank"),
        ({"approx": "kfsvd", "curvature": "exact"}, "rank"),
        ({"rank": 3}, "rank"),
        ({"alpha": 0.5}, "alpha"),
        ({"approx": "lowrank"}, "approx"),
        ({"curvature": "diagonal"}, "curvature"),
        ({"damping": -1.0}, "damping"),
        ({"svd_tol": 1.0}, "svd_tol"),
        ({"modules": ["head", "body"]}, "exactly one"),
        ({"modules": ["nope"]}, "no submodule"),
        ({"modules": ["body"]}, "logits"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, match: str) -> None:
    model = _MLP(2, 2).double()
    x, y = _blobs(8, 2, 2, 0)
    loader = DataLoader(_Indexed(x, y), batch_size=4)
    with pytest.raises(ValueError, match=match):
        fi_util(model, loader, loader, **kwargs)


def test_loaders_without_labels_are_rejected() -> None:
    x, _ = _blobs(8, 2, 2, 0)
    with pytest.raises(ValueError, match="labels"):
        fi_util(nn.Linear(2, 2).double(), DataLoader(x, batch_size=4), DataLoader(x, batch_size=4))


def test_model_mode_is_restored_and_progress_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_pareto.influence.local import _whitening

    model, train, val, _ = _problem(3, 2, nn.Linear(3, 2), seed=10)
    model.train()
    bars: list[tuple[str, list[int]]] = []

    def recording_bar(iterable, *, desc: str, enabled: bool | None):
        items = list(iterable)
        bars.append((desc, items))
        assert enabled is True
        return iter(items)

    monkeypatch.setattr(_whitening, "progress_bar", recording_bar)
    timings = InfluenceTimings()
    fi_util(model, train, val, progress=True, timings=timings)
    assert model.training
    ((desc, starts),) = bars  # one bar over the scored chunks, covering all 30 samples from 0
    assert desc == "FI^util: scores" and starts[0] == 0 and starts[-1] < 30
    for phase in ("collect", "factors", "eigen", "queries", "precondition", "scores"):
        assert getattr(timings, phase) > 0.0, phase
    assert timings.correction == timings.metric == timings.pairs == timings.forest == 0.0
    assert math.isfinite(timings.total)
