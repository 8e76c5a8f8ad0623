"""CIFAR-10 from a local folder, tested on a tiny stand-in written in torchvision's pickle format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_pareto.data import CIFAR10DataModule

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])


def _write_standin(root: Path, per_batch: int = 20, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """``root/cifar-10-batches-py`` with five training batches, a test batch and the meta file."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in np.arange(per_batch) % 10]
        # The real files come from Python 2 and load with byte-string keys; use them for one batch.
        entry = {b"data": data, b"labels": labels} if i == 0 else {"data": data, "labels": labels, "batch_label": name}
        with (folder / name).open("wb") as handle:
            pickle.dump(entry, handle, protocol=2)
        batches[name] = (data, labels)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": NAMES, "num_vis": 3072}, handle, protocol=2)
    return batches


def _image(row: np.ndarray) -> np.ndarray:
    """Reference decoding: 1024 red, then green, then blue values, row-major 32x32, normalised."""
    return (row.reshape(3, 32, 32) / 255.0 - MEAN[:, None, None]) / STD[:, None, None]


def test_reads_the_standin_images_labels_and_class_names(tmp_path: Path) -> None:
    batches = _write_standin(tmp_path)
    dm = CIFAR10DataModule(tmp_path, val_size=10, batch_size=8, seed=0)
    assert dm.class_names == NAMES
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (90, 10, 20)
    test_data, test_labels = batches["test_batch"]
    x, y = dm.test_arrays
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
    np.testing.assert_allclose(x[3].numpy(), _image(test_data[3]), rtol=1e-5, atol=1e-5)
    assert y.tolist() == test_labels
    # Every training image is one of the stand-in's training rows, with its label.
    train_rows = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
    train_labels = np.concatenate([batches[f"data_batch_{k}"][1] for k in range(1, 6)])
    x, y, index = next(iter(dm.train_dataloader()))
    for image, label in zip(x.numpy(), y.tolist()):
        match = [i for i, row in enumerate(train_rows) if np.allclose(_image(row), image, atol=1e-5)]
        assert len(match) == 1 and train_labels[match[0]] == label


def test_accepts_the_batches_folder_itself_and_subsamples(tmp_path: Path) -> None:
    _write_standin(tmp_path)
    dm = CIFAR10DataModule(tmp_path / "cifar-10-batches-py", val_size=10, train_size=30, test_size=10, label_noise=0.1)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (30, 10, 10)
    assert len(dm.flipped_indices) == 3


def test_test_size_as_large_as_the_test_batch_keeps_it_all(tmp_path: Path) -> None:
    _write_standin(tmp_path)
    dm = CIFAR10DataModule(tmp_path, val_size=10, test_size=20)
    dm.setup()
    assert len(dm.test_dataset) == 20


def test_missing_folder_names_the_path_and_the_argument(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found under .*nowhere.*argument `root`"):
        CIFAR10DataModule(tmp_path / "nowhere")


def test_incomplete_folder_lists_the_missing_files(tmp_path: Path) -> None:
    _write_standin(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="missing test_batch"):
        CIFAR10DataModule(tmp_path)
