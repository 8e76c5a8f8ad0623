"""Run the ``Example:`` sections of the foundation modules' docstrings."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "lightning_pareto.weighting",
    "lightning_pareto.module",
    "lightning_pareto.data.indexed",
    "lightning_pareto.data._noise",
    "lightning_pareto.callbacks.monitor",
    "lightning_pareto.callbacks._guard",
    "lightning_pareto.callbacks._targets",
    "lightning_pareto.callbacks.upweighting",
    "lightning_pareto.experiments.compare",
    "lightning_pareto.influence.kfac.category",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
