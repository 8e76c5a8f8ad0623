"""CIFAR-10 from a local copy in torchvision's on-disk format (no download, no torchvision needed)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from lightning_pareto.data.base import ClassificationDataModule, LoadedData

__all__ = ["CIFAR10DataModule"]

_FOLDER = "cifar-10-batches-py"
_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
# Per-channel mean and standard deviation of the CIFAR-10 training images (in [0, 1]).
_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32).reshape(1, 3, 1, 1)
_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32).reshape(1, 3, 1, 1)


def _unpickle(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        entry = pickle.load(handle, encoding="latin1")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _read_batches(folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    entries = [_unpickle(folder / name) for name in names]
    images = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(e["labels"], dtype=np.int64) for e in entries])
    return images, labels


class CIFAR10DataModule(ClassificationDataModule):
    """CIFAR-10 read from the ``cifar-10-batches-py`` pickles that torchvision downloads.

    Images are ``(b, 3, 32, 32)`` float32, normalised per channel with the usual CIFAR-10 statistics.
    The validation split comes from the 50,000 training images; the test split is ``test_batch``
    (``test_size`` subsamples it). Nothing is downloaded.

    Args:
        root: Folder holding ``cifar-10-batches-py/`` (as ``torchvision.datasets.CIFAR10(root)``
            expects) or that folder itself.
        val_size: See :class:`ClassificationDataModule` (default 5,000 images).
        test_size: Test images kept from ``test_batch`` (``None``: all 10,000).
        train_size: Training images kept (``None``: all that remain); a subset trains much faster on CPU.
        **kwargs: The other :class:`ClassificationDataModule` arguments.

    Raises:
        FileNotFoundError: If the pickles are not under ``root``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        val_size: int | float = 5000,
        test_size: int | float | None = None,
        train_size: int | float | None = None,
        standardize: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            val_size=val_size, test_size=test_size, train_size=train_size, standardize=standardize, **kwargs
        )
        root = Path(root).expanduser()
        self.folder = root if root.name == _FOLDER else root / _FOLDER
        missing = [n for n in (*_TRAIN_FILES, "test_batch", "batches.meta") if not (self.folder / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"CIFAR-10 not found under {self.folder.resolve()} (argument `root`): missing {', '.join(missing)}. "
                "Put the extracted cifar-10-python.tar.gz there (the folder torchvision.datasets.CIFAR10(root, "
                "download=True) creates); nothing is downloaded at run time."
            )

    def load(self) -> LoadedData:
        train_images, train_labels = _read_batches(self.folder, _TRAIN_FILES)
        test_images, test_labels = _read_batches(self.folder, ("test_batch",))
        names = [str(n) for n in _unpickle(self.folder / "batches.meta")["label_names"]]
        return LoadedData(
            (train_images / np.float32(255.0) - _MEAN) / _STD,
            train_labels,
            names,
            test=((test_images / np.float32(255.0) - _MEAN) / _STD, test_labels),
        )
