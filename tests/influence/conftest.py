"""Fixtures shared by the influence tests: a trained float64 digits MLP and a truncation setting small enough for it."""

from __future__ import annotations

import pytest
import torch
from _influence_reference import digits, mlp, train
from torch import Tensor, nn

from lightning_pareto.influence.kfac import _eigensolver, eigen


@pytest.fixture(scope="module")
def digits400() -> tuple[Tensor, Tensor]:
    """The first 400 digits (float64 features, int64 labels)."""
    x, y = digits(torch.float64)
    return x[:400], y[:400]


@pytest.fixture(scope="module")
def trained_mlp(digits400) -> nn.Module:
    """The 64-32-10 float64 MLP trained for 80 steps on ``digits400``."""
    return train(mlp().double(), *digits400, steps=80)


@pytest.fixture
def truncate_wide_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Truncate the 65-input first layer of the digits MLP (not its 33-input head): sketched with 40 columns."""
    monkeypatch.setattr(eigen, "TRUNCATE_INPUTS_ABOVE", 48)
    monkeypatch.setattr(_eigensolver, "_START_RANK", 8)
    monkeypatch.setattr(_eigensolver, "_OVERSAMPLING", 4)
    monkeypatch.setattr(_eigensolver, "SKETCH_COLUMNS", 40)
    monkeypatch.setattr(_eigensolver, "SKETCH_OVERSAMPLING", 4)
    monkeypatch.setattr(eigen, "TRUNCATION_TOLERANCE", 1e-2)
