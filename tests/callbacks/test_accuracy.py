"""per_class_accuracy against hand-counted predictions."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto.callbacks._accuracy import per_class_accuracy


def test_per_class_accuracy_counts_each_class_and_marks_missing_ones() -> None:
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 3.0], [3.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1, 0])  # predictions 0, 1, 1, 0, 0; class 2 has no samples
    accuracy = per_class_accuracy(model, DataLoader(TensorDataset(x, y), batch_size=2), 3)
    np.testing.assert_allclose(accuracy[:2], [2 / 3, 1 / 2])
    assert math.isnan(accuracy[2])
