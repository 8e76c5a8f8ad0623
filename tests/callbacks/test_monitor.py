"""PerClassAccuracy: exact per-class counts, missing classes, history through checkpoints, TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto import ClassifierModule, IndexedDataset, PerClassAccuracy
from lightning_pareto.callbacks.monitor import class_indices, find_monitor, require_monitor
from lightning_pareto.nets import LogisticRegression

NAMES = ["ant", "bee", "cat", "dog"]


def _loader(x: torch.Tensor, y: torch.Tensor, shuffle: bool = False) -> DataLoader:
    return DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=16, shuffle=shuffle)


def _data(n: int = 120, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, generator=generator) + 0.8 * torch.nn.functional.one_hot(y, 4)[:, :3].float()
    return x, y


def _direct_count(module: ClassifierModule, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Reference per-class accuracy: correct predictions over samples of each class, in numpy."""
    with torch.no_grad():
        predicted = module(x).argmax(1).numpy()
    truth = y.numpy()
    return [float(np.mean(predicted[truth == c] == c)) if np.any(truth == c) else math.nan for c in range(4)]


def test_logged_per_class_accuracy_equals_a_direct_count(quiet_trainer_kwargs: dict[str, Any]) -> None:
    module = ClassifierModule(LogisticRegression(3, 4), num_classes=4, class_names=NAMES)
    monitor = PerClassAccuracy()
    trainer = L.Trainer(callbacks=[monitor], **quiet_trainer_kwargs)
    x, y = _data()
    trainer.validate(module, _loader(x, y))
    expected = _direct_count(module, x, y)
    assert len(set(expected)) > 1  # the classes differ, so a mix-up of classes would show
    np.testing.assert_allclose(monitor.latest()["accuracy"], expected, rtol=1e-6)
    for name, value in zip(NAMES, expected):
        assert trainer.callback_metrics[f"val_acc/{name}"].item() == pytest.approx(value, rel=1e-6)
    assert trainer.callback_metrics["val_acc/mean"].item() == pytest.approx(np.mean(expected), rel=1e-6)
    assert trainer.callback_metrics["val_acc/worst"].item() == pytest.approx(min(expected), rel=1e-6)
    assert monitor.latest()["support"] == [30, 30, 30, 30]


class _LossOnlyModule(ClassifierModule):
    """A module whose validation step returns no logits: the monitor must run the network itself."""

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().validation_step(batch, batch_idx)["loss"]


def test_monitor_computes_logits_itself_when_the_step_returns_none(quiet_trainer_kwargs: dict[str, Any]) -> None:
    module = _LossOnlyModule(LogisticRegression(3, 4), num_classes=4, class_names=NAMES)
    monitor = PerClassAccuracy()
    x, y = _data(seed=3)
    L.Trainer(callbacks=[monitor], **quiet_trainer_kwargs).validate(module, _loader(x, y))
    np.testing.assert_allclose(monitor.latest()["accuracy"], _direct_count(module, x, y), rtol=1e-6)


def test_class_without_validation_samples_is_missing_not_zero(quiet_trainer_kwargs: dict[str, Any]) -> None:
    module = ClassifierModule(LogisticRegression(3, 4), num_classes=4, class_names=NAMES)
    monitor = PerClassAccuracy()
    trainer = L.Trainer(callbacks=[monitor], **quiet_trainer_kwargs)
    x, y = _data()
    keep = y != 2
    with pytest.warns(UserWarning, match=r"no validation samples for class\(es\) \['cat'\]"):
        trainer.validate(module, _loader(x[keep], y[keep]))
    assert "val_acc/cat" not in trainer.callback_metrics
    record = monitor.latest()
    assert math.isnan(record["accuracy"][2]) and record["support"][2] == 0
    expected = _direct_count(module, x[keep], y[keep])
    present = [v for v in expected if not math.isnan(v)]
    assert trainer.callback_metrics["val_acc/mean"].item() == pytest.approx(np.mean(present), rel=1e-6)
    assert trainer.callback_metrics["val_acc/worst"].item() == pytest.approx(min(present), rel=1e-6)
    assert "missing" in monitor.summary_table()


def _fit(
    tmp_path: Path, monitor: PerClassAccuracy, max_epochs: int, ckpt_path: str | None = None, **kwargs: Any
) -> tuple[L.Trainer, ModelCheckpoint]:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / f"ckpt_{max_epochs}", save_last=True)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor, checkpoint],
        **{"logger": False, **kwargs},
    )
    x, y = _data(seed=1)
    vx, vy = _data(n=60, seed=2)
    module = ClassifierModule(LogisticRegression(3, 4), num_classes=4, class_names=NAMES)
    trainer.fit(module, _loader(x, y, shuffle=True), _loader(vx, vy), ckpt_path=ckpt_path)
    return trainer, checkpoint


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_history_survives_fit_checkpoint_resume(tmp_path: Path) -> None:
    first = PerClassAccuracy()
    _, checkpoint = _fit(tmp_path, first, max_epochs=2, num_sanity_val_steps=2)
    assert [r["epoch"] for r in first.history] == [0, 1]  # the sanity check left no record
    resumed = PerClassAccuracy()
    _fit(tmp_path, resumed, max_epochs=4, ckpt_path=checkpoint.last_model_path)
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3]
    assert resumed.history[:2] == first.history
    assert resumed.accuracy_matrix().shape == (4, 4)


