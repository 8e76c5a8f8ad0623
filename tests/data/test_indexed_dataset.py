"""IndexedDataset: items and batches carry their dataset index."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto import IndexedDataset


def test_batches_carry_int64_indices_matching_the_rows() -> None:
    x, y = torch.randn(10, 3), torch.arange(10) % 3
    loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=4, shuffle=True)
    seen = []
    for bx, by, index in loader:
        assert index.dtype == torch.int64
        assert torch.equal(bx, x[index]) and torch.equal(by, y[index])
        seen += index.tolist()
    assert sorted(seen) == list(range(10))


def test_rejects_samples_that_are_not_pairs_and_double_wrapping() -> None:
    data = IndexedDataset(TensorDataset(torch.zeros(2, 1)))
    with pytest.raises(TypeError, match=r"expects \(x, y\) samples, got tuple of length 1"):
        data[0]
    with pytest.raises(TypeError, match="already an IndexedDataset"):
        IndexedDataset(data)
    with pytest.raises(TypeError, match="map-style"):
        IndexedDataset(iter([1, 2]))  # type: ignore[arg-type]
