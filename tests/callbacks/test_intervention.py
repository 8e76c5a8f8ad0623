"""The machinery both intervention callbacks share: settings, trial fitness, accuracy, records, snapshots, setup, logging."""

from __future__ import annotations

import copy
import json
import math
import random
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
    states_equal,
    trainer,
)
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto import ClassifierModule, CourseCorrection, DirectImprovement, IndexedDataset
from lightning_pareto.callbacks._intervention import (
    InterventionRecord,
    InterventionSettings,
    TrialFitness,
    intervention_table,
    per_class_accuracy,
)
from lightning_pareto.callbacks._snapshot import TrainingSnapshot, capture_rng_state, cpu_copy, restore_rng_state
from lightning_pareto.nets import MLP


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"damping": -1.0}, ValueError, "damping"),
        ({"modules": "head"}, TypeError, "modules"),
        ({"curvature_samples": 0}, ValueError, "curvature_samples"),
        ({"curvature_samples": 2.5}, ValueError, "curvature_samples"),
        ({"trial_batches": 0}, ValueError, "trial_batches"),
        ({"preset": "huge"}, ValueError, "preset"),
        ({"w_min": 1.5}, ValueError, "w_min"),
        ({"trust": 0.0}, ValueError, "trust"),
        ({"time_budget": 0}, ValueError, "time_budget"),
        ({"influence_batch_size": 0}, ValueError, "influence_batch_size"),
    ],
)
def test_settings_name_the_bad_argument(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        InterventionSettings(**kwargs)


# ---------------------------------------------------------------- trial fitness and accuracy
def _toy_problem() -> tuple[nn.Module, torch.optim.Optimizer, IndexedDataset, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 4, generator=generator), torch.randint(0, 3, (96,), generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    # One real step so the optimizer has momentum buffers the trial must copy.
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    val = DataLoader(TensorDataset(x[:48] + 0.1, y[:48]), batch_size=16)
    return model, optimizer, IndexedDataset(TensorDataset(x, y)), val


def _reference_trial(model: nn.Module, optimizer: torch.optim.Optimizer, train: IndexedDataset, val: DataLoader,
                     weights: torch.Tensor, batches: int, seed: int) -> np.ndarray:
    """Plain PyTorch: a deep copy trained with the same batch order, dropout seed and optimizer state."""
    model = copy.deepcopy(model)
    fresh = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    fresh.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    torch.manual_seed(seed)
    loader = DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))
    model.train()
    for step, (x, y, index) in enumerate(loader):
        if step == batches:
            break
        loss = (weights[index] * F.cross_entropy(model(x), y, reduction="none")).mean()
        fresh.zero_grad()
        loss.backward()
        fresh.step()
    model.eval()
    with torch.no_grad():
        xs, ys = (torch.cat(parts) for parts in zip(*val))
        predicted = model(xs).argmax(1)
    return np.array([(predicted[ys == c] == c).double().mean().item() for c in range(3)])


def test_trial_fitness_matches_a_plain_training_loop_and_restores_everything() -> None:
    model, optimizer, train, val = _toy_problem()
    model.train()
    params_before = copy.deepcopy(model.state_dict())
    optimizer_before = copy.deepcopy(optimizer.state_dict())
    grads_before = [p.grad.clone() for p in model.parameters()]
    rng_before = torch.get_rng_state()
    trial = TrialFitness(model, optimizer, lambda logits, y: F.cross_entropy(logits, y, reduction="none"), train, val,
                         3, batch_size=16, num_batches=4, seed=5)
    weights = torch.rand(96, generator=torch.Generator().manual_seed(1)) * 2

    accuracy, unweighted = trial(weights.numpy()), trial(np.zeros(96))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert states_equal(model.state_dict(), params_before) and model.training
    assert states_equal(optimizer.state_dict(), optimizer_before)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads_before))
    expected = _reference_trial(model, optimizer, train, val, weights, batches=4, seed=5)
    np.testing.assert_allclose(accuracy, expected, atol=1e-12)
    assert not np.allclose(accuracy, unweighted)  # the weights matter