def test_tensorboard_gets_every_class_tag_the_layout_and_the_figures(tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = PerClassAccuracy(log_figure_every_n_epochs=2)
    _fit(tmp_path, monitor, max_epochs=3, logger=logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {f"val_acc/{n}" for n in NAMES} | {"val_acc/mean", "val_acc/worst"} <= set(tags["scalars"])
    assert len(events.Scalars("val_acc/bee")) == 3
    # After epoch 2 (every 2 epochs) and at the end of fit.
    assert sorted(tags["images"]) == ["val_acc_curves", "val_acc_heatmap"]
    steps = 8  # 120 training samples in batches of 16
    assert [image.step for image in events.Images("val_acc_curves")] == [2 * steps, 3 * steps]
    for name in ("per_class_curves.png", "val_acc_heatmap.png"):  # beside the event file
        assert (Path(logger.log_dir) / name).read_bytes().startswith(b"\x89PNG")
    assert "custom_scalars__config__" in tags["tensors"]
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["validation accuracy, every class"] == [f"^val_acc/{n}$" for n in NAMES]


def test_class_names_must_match_the_module(quiet_trainer_kwargs: dict[str, Any]) -> None:
    module = ClassifierModule(LogisticRegression(3, 4), num_classes=4)
    trainer = L.Trainer(callbacks=[PerClassAccuracy(class_names=["a", "b"])], **quiet_trainer_kwargs)
    x, y = _data()
    with pytest.raises(ValueError, match=r"2 class names .* num_classes=4"):
        trainer.validate(module, _loader(x, y))


def test_class_indices_resolve_names_and_reject_unknown_ones() -> None:
    assert class_indices(["dog", "ant", 1, "dog"], NAMES, "targets") == [0, 1, 3]
    with pytest.raises(ValueError, match=r"targets: unknown class 'cow'; known classes are \['ant'"):
        class_indices(["cow"], NAMES, "targets")
    with pytest.raises(ValueError, match="out of range"):
        class_indices([7], NAMES, "targets")
    with pytest.raises(ValueError, match="targets is empty"):
        class_indices([], NAMES, "targets")


def test_find_and_require_monitor(quiet_trainer_kwargs: dict[str, Any]) -> None:
    monitor = PerClassAccuracy()
    assert find_monitor(L.Trainer(callbacks=[monitor], **quiet_trainer_kwargs)) is monitor
    bare = L.Trainer(**quiet_trainer_kwargs)
    assert find_monitor(bare) is None
    with pytest.raises(ValueError, match="CourseCorrection reads per-class validation accuracy: add"):
        require_monitor(bare, "CourseCorrection")


def test_summary_table_shows_first_and_last_epoch() -> None:
    monitor = PerClassAccuracy(class_names=["x", "y"])
    monitor.load_state_dict(
        {
            "class_names": ["x", "y"],
            "history": [
                {"epoch": 0, "step": 5, "accuracy": [0.5, 0.25], "support": [4, 4]},
                {"epoch": 3, "step": 20, "accuracy": [0.75, 1.0], "support": [4, 4]},
            ],
        }
    )
    lines = monitor.summary_table().splitlines()
    assert "epoch   0" in lines[0] and "epoch   3" in lines[0]
    assert lines[2].split() == ["x", "50.0%", "75.0%", "+25.0"]
    assert lines[-1].split() == ["worst", "25.0%", "75.0%", "+50.0"]


class _RecordingLogger:
    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, float], int]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((metrics, step))


def test_a_discarded_epoch_is_logged_again_under_its_own_tag_and_survives_a_checkpoint() -> None:
    monitor = PerClassAccuracy(class_names=["a", "b"])
    history = [
        {"epoch": 0, "step": 5, "accuracy": [0.5, 0.25], "support": [4, 4]},
        {"epoch": 1, "step": 10, "accuracy": [0.75, math.nan], "support": [4, 0]},
    ]
    monitor.load_state_dict({"history": history, "class_names": ["a", "b"]})
    logger = _RecordingLogger()
    trainer = SimpleNamespace(loggers=[logger], is_global_zero=True)
    monitor.discard(trainer, 1, "redo rejected")
    monitor.mark_intervention(1, 0, "#1 Course Correction: rejected")
    assert logger.logged == [({"val_acc_discarded/a": 0.75}, 10)]  # at that validation's step; no NaN logged

    restored = PerClassAccuracy(class_names=["a", "b"])
    restored.load_state_dict(monitor.state_dict())
    assert restored.discarded == {1: "redo rejected"}
    axes = restored.curves_figure().axes[0]
    assert [t.get_text() for t in axes.texts] == ["#1 Course Correction: rejected"]
    assert [line.get_xdata().tolist() for line in axes.get_lines() if line.get_label() == "a"] == [[0.0]]
