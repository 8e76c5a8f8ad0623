"""K-FAC factors accumulated from a model's own training steps (``FactorAccumulator``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _influence_reference import digits, loader, mlp, single_thread  # noqa: F401
from torch import Tensor

from lightning_pareto.influence import category_influence, fit_curvature
from lightning_pareto.influence.kfac.accumulator import FactorAccumulator

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits256() -> tuple[Tensor, Tensor]:
    x, y = digits(torch.float64)
    return x[:256], y[:256]


def _train_with(accumulator: FactorAccumulator, model, x: Tensor, y: Tensor, lr: float = 0.0) -> None:
    """Mean-loss SGD steps over batches of 64, a no-grad (validation) forward between steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with accumulator:
        for start in range(0, len(y), 64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[start : start + 64]), y[start : start + 64]).backward()
            optimizer.step()
            with torch.no_grad():
                model(x[:10])  # dropped: no gradient reached its outputs


def test_factors_from_training_steps_are_those_of_a_factor_pass(digits256) -> None:
    x, y = digits256
    model = mlp().double()
    accumulator = FactorAccumulator(model)
    _train_with(accumulator, model, x, y)  # lr 0: every step sees the same model
    assert accumulator.samples == len(y) and not accumulator.attached
    factors = accumulator.factors()
    # Hand-written head factors: A = E[[h, 1][h, 1]^T], G = E[(p - e_y)(p - e_y)^T].
    with torch.no_grad():
        hidden = torch.relu(model[0](x))
        residual = torch.softmax(model[2](hidden), dim=1) - F.one_hot(y, 10).double()
    ones = torch.cat([hidden, torch.ones(len(y), 1, dtype=x.dtype)], dim=1)
    torch.testing.assert_close(factors["2"][0], ones.T @ ones / len(y), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(factors["2"][1], residual.T @ residual / len(y), rtol=1e-10, atol=1e-12)
    assert accumulator.samples == 0  # factors() consumed the sums


def test_in_training_curvature_scores_equal_the_fitted_ones_for_a_fixed_model(digits256) -> None:
    x, y = digits256
    model = mlp().double()
    accumulator = FactorAccumulator(model)
    _train_with(accumulator, model, x, y)
    data = loader(x, y)
    in_training = accumulator.curvature(data, damping=0.05, correction_samples=None)
    fitted = fit_curvature(model, data, curvature="ekfac", damping=0.05, correction_samples=None)
    val = loader(x[:64], y[:64])
    torch.testing.assert_close(
        category_influence(model, data, val, 10, curvature=in_training),
        category_influence(model, data, val, 10, curvature=fitted),
        rtol=1e-6,
        atol=1e-9,
    )


def test_nothing_recorded_and_bad_curvatures_are_errors(digits256) -> None:
    model = mlp().double()
    accumulator = FactorAccumulator(model)
    with pytest.raises(ValueError, match="kfac"):
        accumulator.curvature([], curvature="exact")
    with pytest.raises(ValueError, match="no samples"):
        accumulator.factors()
