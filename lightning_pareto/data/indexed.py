"""``IndexedDataset``: make every sample carry its dataset index."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Wraps a map-style dataset of ``(x, y)`` samples so item ``i`` is ``(x, y, i)``.

    The default collate turns the indices into an int64 tensor, so batches are ``(x, y, index)``:
    what the sample-weight contract and the influence engine need.

    Args:
        dataset: Any map-style dataset whose items are ``(x, y)`` pairs.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = IndexedDataset(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 0])))
        >>> data[2]
        (tensor([0., 0.]), tensor(0), 2)
    """

    def __init__(self, dataset: Dataset) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"dataset must be a map-style dataset with __getitem__ and __len__, got {type(dataset).__name__}."
            )
        if isinstance(dataset, IndexedDataset):
            raise TypeError("dataset is already an IndexedDataset; wrap the underlying dataset once.")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        item = self.dataset[index]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(
                f"IndexedDataset expects (x, y) samples, got {type(item).__name__}"
                + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
                + f" at index {index}."
            )
        return item[0], item[1], int(index)
