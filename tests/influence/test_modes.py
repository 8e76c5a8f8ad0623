"""The engine's save/restore of the submodules' training flags."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_pareto.influence._modes import eval_mode


def test_each_flag_is_restored_as_it_was_also_after_an_exception() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Sequential(nn.BatchNorm1d(2)))
    model.train()
    model[2].eval()  # a frozen submodule inside a training model
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not any(module.training for module in model.modules())
        raise RuntimeError("boom")
    assert model.training and model[0].training and model[1].training
    assert not model[2].training and not model[2][0].training
