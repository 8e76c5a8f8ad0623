"""``InfluenceAudit``: the audit at the end of fit, written and logged; failures warn, never raise."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_pareto import ClassifierModule
from lightning_pareto.callbacks import InfluenceAudit
from lightning_pareto.data import DigitsDataModule
from lightning_pareto.nets import MLP


def _fit(callback: InfluenceAudit, kwargs: dict[str, Any], **overrides: Any) -> ClassifierModule:
    datamodule = DigitsDataModule(batch_size=32, train_size=150, val_size=100, test_size=100, label_noise=0.2)
    module = ClassifierModule(MLP(64, 10, hidden=[16]), num_classes=10)
    Trainer(max_epochs=2, callbacks=[callback], **{**kwargs, **overrides}).fit(module, datamodule)
    return module


def test_audit_at_fit_end_writes_the_csvs_and_logs_thumbnails(quiet_trainer_kwargs: dict, tmp_path: Path) -> None:
    callback = InfluenceAudit(top_k=3, image_shape=(8, 8))
    logger = TensorBoardLogger(str(tmp_path), name="run")
    _fit(callback, quiet_trainer_kwargs, logger=logger)
    output = Path(logger.log_dir) / "audit"
    with (output / "samples.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 150 and callback.table is not None and callback.table.influence.shape == (150, 10)
    assert len(list(output.glob("top_*.png"))) == 10
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert {f"audit/top_samples/{d}" for d in range(10)} <= set(events.Tags()["images"])


def test_a_failing_audit_warns_and_the_run_ends_normally(quiet_trainer_kwargs: dict, tmp_path: Path) -> None:
    callback = InfluenceAudit(modules=["no_such_layer"], output_dir=str(tmp_path / "audit"))
    with pytest.warns(UserWarning, match="InfluenceAudit failed"):
        _fit(callback, quiet_trainer_kwargs)
    assert not (tmp_path / "audit").exists()


def test_bad_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="top_k"):
        InfluenceAudit(top_k=0)
    with pytest.raises(ValueError, match="curvature"):
        InfluenceAudit(curvature="diag")
