"""Collectives over the process group that Lightning's strategy set up (``torch.distributed``).

Nothing here creates a process group: under ``Trainer(strategy="ddp" | "ddp_spawn", ...)`` Lightning
initialises ``torch.distributed`` on every rank, and these helpers use it; in a single process (or a
group of one) every helper is the identity, so the same code runs unchanged without distribution.
Every rank must make the same calls in the same order, as with any collective.

Tensors are moved to the device the backend needs (CUDA for NCCL, CPU otherwise) and back.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the group (1 without distribution)."""
    return dist.get_world_size() if is_distributed() else 1


def global_rank() -> int:
    """This process's rank in the group (0 without distribution)."""
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sums a tensor over all processes.

    Args:
        tensor: Any shape and floating or integer dtype, on any device; the same shape on every rank.

    Returns:
        A tensor of the same shape, dtype and device holding the sum over ranks (the input itself,
        untouched, without distribution).
    """
    if not is_distributed():
        return tensor
    buffer = tensor.detach().to(_collective_device(), copy=True).contiguous()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(tensor.device)


def merge_rows(rows: Tensor, filled: Tensor) -> Tensor:
    """Joins row blocks that each process filled for its shard into the full matrix on every rank.

    Args:
        rows: Tensor of shape ``(n, ...)``; rows this rank computed hold values, the others anything
            (NaN is fine).
        filled: Bool tensor of shape ``(n,)``: which rows this rank computed.

    Returns:
        Tensor like ``rows``: each row averaged over the ranks that filled it (shards that overlap,
        such as a sampler's padding, computed the same row), NaN where no rank filled it. Without
        distribution, ``rows`` with unfilled rows set to NaN.
    """
    mask = filled.reshape(-1, *([1] * (rows.dim() - 1))).to(rows.device)
    total = all_reduce_sum(torch.where(mask, rows, torch.zeros((), dtype=rows.dtype, device=rows.device)))
    count = all_reduce_sum(filled.to(device=rows.device, dtype=rows.dtype))
    count = count.reshape(mask.shape)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full((), float("nan"), dtype=rows.dtype))


def broadcast_tensor(tensor: Tensor, source: int = 0) -> Tensor:
    """Every rank gets ``source``'s tensor.

    Args:
        tensor: On every rank a tensor of the same shape and dtype (the non-source values are ignored).
        source: Rank whose tensor is sent.

    Returns:
        The source's values on this rank's ``tensor.device`` (the input itself without distribution).
    """
    if not is_distributed():
        return tensor
    buffer = tensor.detach().to(_collective_device(), copy=True).contiguous()
    dist.broadcast(buffer, src=source)
    return buffer.to(tensor.device)


def broadcast_object(value: T, source: int = 0) -> T:
    """Every rank gets ``source``'s picklable object (for example a search result with NumPy arrays).

    Args:
        value: The object on the source rank; ignored (any placeholder) on the others.
        source: Rank whose object is sent.

    Returns:
        The source's object (``value`` itself without distribution).
    """
    if not is_distributed():
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=source, device=_collective_device())
    return box[0]


def _collective_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo (and others) work on CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
