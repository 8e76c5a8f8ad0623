"""The ``Example:`` sections of the influence engine's docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["lightning_pareto.influence.capture", "lightning_pareto.influence.kfac.category", "lightning_pareto.influence.batches"])
def test_influence_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
