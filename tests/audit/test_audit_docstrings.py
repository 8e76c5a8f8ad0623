"""Run the ``Example:`` sections of the audit modules' docstrings."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "lightning_pareto.audit.suspects",
    "lightning_pareto.audit.table",
    "lightning_pareto.audit.removal",
    "lightning_pareto.audit.quality",
    "lightning_pareto.audit.report",
    "lightning_pareto.callbacks.audit",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