def test_per_class_accuracy_counts_each_class_and_marks_missing_ones() -> None:
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 3.0], [3.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1, 0])  # predictions 0, 1, 1, 0, 0; class 2 has no samples
    accuracy = per_class_accuracy(model, DataLoader(TensorDataset(x, y), batch_size=2), 3)
    np.testing.assert_allclose(accuracy[:2], [2 / 3, 1 / 2])
    assert math.isnan(accuracy[2])


# ---------------------------------------------------------------- records and the table
def test_record_json_is_strict_and_round_trips() -> None:
    record = InterventionRecord(epoch=3, mode="course_correction", targets=[1], before=[0.5, float("nan")],
                                after=[0.75, 0.5], bad=[0.25, 0.5], status="applied", seconds=1.5, weighted_epochs=[4])
    line = json.dumps(record.to_dict(), allow_nan=False)
    restored = InterventionRecord.from_dict(json.loads(line))
    assert restored.before == [0.5, None] and restored.bad == [0.25, 0.5] and restored.weighted_epochs == [4]
    table = intervention_table([restored], ["cat", "dog"])
    assert "course_correction at epoch 3" in table and "* dog" in table
    rows = {line.split()[-5]: line.split()[-4:] for line in table.splitlines() if line.strip().startswith(("cat", "*"))}
    assert rows["cat"] == ["50.0", "25.0", "75.0", "+50.0"]  # before, bad, after, change against bad
    assert rows["dog"] == ["-", "50.0", "50.0", "+0.0"]  # a class missing before shows "-"
    skipped = InterventionRecord(epoch=1, mode="direct_improvement", targets=[0], before=None, reason="infeasible: x")
    assert "skipped (infeasible: x)" in intervention_table([skipped], ["cat", "dog"])


# ---------------------------------------------------------------- snapshots
def test_cpu_copy_shares_no_storage() -> None:
    state = {"a": torch.ones(3), "b": [torch.zeros(2), 4], "c": ("x", torch.arange(2))}
    copied = cpu_copy(state)
    state["a"].add_(1)
    state["b"][0].add_(1)
    assert torch.equal(copied["a"], torch.ones(3)) and torch.equal(copied["b"][0], torch.zeros(2))
    assert copied["b"][1] == 4 and isinstance(copied["c"], tuple)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_snapshot_restore_does_not_alias_the_snapshot(tmp_path: Path) -> None:
    L.seed_everything(0)
    run = trainer(tmp_path, [], max_epochs=1)
    module = classifier()
    run.fit(module, blobs_datamodule())
    snapshot = TrainingSnapshot.take(run, module)
    saved = copy.deepcopy(snapshot.state_dict())
    snapshot.restore(run, module)
    for state in run.optimizers[0].state.values():
        state["momentum_buffer"].mul_(3)  # a training step after the restore must not reach the snapshot
    with torch.no_grad():
        next(module.parameters()).mul_(3)
    assert states_equal(snapshot.state_dict(), saved)
    restored = TrainingSnapshot.from_state_dict(torch.load(_saved(tmp_path, snapshot), weights_only=True))
    assert states_equal(restored.state_dict(), saved)


def _saved(tmp_path: Path, snapshot: TrainingSnapshot) -> Path:
    path = tmp_path / "snapshot.pt"
    torch.save(snapshot.state_dict(), path)
    return path


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
    run = trainer(tmp_path, [ScriptedAccuracy({}), DirectImprovement(targets=["c"], at_epochs=[0])], 2, logger=logger)
    run.fit(classifier(), blobs_datamodule())
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    assert {"pareto/ceiling", "pareto/influence_scatter", "pareto/weights_histogram"} <= set(tags["images"])
    assert "pareto/weights" in tags["histograms"]
    assert {"pareto/ceiling/text_summary", "pareto/summary/text_summary"} <= set(tags["tensors"])
    gains = {tag: events.Scalars(tag)[0].value for tag in tags["scalars"] if tag.startswith("pareto/predicted_gain/")}
    assert set(gains) == {"pareto/predicted_gain/a", "pareto/predicted_gain/b", "pareto/predicted_gain/c"}
    assert gains["pareto/predicted_gain/c"] > 0
    line = json.loads((Path(logger.log_dir) / "interventions.jsonl").read_text())
    assert line["status"] == "applied" and line["targets"] == [2]
