"""Snapshots and RNG states: copies that share no storage and survive a weights-only checkpoint."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from _intervention_helpers import blobs_datamodule, classifier, states_equal, trainer

from lightning_pareto.callbacks._snapshot import TrainingSnapshot, capture_rng_state, cpu_copy, restore_rng_state


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
