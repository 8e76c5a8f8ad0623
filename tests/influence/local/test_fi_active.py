"""FI^active's batched form against a literal pair-by-pair evaluation of eq. 4.1 / Algorithm 2.

From "Enhancing Prediction Performance through Influence Measure".
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto.influence.local import _functional as _fi_functional
from lightning_pareto.influence.local import fi_active, trimmed_mean
from lightning_pareto.nets import MLP, LogisticRegression


def _data(seed: int, n: int, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    y = torch.arange(n) % k
    return x + 0.8 * nn.functional.one_hot(y, d)[:, :d].float(), y


def _trained(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def _reference_pairs(
    predict: nn.Module, x_lab: torch.Tensor, y_lab: torch.Tensor, x_pool: torch.Tensor, damping: float | None
) -> torch.Tensor:
    """FI(z_u, z_j) for every pair, literally as Algorithm 2 lines 4-12 (dense J, H, G_z and pinv).

    ``predict`` maps the perturbed input to logits; its parameters are theta.
    """
    predict = copy.deepcopy(predict).double()
    names = [name for name, _ in predict.named_parameters()]
    shapes = [p.shape for _, p in predict.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in predict.named_parameters()]).double()

    def logits(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = theta[offset : offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        return functional_call(predict, params, (x[None],))[0]

    def loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -torch.log_softmax(logits(theta, x), -1)[y]

    def log_prob(theta: torch.Tensor, x: torch.Tensor, c: int) -> torch.Tensor:
        return torch.log_softmax(logits(theta, x), -1)[c]

    x_lab, x_pool = x_lab.double(), x_pool.double()
    n, p = len(x_lab), theta0.numel()
    hess = sum(hessian(loss)(theta0, x_lab[j], y_lab[j]) for j in range(n)) / n
    h_inv = (
        torch.linalg.pinv(hess, hermitian=True, rtol=1e-10)
        if damping is None
        else torch.linalg.inv(hess + damping * torch.eye(p, dtype=torch.float64))
    )
    num_classes = logits(theta0, x_lab[0]).shape[0]
    # Line 10 of Algorithm 2 does not depend on the pool point: J_j and G_j^+ once per labelled sample.
    jacobians, metric_pinvs = [], []
    for j in range(n):
        jac = jacrev(lambda x, label=y_lab[j]: grad(loss)(theta0, x, label))(x_lab[j])  # (p, d): d/dx d/dtheta L
        probs = torch.softmax(logits(theta0, x_lab[j]), -1)
        metric = torch.zeros(x_lab.shape[1], x_lab.shape[1], dtype=torch.float64)
        for c in range(num_classes):
            a_c = -(jac.T @ h_inv @ grad(log_prob)(theta0, x_lab[j], c)) / n + grad(log_prob, argnums=1)(
                theta0, x_lab[j], c
            )
            metric += probs[c] * torch.outer(a_c, a_c)
        jacobians.append(jac)
        # rtol 1e-12 on G = the cut-off 1e-6 on the singular values of diag(sqrt P) A used by fi_active.
        metric_pinvs.append(torch.linalg.pinv(metric, hermitian=True, rtol=1e-12))
    result = torch.empty(len(x_pool), n, dtype=torch.float64)
    for u in range(len(x_pool)):
        y_hat = int(logits(theta0, x_pool[u]).argmax())
        g_u = grad(loss)(theta0, x_pool[u], torch.tensor(y_hat))
        for j in range(n):
            v = -(jacobians[j].T @ h_inv @ g_u) / n
            result[u, j] = v @ metric_pinvs[j] @ v
    return result


def _assert_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    # FI values span many decades; compare relative to the largest.
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-5, atol=1e-9 * np.abs(expected).max())


def _numpy_trimmed_mean(pairs: torch.Tensor, low: float = 10, high: float = 90) -> np.ndarray:
    out = []
    for row in pairs.numpy():
        lo, hi = np.percentile(row, [low, high])
        out.append(row[(row >= lo) & (row <= hi)].mean())
    return np.array(out)


def _loaders(x_lab, y_lab, x_pool, batch_size=4):
    labeled = DataLoader(TensorDataset(x_lab, y_lab, torch.arange(len(x_lab))), batch_size=batch_size)
    pool = DataLoader(TensorDataset(x_pool), batch_size=batch_size)
    return labeled, pool


@pytest.fixture(scope="module")
def softmax_regression_case():
    torch.manual_seed(0)
    x, y = _data(0, 30, 4, 3)
    x_lab, y_lab, x_pool = x[:12], y[:12], x[12:]
    model = _trained(LogisticRegression(4, 3), x_lab, y_lab)
    reference = _reference_pairs(model.head, x_lab, y_lab, x_pool, damping=None)
    return model, x_lab, y_lab, x_pool, reference


def test_batched_fi_active_equals_pair_by_pair_eq_4_1(softmax_regression_case):
    model, x_lab, y_lab, x_pool, reference = softmax_regression_case
    labeled, pool = _loaders(x_lab, y_lab, x_pool)
    scores = fi_active(model, labeled, pool, curvature="exact", chunk_size=5)
    assert scores.shape == (len(x_pool),)
    _assert_close(scores, _numpy_trimmed_mean(reference))
    plain = fi_active(model, labeled, pool, curvature="exact", quantile_range=(0.0, 1.0))
    _assert_close(plain, reference.mean(1).numpy())


def test_last_layer_scope_of_a_network_matches_reference_on_penultimate_features():
    torch.manual_seed(1)
    x, y = _data(1, 26, 5, 3)
    x_lab, y_lab, x_pool = x[:10], y[:10], x[10:]
    model = _trained(MLP(5, 3, hidden=(6,)), x_lab, y_lab)
    with torch.no_grad():
        features_lab, features_pool = model.features(x_lab), model.features(x_pool)
    reference = _reference_pairs(model.head, features_lab, y_lab, features_pool, damping=0.05)
    labeled, pool = _loaders(x_lab, y_lab, x_pool)
    scores = fi_active(model, labeled, pool, curvature="exact", damping=0.05, modules=["head"])
    _assert_close(scores, _numpy_trimmed_mean(reference))


def test_whole_network_scope_matches_reference_and_cost_does_not_grow_with_pool(monkeypatch):
    torch.manual_seed(2)
    x, y = _data(2, 40, 3, 3)
    x_lab, y_lab = x[:8], y[:8]
    model = _trained(MLP(3, 3, hidden=(4,)), x_lab, y_lab)
    calls = {"jt": 0}
    original = _fi_functional.FunctionalOperator.jt

    def counting_jt(self, *args, **kwargs):
        calls["jt"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_fi_functional.FunctionalOperator, "jt", counting_jt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an MLP's Hessian may be indefinite; damping covers it
        reference = _reference_pairs(model, x_lab, y_lab, x[8:14], damping=0.5)
        counts = []
        for pool_size in (6, 32):
            calls["jt"] = 0
            labeled, pool = _loaders(x_lab, y_lab, x[8 : 8 + pool_size])
            scores = fi_active(model, labeled, pool, curvature="exact", damping=0.5)
            counts.append(calls["jt"])
            if pool_size == 6:
                _assert_close(scores, _numpy_trimmed_mean(reference))
    # J-products are per labelled sample only: a five times larger pool costs no extra double-backward.
    assert counts[0] == counts[1] > 0


def test_chunking_does_not_change_scores(softmax_regression_case):
    model, x_lab, y_lab, x_pool, _ = softmax_regression_case
    labeled, pool = _loaders(x_lab, y_lab, x_pool)
    one = fi_active(model, labeled, pool, curvature="exact", chunk_size=1)
    many = fi_active(model, labeled, DataLoader(TensorDataset(x_pool), batch_size=18), curvature="exact", chunk_size=64)
    torch.testing.assert_close(one, many)


def test_full_rank_kfsvd_is_exact(softmax_regression_case):
    model, x_lab, y_lab, x_pool, reference = softmax_regression_case
    labeled, pool = _loaders(x_lab, y_lab, x_pool)
    scores = fi_active(model, labeled, pool, curvature="exact", approx="kfsvd", rank=4)
    _assert_close(scores, _numpy_trimmed_mean(reference))


def test_subsample_scores_ranks_of_exact_values_and_forest_predicts_the_rest(softmax_regression_case):
    model, x_lab, y_lab, x_pool, reference = softmax_regression_case
    labeled, pool = _loaders(x_lab, y_lab, x_pool)
    exact = _numpy_trimmed_mean(reference)
    everything = fi_active(model, labeled, pool, curvature="exact", approx="subsample", alpha=1.0)
    np.testing.assert_allclose(everything.numpy(), (rankdata(exact) - 1) / (len(exact) - 1))

    part = fi_active(model, labeled, pool, curvature="exact", approx=["subsample"], alpha=0.5, seed=3)
    chosen = np.sort(np.random.default_rng(3).choice(len(exact), size=9, replace=False))
    np.testing.assert_allclose(part.numpy()[chosen], (rankdata(exact[chosen]) - 1) / 8)
    assert bool(((part >= 0) & (part <= 1)).all())
    again = fi_active(model, labeled, pool, curvature="exact", approx="subsample", alpha=0.5, seed=3)
    torch.testing.assert_close(part, again)


def test_trimmed_mean_matches_numpy_percentile_rule():
    generator = torch.Generator().manual_seed(4)
    values = torch.randint(0, 6, (7, 23), generator=generator).double()  # many ties at the cut points
    np.testing.assert_allclose(trimmed_mean(values).numpy(), _numpy_trimmed_mean(values))
    np.testing.assert_allclose(trimmed_mean(values, (0.25, 0.5)).numpy(), _numpy_trimmed_mean(values, 25, 50))
    # Eleven values: the 10th/90th percentiles are the 2nd and 10th smallest, so the outlier 1000 is cut.
    assert trimmed_mean(torch.tensor([[*range(1, 11), 1000.0]])).item() == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"quantile_range": (0.9, 0.1)}, "quantile_range"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"alpha": 0.5}, "alpha"),
        ({"approx": "svd"}, "approx"),
        ({"approx": "kfsvd"}, "rank"),
    ],
)
def test_bad_arguments_are_named(softmax_regression_case, kwargs, match):
    model, x_lab, y_lab, x_pool, _ = softmax_regression_case
    labeled, pool = _loaders(x_lab, y_lab, x_pool)
    with pytest.raises(ValueError, match=match):
        fi_active(model, labeled, pool, curvature="exact", **kwargs)
