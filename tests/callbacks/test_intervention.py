"""The base both intervention callbacks share: the checks at setup and what an intervention logs."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _intervention_helpers import (
    ScriptedAccuracy,
    blobs_datamodule,
    classifier,
    patch_influence,
    random_influence,
    trainer,
)
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto import ClassifierModule, CourseCorrection, DirectImprovement
from lightning_pareto.nets import MLP


# ---------------------------------------------------------------- setup checks shared by both callbacks
class _Unweighted(L.LightningModule):
    """A module without the sample-weight contract."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLP(2, 3)
        self.num_classes = 3

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _TwoOptimizers(ClassifierModule):
    """Manual optimization with two optimizers: trial fitness cannot copy "the" optimizer."""

    def __init__(self) -> None:
        super().__init__(MLP(2, 3), 3, class_names=["a", "b", "c"])
        self.automatic_optimization = False

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.net.parameters(), lr=0.1), torch.optim.SGD(self.net.parameters(), lr=0.1)]


def _callback(kind: str, **kwargs: object) -> DirectImprovement | CourseCorrection:
    if kind == "direct":
        return DirectImprovement(targets=[0], at_epochs=[0], log_figures=False, **kwargs)
    return CourseCorrection(log_figures=False, **kwargs)


@pytest.mark.parametrize("kind", ["direct", "correction"])
def test_setup_rejects_runs_the_callbacks_cannot_serve(tmp_path: Path, kind: str) -> None:
    data = blobs_datamodule()
    with pytest.raises(TypeError, match="sample_weights"):
        trainer(tmp_path, [ScriptedAccuracy({}), _callback(kind)], 2).fit(_Unweighted(), data)
    with pytest.raises(ValueError, match="PerClassAccuracy"):
        trainer(tmp_path, [_callback(kind)], 2).fit(classifier(), data)
    with pytest.raises(ValueError, match="overwrite each other"):
        both = [_callback(kind), _callback("correction" if kind == "direct" else "direct")]
        trainer(tmp_path, [ScriptedAccuracy({}), *both], 2).fit(classifier(), data)
    with pytest.raises(ValueError, match="exactly one"):
        trainer(tmp_path, [ScriptedAccuracy({}), _callback(kind, fitness="trial")], 2).fit(_TwoOptimizers(), data)

    data.setup()
    unindexed = DataLoader(TensorDataset(*data.train_arrays), batch_size=32)
    with pytest.raises(ValueError, match="IndexedDataset"):
        trainer(tmp_path, [ScriptedAccuracy({}), _callback(kind)], 2).fit(classifier(), unindexed, unindexed)


# ---------------------------------------------------------------- logging
def test_tensorboard_gets_figures_histogram_text_and_scalars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_influence(monkeypatch, random_influence)
    logger = TensorBoardLogger(tmp_path, name="tb")
    L.seed_everything(0)
    monitor = ScriptedAccuracy({})
    run = trainer(
        tmp_path, [monitor, DirectImprovement(targets=["c"], at_epochs=[0], guard="paired")], 2, logger=logger
    )
    run.fit(classifier(), blobs_datamodule())
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    assert {"pareto/ceiling", "pareto/influence_scatter", "pareto/weights_histogram"} <= set(tags["images"])
    assert "pareto/weights" in tags["histograms"]
    assert {"pareto/ceiling/text_summary", "pareto/summary/text_summary"} <= set(tags["tensors"])
    gains = {tag: events.Scalars(tag)[0].value for tag in tags["scalars"] if tag.startswith("pareto/predicted_gain/")}
    assert set(gains) == {"pareto/predicted_gain/a", "pareto/predicted_gain/b", "pareto/predicted_gain/c"}
    assert gains["pareto/predicted_gain/c"] > 0
    assert events.Scalars("pareto/predicted_gain/c")[0].step == 1  # the intervention's number, not a training step
    line = json.loads((Path(logger.log_dir) / "interventions.jsonl").read_text())
    assert line["status"] == "applied" and line["targets"] == [2] and line["number"] == 1
    np.testing.assert_allclose(line["predicted_gain"][2], gains["pareto/predicted_gain/c"], rtol=1e-6)

    # The intervention at its step (after epoch 0: 6 batches of 32), as a scalar and as text.
    (marker,) = events.Scalars("pareto/interventions")
    assert (marker.step, marker.value) == (6, 1.0) and "pareto/interventions/text_summary" in tags["tensors"]
    # The paired guard: epoch 1 trained without the weights, then rolled back and redone with them (epoch 2, kept);
    # every class scripted at 0.8, so the realised change is zero everywhere.
    assert list(monitor.discarded) == [1] and line["weighted_epochs"] == [2] and line["realised_change"] == [0, 0, 0]
    assert [(s.step, s.value) for s in events.Scalars("val_acc_discarded/a")] == [(12, pytest.approx(0.8))]
    assert [s.value for s in events.Scalars("pareto/realised_change/c")] == [0.0]
    assert {"pareto/predicted_vs_realised", "val_acc_curves", "val_acc_heatmap"} <= set(tags["images"])
    for name in ("per_class_curves.png", "val_acc_heatmap.png", "predicted_vs_realised.png"):
        assert (Path(logger.log_dir) / name).read_bytes().startswith(b"\x89PNG")
