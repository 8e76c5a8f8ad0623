"""Category-wise influence and IV against independent dense references, approximations and retraining."""

from __future__ import annotations

import statistics

import pytest
import torch
from _influence_reference import (
    cnn,
    digits,
    loader,
    mlp,
    reference_influence,
    relative_error,
    spearman,
    train,
)

from lightning_pareto.influence import category_influence, influence_value


@pytest.fixture(scope="module")
def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    return digits()


@pytest.mark.parametrize("fisher", ["ggn", "empirical"])
@pytest.mark.parametrize("make_model", [mlp, cnn], ids=["mlp", "cnn"])
def test_exact_matches_dense_solve(digits_data, make_model, fisher) -> None:
    x, y = digits_data
    x, y = x.double(), y
    model = train(make_model().double(), x[:400], y[:400], steps=60)
    train_set, val_set = (x[:300], y[:300]), (x[300:450], y[300:450])
    expected = reference_influence(model, train_set, val_set, 10, damping=0.05, fisher=fisher)
    actual = category_influence(
        model, loader(*train_set, batch_size=64), loader(*val_set, batch_size=64), 10,
        curvature="exact", damping=0.05, fisher=fisher,
    )  # fmt: skip
    assert actual.dtype == torch.float32 and actual.shape == (300, 10)
    assert relative_error(actual, expected) < 1e-6
