"""The batch unpacker of the influence code: ``(x, y)`` or ``(x, y, index)``; torch only, no Lightning.

Loaders over :class:`~lightning_pareto.data.IndexedDataset` yield ``(x, y, index)``; plain
``TensorDataset(x, y)`` loaders yield ``(x, y)``. Query pools may carry no labels at all.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["unpack_batch"]


def unpack_batch(batch: Any, *, labels: bool = True) -> tuple[Any, Any, Tensor | None]:
    """Split a batch into inputs, targets and dataset indices.

    Args:
        batch: ``(x, y, index)`` or ``(x, y)``; with ``labels=False`` also ``x`` alone (a tensor) or ``(x,)``.
        labels: Whether the batch must carry targets.

    Returns:
        ``(x, y, index)`` as the batch holds them, ``index`` ``None`` for two-element batches and
        ``y`` ``None`` for unlabelled ones.

    Raises:
        TypeError: For any other structure, naming the forms accepted.

    Example:
        >>> import torch
        >>> unpack_batch((torch.zeros(2, 3), torch.tensor([0, 1])))[2] is None
        True
        >>> unpack_batch(torch.zeros(2, 3), labels=False)[1] is None
        True
    """
    forms = "(x, y) or (x, y, index)" + (" tuples" if labels else " tuples, x or (x,)")
    if isinstance(batch, Tensor) and not labels:
        return batch, None, None
    if not isinstance(batch, (tuple, list)):
        raise TypeError(
            f"batches must be {forms}, got a {type(batch).__name__}; wrap the dataset in lightning_pareto.IndexedDataset"
        )
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    if len(batch) == 2:
        return batch[0], batch[1], None
    if len(batch) == 1 and not labels:
        return batch[0], None, None
    raise TypeError(f"batches must be {forms}, got {len(batch)} elements")
