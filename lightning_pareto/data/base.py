"""``ClassificationDataModule``: the seeded split / noise / loader logic shared by every datamodule."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto.data._noise import add_feature_noise, check_fraction, flip_labels
from lightning_pareto.data.indexed import IndexedDataset

__all__ = ["ClassificationDataModule", "LoadedData"]


@dataclass
class LoadedData:
    """What a datamodule's :meth:`ClassificationDataModule.load` returns.

    Attributes:
        features: Float32 array of shape ``(N, ...)``.
        targets: Int64 array of shape ``(N,)`` with labels in ``[0, len(class_names))``.
        class_names: One name per class.
        test: A fixed ``(features, targets)`` test split (e.g. CIFAR-10's ``test_batch``), or ``None``
            to carve the test split out of ``features``.
    """

    features: np.ndarray
    targets: np.ndarray
    class_names: list[str]
    test: tuple[np.ndarray, np.ndarray] | None = None


def _as_size(value: Any) -> Any:
    """A whole float of at least 1 is a count: config parsers may read ``150`` for an ``int | float`` as ``150.0``."""
    if isinstance(value, float) and value >= 1.0 and value.is_integer():
        return int(value)
    return value


def _check_size(name: str, value: float | int | None, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be an int (a count) or a float (a fraction), got {value!r}.")
    if isinstance(value, float) and not 0.0 < value < 1.0:
        raise ValueError(f"{name} as a fraction must be in (0, 1), got {value}.")
    if isinstance(value, int) and value < 1:
        raise ValueError(f"{name} as a count must be >= 1, got {value}.")


def _count(value: float | int, total: int) -> int:
    return int(round(value * total)) if isinstance(value, float) else value


class ClassificationDataModule(LightningDataModule):
    """Base of the package's datamodules: seeded splits, optional corruption, indexed loaders.

    ``setup()`` loads the data (:meth:`load`), splits it (stratified by class), standardises features
    with training statistics if asked, corrupts the training split (``feature_noise`` then
    ``label_noise``) and wraps every split in :class:`IndexedDataset`, so batches are
    ``(x, y, index)`` with ``index`` the position in that split. The same ``seed`` gives the same
    data, split and corruption.

    Args:
        batch_size: Batch size of every loader.
        val_size: Validation split: a fraction of all samples (float) or a count (int).
        test_size: Test split, the same way; with a fixed test set (CIFAR-10) it subsamples that set
            and ``None`` keeps all of it.
        train_size: Training split taken from what remains (``None`` keeps all of it).
        label_noise: Fraction of training labels flipped to a different class, in ``[0, 1)``.
        feature_noise: Fraction of training rows given white noise of variance 0.1 (the FI paper's appendix D.1),
            in ``[0, 1)``; applied after standardisation.
        standardize: Z-score every feature with training-split mean and standard deviation.
        seed: Seed of generation, splitting and corruption.
        num_workers: ``DataLoader`` workers.

    After ``setup()``: ``train_dataset``/``val_dataset``/``test_dataset`` (:class:`IndexedDataset`),
    ``train_arrays``/``val_arrays``/``test_arrays`` (``(X float32, y int64)`` tensors, training labels
    as corrupted), ``clean_train_targets``, ``flipped_indices`` and ``noisy_feature_indices`` (sorted
    int64 tensors of training positions). ``num_classes`` and ``class_names`` work before ``setup()``.
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        val_size: int | float = 0.2,
        test_size: int | float | None = 0.2,
        train_size: int | float | None = None,
        label_noise: float = 0.0,
        feature_noise: float = 0.0,
        standardize: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        val_size, test_size, train_size = _as_size(val_size), _as_size(test_size), _as_size(train_size)
        _check_size("val_size", val_size, allow_none=False)
        _check_size("test_size", test_size, allow_none=True)
        _check_size("train_size", train_size, allow_none=True)
        check_fraction("label_noise", label_noise)
        check_fraction("feature_noise", feature_noise)
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}.")
        self.batch_size = batch_size
        self.val_size = val_size
        self.test_size = test_size
        self.train_size = train_size
        self.label_noise = float(label_noise)
        self.feature_noise = float(feature_noise)
        self.standardize = standardize
        self.seed = seed
        self.num_workers = num_workers
        self._loaded: LoadedData | None = None
        self.train_dataset: IndexedDataset | None = None
        self.val_dataset: IndexedDataset | None = None
        self.test_dataset: IndexedDataset | None = None

    @abstractmethod
    def load(self) -> LoadedData:
        """Load or generate the whole data set (deterministic given ``self.seed``)."""

    def _data(self) -> LoadedData:
        if self._loaded is None:
            loaded = self.load()
            if loaded.features.shape[0] != loaded.targets.shape[0]:
                raise ValueError(
                    f"features have {loaded.features.shape[0]} rows but targets have {loaded.targets.shape[0]}."
                )
            self._loaded = loaded
        return self._loaded

    @property
    def num_classes(self) -> int:
        """Number of classes (loads the data if needed)."""
        return len(self._data().class_names)

    @property
    def class_names(self) -> list[str]:
        """One name per class (loads the data if needed)."""
        return list(self._data().class_names)

    def _split(self, y: np.ndarray, has_fixed_test: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stratified, seeded train / val / test positions into the loaded arrays."""
        total = y.shape[0]
        positions = np.arange(total)
        if has_fixed_test:
            test = np.empty(0, dtype=np.int64)
        else:
            if self.test_size is None:
                raise ValueError(f"{type(self).__name__} has no fixed test set; set test_size to a fraction or count.")
            positions, test = train_test_split(
                positions, test_size=_count(self.test_size, total), stratify=y, random_state=self.seed
            )
        rest, val = train_test_split(
            positions, test_size=_count(self.val_size, total), stratify=y[positions], random_state=self.seed + 1
        )
        if self.train_size is not None:
            wanted = _count(self.train_size, total)
            if wanted > rest.size:
                raise ValueError(f"train_size={self.train_size} asks for {wanted} samples but only {rest.size} remain.")
            if wanted < rest.size:
                rest, _ = train_test_split(rest, train_size=wanted, stratify=y[rest], random_state=self.seed + 2)
        return np.sort(rest), np.sort(val), np.sort(test)

    def setup(self, stage: str | None = None) -> None:
        """Split, standardise and corrupt the data; a no-op after the first call."""
        if self.train_dataset is not None:
            return
        data = self._data()
        x, y = data.features.astype(np.float32, copy=False), data.targets.astype(np.int64, copy=False)
        train, val, test = self._split(y, has_fixed_test=data.test is not None)
        splits = {"train": (x[train], y[train]), "val": (x[val], y[val])}
        if data.test is None:
            splits["test"] = (x[test], y[test])
        else:
            x_test, y_test = data.test[0].astype(np.float32, copy=False), data.test[1].astype(np.int64, copy=False)
            if self.test_size is not None and _count(self.test_size, y_test.shape[0]) < y_test.shape[0]:
                keep = _count(self.test_size, y_test.shape[0])
                _, kept = train_test_split(
                    np.arange(y_test.shape[0]), test_size=keep, stratify=y_test, random_state=self.seed + 3
                )
                kept = np.sort(kept)
                x_test, y_test = x_test[kept], y_test[kept]
            splits["test"] = (x_test, y_test)
        if self.standardize:
            mean = splits["train"][0].mean(axis=0)
            std = splits["train"][0].std(axis=0)
            std[std < 1e-8] = 1.0  # constant features (e.g. blank border pixels) stay constant
            splits = {k: ((v[0] - mean) / std, v[1]) for k, v in splits.items()}
        rng = np.random.default_rng(self.seed)
        x_train, y_train = splits["train"]
        x_train, noisy_rows = add_feature_noise(x_train, self.feature_noise, rng)
        y_noisy, flipped = self._corrupt_labels(y_train, rng)
        splits["train"] = (x_train, y_noisy)
        self.clean_train_targets = torch.from_numpy(y_train.copy())
        self.flipped_indices = torch.from_numpy(flipped)
        self.noisy_feature_indices = torch.from_numpy(noisy_rows)
        tensors = {
            k: (torch.from_numpy(np.ascontiguousarray(v[0], dtype=np.float32)), torch.from_numpy(v[1].copy()))
            for k, v in splits.items()
        }
        self.train_arrays, self.val_arrays, self.test_arrays = tensors["train"], tensors["val"], tensors["test"]
        self.train_dataset = IndexedDataset(TensorDataset(*self.train_arrays))
        self.val_dataset = IndexedDataset(TensorDataset(*self.val_arrays))
        self.test_dataset = IndexedDataset(TensorDataset(*self.test_arrays))

    def _corrupt_labels(self, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Training labels after ``label_noise``; subclasses with their own flip recipe override it."""
        return flip_labels(y, self.label_noise, self.num_classes, rng)

    def _loader(self, dataset: IndexedDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders are requested.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches ``(x, y, index)``."""
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches ``(x, y, index)`` in dataset order."""
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches ``(x, y, index)`` in dataset order."""
        return self._loader(self.test_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test batches, for ``Trainer.predict`` (``ClassifierModule`` returns class probabilities)."""
        return self._loader(self.test_dataset, shuffle=False)
