"""training_mode: each submodule gets its own flag back, also when the block raises."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_pareto.callbacks._modes import training_mode


def test_every_submodule_gets_its_own_flag_back_after_an_error() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.BatchNorm1d(2))
    model[2].eval()  # a frozen part in eval mode inside a model in training mode
    with pytest.raises(RuntimeError), training_mode(model, False):
        assert not any(m.training for m in model.modules())
        raise RuntimeError
    assert [m.training for m in model.modules()] == [True, True, True, False]
    model.eval()
    with training_mode(model, True):
        assert all(m.training for m in model.modules())
    assert not any(m.training for m in model.modules())
