"""The influence code's one batch unpacker."""

from __future__ import annotations

import pytest
import torch

from lightning_pareto.influence.batches import unpack_batch


def test_two_and_three_element_batches_split_as_they_are() -> None:
    x, y, index = torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([4, 7])
    assert unpack_batch((x, y)) == (x, y, None)
    parts = unpack_batch([x, y, index])
    assert parts[0] is x and parts[1] is y and parts[2] is index


def test_unlabelled_batches_only_where_allowed() -> None:
    x = torch.zeros(2, 3)
    assert unpack_batch(x, labels=False) == (x, None, None)
    assert unpack_batch((x,), labels=False) == (x, None, None)
    with pytest.raises(TypeError, match="IndexedDataset"):
        unpack_batch(x)
    with pytest.raises(TypeError, match="got 1 elements"):
        unpack_batch((x,))
    with pytest.raises(TypeError, match="got 4 elements"):
        unpack_batch((x, x, x, x), labels=False)
