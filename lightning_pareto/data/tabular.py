"""Real tabular data that ships with scikit-learn, and arrays or CSV files the user passes in."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

from lightning_pareto.data.base import ClassificationDataModule, LoadedData

__all__ = ["ArrayDataModule", "BreastCancerDataModule", "CSVDataModule", "DigitsDataModule", "WineDataModule"]


class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's 1,797 handwritten 8x8 digits, 64 features scaled to ``[0, 1]``; classes ``"0"``-``"9"``.

    Inputs are flat ``(b, 64)``; image networks reshape them to ``(b, 1, 8, 8)``.

    Args:
        **kwargs: :class:`ClassificationDataModule` arguments (``batch_size``, ``val_size``,
            ``test_size``, ``label_noise``, ``seed``, ...). ``standardize`` defaults to ``False``.
    """

    def __init__(self, *, standardize: bool = False, **kwargs: Any) -> None:
        super().__init__(standardize=standardize, **kwargs)

    def load(self) -> LoadedData:
        return _from_sklearn(load_digits(), scale=1 / 16)  # pixel intensities are 0..16


def _from_sklearn(bunch: Any, scale: float = 1.0) -> LoadedData:
    """A scikit-learn data set bunch as float32 features, int64 targets and string class names."""
    features = (bunch.data * scale).astype(np.float32)
    return LoadedData(features, bunch.target.astype(np.int64), [str(n) for n in bunch.target_names])


class BreastCancerDataModule(ClassificationDataModule):
    """scikit-learn's Wisconsin breast-cancer set: 569 samples, 30 features, ``malignant``/``benign``.

    Args:
        **kwargs: :class:`ClassificationDataModule` arguments (features are standardised by default).
    """

    def load(self) -> LoadedData:
        return _from_sklearn(load_breast_cancer())


class WineDataModule(ClassificationDataModule):
    """scikit-learn's wine set: 178 samples, 13 features, 3 cultivars ``class_0``-``class_2``.

    Args:
        **kwargs: :class:`ClassificationDataModule` arguments (features are standardised by default).
    """

    def load(self) -> LoadedData:
        return _from_sklearn(load_wine())


def _class_names(num_classes: int, class_names: list[str] | None) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} entries but the labels have {num_classes} classes.")
    return [str(n) for n in class_names]


class ArrayDataModule(ClassificationDataModule):
    """Features and integer labels you already hold in memory.

    Args:
        features: Array-like of shape ``(N, ...)`` (numpy array, tensor or nested lists).
        targets: Integer labels of shape ``(N,)`` in ``[0, K)``.
        class_names: One name per class (default ``"0"`` ... ``"K-1"``); ``K`` is ``len(class_names)``
            if given, else ``max(targets) + 1``.
        **kwargs: :class:`ClassificationDataModule` arguments.
    """

    def __init__(self, features: Any, targets: Any, class_names: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features = np.asarray(features, dtype=np.float32)
        targets = np.asarray(targets)
        if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
            raise ValueError(
                f"targets must be a 1-D array of integer labels, got shape {targets.shape} and dtype {targets.dtype}."
            )
        if targets.size and targets.min() < 0:
            raise ValueError(f"targets must be class indices >= 0, got a minimum of {targets.min()}.")
        num_classes = len(class_names) if class_names is not None else int(targets.max()) + 1
        if targets.max() >= num_classes:
            raise ValueError(f"targets go up to {targets.max()} but class_names names only {num_classes} classes.")
        self.targets = targets.astype(np.int64)
        self._names = _class_names(num_classes, class_names)

    def load(self) -> LoadedData:
        return LoadedData(self.features, self.targets, self._names)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


class CSVDataModule(ClassificationDataModule):
    """A CSV file with a header row: numeric feature columns and one label column.

    Labels may be integers (class indices) or strings (classes named and numbered in sorted order).

    Args:
        path: The CSV file.
        target: Name of the label column.
        class_names: Names for integer labels (default ``"0"`` ... ``"K-1"``); not allowed with string labels.
        delimiter: Field separator.
        **kwargs: :class:`ClassificationDataModule` arguments.
    """

    def __init__(
        self, path: str | Path, target: str, class_names: list[str] | None = None, delimiter: str = ",", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.path, self.target, self.delimiter = Path(path), target, delimiter
        self._given_names = class_names
        if not self.path.is_file():
            raise FileNotFoundError(f"CSV file not found: {self.path.resolve()} (argument `path`).")

    def load(self) -> LoadedData:
        with self.path.open(newline="") as handle:
            rows = list(csv.reader(handle, delimiter=self.delimiter))
        if not rows:
            raise ValueError(f"{self.path} is empty.")
        header, body = rows[0], rows[1:]
        if self.target not in header:
            raise ValueError(f"target column {self.target!r} not in {self.path} (columns: {header}).")
        column = header.index(self.target)
        labels = [row[column] for row in body]
        try:
            features = np.array(
                [[float(v) for i, v in enumerate(row) if i != column] for row in body], dtype=np.float32
            )
        except ValueError as error:
            raise ValueError(f"{self.path}: every column except {self.target!r} must be numeric ({error}).") from None
        if all(_is_int(v) for v in labels):
            targets = np.array([int(v) for v in labels], dtype=np.int64)
            num_classes = int(targets.max()) + 1 if self._given_names is None else len(self._given_names)
            if targets.min() < 0 or targets.max() >= num_classes:
                raise ValueError(
                    f"{self.path}: labels must be in [0, {num_classes}), got {targets.min()}..{targets.max()}."
                )
            names = _class_names(num_classes, self._given_names)
        else:
            if self._given_names is not None:
                raise ValueError("class_names is only for integer labels; string labels name the classes themselves.")
            names = sorted(set(labels))
            number = {name: c for c, name in enumerate(names)}
            targets = np.array([number[v] for v in labels], dtype=np.int64)
        return LoadedData(features, targets, names)
