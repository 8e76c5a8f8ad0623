"""Acquisition strategies: closed-form scores on hand-made probabilities and models with known outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto.active import (
    BALD,
    STRATEGIES,
    EntropySampling,
    FIActive,
    InfluenceValueSampling,
    MarginSampling,
    RandomSampling,
    bald_scores,
    entropy_scores,
    make_strategy,
    margin_scores,
)
from lightning_pareto.influence import fi_active
from lightning_pareto.nets import MLP, LogisticRegression


def _h(*p: float) -> float:
    """Entropy in nats, written out."""
    return -sum(q * math.log(q) for q in p if q > 0)


def test_entropy_closed_forms():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.7, 0.2, 0.1, 0.0]])
    expected = [math.log(4), 0.0, math.log(2), _h(0.7, 0.2, 0.1)]
    np.testing.assert_allclose(entropy_scores(probs.double()).numpy(), expected, atol=1e-12)


def test_margin_closed_forms():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [0.1, 0.05, 0.85], [1.0, 0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(margin_scores(probs).numpy(), [-0.5, 0.0, -0.75, -1.0], atol=1e-12)


def test_bald_closed_forms_separate_disagreement_from_ambiguity():
    probs = torch.tensor(
        [
            [[1.0, 0.0], [0.5, 0.5], [0.9, 0.1], [0.8, 0.2]],  # MC sample 1
            [[0.0, 1.0], [0.5, 0.5], [0.1, 0.9], [0.8, 0.2]],  # MC sample 2
        ],
        dtype=torch.float64,
    )
    expected = [
        math.log(2),  # confident samples that disagree: all of the entropy is epistemic
        0.0,  # both samples unsure in the same way: entropy log 2 but nothing to learn about theta
        math.log(2) - _h(0.9, 0.1),
        0.0,
    ]
    np.testing.assert_allclose(bald_scores(probs).numpy(), expected, atol=1e-12)
    assert entropy_scores(probs.mean(0))[1] == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="samples, N, K"):
        bald_scores(probs[0])


class _LogitsAreInputs(nn.Module):
    """A model whose logits are its inputs (an identity Linear), so probabilities are known in closed form."""

    def __init__(self, k: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(k, k)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(k))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(x))


def _pool(x: torch.Tensor, batch_size: int = 3) -> DataLoader:
    return DataLoader(TensorDataset(x), batch_size=batch_size)


def test_entropy_and_margin_strategies_score_the_models_softmax():
    logits = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [1.0, 1.0, -2.0], [2.0, 0.5, 0.0], [0.0, 3.0, 2.9]])
    model = _LogitsAreInputs(3)
    probs = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    entropy = EntropySampling().score(model, _pool(logits), None)
    np.testing.assert_allclose(entropy.numpy(), [_h(*row) for row in probs], rtol=1e-6)
    margin = MarginSampling().score(model, _pool(logits), None)
    top = np.sort(probs, 1)[:, ::-1]
    np.testing.assert_allclose(margin.numpy(), top[:, 1] - top[:, 0], rtol=1e-6, atol=1e-7)
    assert int(entropy.argmax()) == 0  # the uniform prediction
    assert torch.nonzero(margin == margin.max()).flatten().tolist() == [0, 2]  # the two exact top-two ties


def test_bald_is_zero_without_active_dropout_and_refuses_models_without_dropout():
    with pytest.raises(ValueError, match="dropout"):
        BALD().check(LogisticRegression(3, 3))
    with pytest.raises(ValueError, match="dropout"):
        BALD().check(_LogitsAreInputs(3, dropout=0.0))
    with pytest.raises(ValueError, match="samples"):
        BALD(samples=1)
    with pytest.raises(ValueError, match="input_dropout"):
        BALD(input_dropout=1.0)


def test_bald_input_dropout_makes_softmax_regression_stochastic():
    torch.manual_seed(0)
    model = LogisticRegression(4, 3).eval()
    x = torch.randn(12, 4)
    BALD(input_dropout=0.3).check(model)
    scores = BALD(samples=10, input_dropout=0.3).score(model, _pool(x), None, seed=0)
    assert bool(((scores >= -1e-12) & (scores <= math.log(3))).all()) and float(scores.min()) > 0
    # p = 0 on a model without dropout would be deterministic: every pass equal, mutual information zero.
    deterministic = bald_scores(torch.stack([model(x).softmax(-1).double().detach()] * 10))
    torch.testing.assert_close(deterministic, torch.zeros(12, dtype=torch.float64))


def test_bald_strategy_seeded_mc_dropout_leaves_model_and_global_rng_alone():
    torch.manual_seed(0)
    model = MLP(4, 3, hidden=(16,), dropout=0.5).eval()
    x = torch.randn(10, 4)
    state = torch.get_rng_state()
    first = BALD(samples=8).score(model, _pool(x), None, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert not model.training and not any(m.training for m in model.modules())
    torch.testing.assert_close(first, BALD(samples=8).score(model, _pool(x), None, seed=1))
    assert not torch.equal(first, BALD(samples=8).score(model, _pool(x), None, seed=2))
    assert bool(((first >= -1e-12) & (first <= math.log(3) + 1e-12)).all()) and float(first.max()) > 0


class _AlternatingDropout(nn.Dropout):
    """Dropout (p=0.5) whose masks alternate between keep-all and drop-all, so MC passes are known exactly."""

    def __init__(self) -> None:
        super().__init__(p=0.5)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        self.calls += 1
        return x / (1 - self.p) if self.calls % 2 else torch.zeros_like(x)


def test_bald_strategy_equals_mutual_information_of_its_dropout_passes():
    model = _LogitsAreInputs(2)
    model.drop = _AlternatingDropout()
    x = torch.tensor([[2.0, -2.0], [0.0, 0.0]])
    scores = BALD(samples=6).score(model, _pool(x), None)
    # Passes alternate logits 2x (dropout scaling 1 / (1 - p)) and 0 (uniform); x = 0 is uniform in both.
    sharp = 1 / (1 + math.exp(-8.0))
    mean = [(sharp + 0.5) / 2, (1 - sharp + 0.5) / 2]
    expected = _h(*mean) - (_h(sharp, 1 - sharp) + _h(0.5, 0.5)) / 2
    np.testing.assert_allclose(scores.numpy(), [expected, 0.0], rtol=1e-6, atol=1e-12)
    assert model.drop.calls == 6  # dropout was switched on for the MC passes only
    EntropySampling().score(model, _pool(x), None)
    assert model.drop.calls == 6


def test_random_strategy_is_seeded_uniform():
    x = torch.zeros(50, 2)
    scores = RandomSampling().score(LogisticRegression(2, 2), _pool(x, 7), None, seed=5)
    torch.testing.assert_close(scores, torch.rand(50, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    assert not torch.equal(scores, RandomSampling().score(LogisticRegression(2, 2), _pool(x), None, seed=6))


def _blobs(seed: int, n: int, d: int = 3, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    return torch.randn(n, d, generator=generator) + 1.5 * nn.functional.one_hot(y, d).float(), y


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def test_fi_strategy_is_fi_active_at_the_papers_settings():
    torch.manual_seed(0)
    x, y = _blobs(0, 40)
    model = _fit(LogisticRegression(3, 3), x[:15], y[:15])
    labeled = DataLoader(TensorDataset(x[:15], y[:15], torch.arange(15)), batch_size=4)
    scores = FIActive().score(model, _pool(x[15:]), labeled, seed=0)
    direct = fi_active(model, labeled, _pool(x[15:]), curvature="exact", quantile_range=(0.1, 0.9))
    torch.testing.assert_close(scores, direct)
    assert model.training  # modes restored


def test_iv_strategy_carries_dense_iv_to_the_pool_through_the_tree():
    torch.manual_seed(0)
    x, y = _blobs(1, 36)
    x_lab, y_lab, x_val, y_val = x[:16], y[:16], x[16:], y[16:]
    model = _fit(LogisticRegression(3, 3), x_lab, y_lab).eval()

    # Dense reference: IV_i = g_V^T (H + lambda I)^{-1} g_i, H the Hessian (= GGN) of the mean training loss.
    params = {name: p.detach().double() for name, p in model.named_parameters()}
    shapes = {name: p.shape for name, p in params.items()}
    theta = torch.cat([p.reshape(-1) for p in params.values()])
    model64 = LogisticRegression(3, 3).double()

    def loss(flat: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        split, offset = {}, 0
        for name, shape in shapes.items():
            split[name] = flat[offset : offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        return nn.functional.cross_entropy(functional_call(model64, split, (xs.double(),)), ys)

    damping = 0.1
    curvature = hessian(loss)(theta, x_lab, y_lab) + damping * torch.eye(len(theta), dtype=torch.float64)
    query = torch.linalg.solve(curvature, grad(loss)(theta, x_val, y_val))
    iv = torch.stack([query @ grad(loss)(theta, x_lab[i : i + 1], y_lab[i : i + 1]) for i in range(16)])

    labeled = DataLoader(TensorDataset(x_lab, y_lab, torch.arange(16)), batch_size=5)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=8)
    strategy = InfluenceValueSampling(curvature="exact", damping=damping, max_depth=None)
    # A fully grown tree on distinct inputs reproduces the labelled samples' IV exactly when the pool is them.
    scores = strategy.score(model, _pool(x_lab[torch.arange(15, -1, -1)]), labeled, val_loader=val)
    np.testing.assert_allclose(scores.numpy(), iv.flip(0).numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="validation"):
        strategy.score(model, _pool(x_lab), labeled)
    with pytest.raises(ValueError, match="max_depth"):
        InfluenceValueSampling(max_depth=0)


def test_registry_and_factory():
    assert set(STRATEGIES) == {"fi", "fi_approx", "iv", "bald", "entropy", "margin", "random"}
    assert all(cls.name == name for name, cls in STRATEGIES.items())
    assert make_strategy("bald", samples=5).samples == 5
    assert make_strategy("fi_approx", rank=3, alpha=0.5).alpha == 0.5
    with pytest.raises(ValueError, match="unknown strategy 'coreset'"):
        make_strategy("coreset")
    with pytest.raises(TypeError, match="strategy 'entropy'"):
        make_strategy("entropy", samples=3)
