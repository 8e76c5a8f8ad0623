"""Offline, seeded datamodules whose batches carry sample indices: ``(x, y, index)``."""

from lightning_pareto.data.base import ClassificationDataModule, LoadedData
from lightning_pareto.data.cifar import CIFAR10DataModule
from lightning_pareto.data.indexed import IndexedDataset
from lightning_pareto.data.mnist import MNIST5kDataModule
from lightning_pareto.data.synthetic import CircularDataModule, GaussiansDataModule, MoonsDataModule
from lightning_pareto.data.tabular import (
    ArrayDataModule,
    BreastCancerDataModule,
    CSVDataModule,
    DigitsDataModule,
    WineDataModule,
)

__all__ = [
    "ArrayDataModule",
    "BreastCancerDataModule",
    "CIFAR10DataModule",
    "CSVDataModule",
    "CircularDataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "GaussiansDataModule",
    "IndexedDataset",
    "LoadedData",
    "MNIST5kDataModule",
    "MoonsDataModule",
    "WineDataModule",
]
