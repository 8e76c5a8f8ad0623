"""Whole data sets as tensors and the accuracy of a network on them (trimming, active learning)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_pareto._modes import eval_mode

__all__ = ["accuracy", "stack"]


def stack(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """All ``(x, y)`` of a map-style dataset as two tensors (one batch of the default collate)."""
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset), shuffle=False)))
    return batch[0], batch[1]


def accuracy(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096) -> float:
    """Share of ``x`` that ``net`` classifies as ``y``, in eval mode (modes restored), in batches on ``net``'s device."""
    device = next(net.parameters()).device
    correct = 0
    with eval_mode(net), torch.no_grad():
        for start in range(0, len(x), batch_size):
            predicted = net(x[start : start + batch_size].to(device)).argmax(dim=-1).cpu()
            correct += int((predicted == y[start : start + batch_size].cpu()).sum())
    return correct / len(x)
