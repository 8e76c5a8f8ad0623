"""Choosing removals: top-b with ties by index and non-finite last, budgets, corruption precision."""

from __future__ import annotations

import pytest
import torch

from lightning_pareto.trimming import (
    corruption_precision,
    select_removals,
)


def test_select_removals_takes_the_largest_with_ties_by_index_and_non_finite_last() -> None:
    assert select_removals(torch.tensor([0.5, 2.0, 1.0, 2.0, -1.0, 0.7]), 3).tolist() == [1, 3, 2]
    assert select_removals(torch.zeros(4), 0).tolist() == []
    with pytest.warns(RuntimeWarning, match="1 of 6 trimming scores are not finite"):
        assert select_removals(torch.tensor([0.5, 2.0, float("nan"), 2.0, -1.0, 0.7]), 5).tolist() == [1, 3, 5, 0, 4]


@pytest.mark.parametrize(
    ("budget", "error", "message"),
    [(-1, ValueError, "budget must be >= 0"), (6, ValueError, "whole training set"), (2.0, TypeError, "int")],
)
def test_select_removals_rejects_bad_budgets(budget: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        select_removals(torch.zeros(6), budget)  # type: ignore[arg-type]


def test_corruption_precision_counts_flipped_and_noisy_samples() -> None:
    class Corrupted:
        flipped_indices = torch.tensor([1, 4, 7])
        noisy_feature_indices = torch.tensor([2])

    precision = corruption_precision(torch.tensor([1, 2, 3, 4]), Corrupted())
    assert precision == {"flipped_precision": 0.5, "noisy_precision": 0.25}
    assert corruption_precision(torch.tensor([1]), object()) == {}
