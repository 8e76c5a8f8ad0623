"""A deterministic toy retrain for the removal check's bookkeeping (importable by spawned worker processes)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 3


def blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three overlapping 2-D blobs: 90 training and 150 test samples."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 1.5], [-1.5, -1.0], [1.5, -1.0]])
    y = torch.arange(240) % NUM_CLASSES
    x = centres[y] + torch.randn(240, 2, generator=generator)
    return x[:90], y[:90], x[90:], y[90:]


def train_logistic(keep: np.ndarray, seed: int) -> nn.Linear:
    """Softmax regression on the kept training samples, full-batch L-BFGS from the initialisation ``seed`` gives."""
    x, y, _, _ = blobs()
    torch.manual_seed(seed)
    model = nn.Linear(2, NUM_CLASSES)
    index = torch.as_tensor(np.asarray(keep), dtype=torch.long)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[index]), y[index]) + 1e-2 * model.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def retrain_accuracy(keep: np.ndarray, seed: int) -> np.ndarray:
    """Per-class test accuracy of :func:`train_logistic`."""
    _, _, x_test, y_test = blobs()
    with torch.no_grad():
        predicted = train_logistic(keep, seed)(x_test).argmax(dim=1)
    return np.array([(predicted[y_test == c] == c).double().mean().item() for c in range(NUM_CLASSES)])
