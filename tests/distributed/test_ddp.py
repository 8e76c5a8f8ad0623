"""DDP on two CPU processes (gloo): influence equals one process's, both ranks train with the same
weights, a course-correction rollback leaves both ranks with the same parameters, and the CLI runs.

Lightning's ``strategy="ddp"`` starts the other rank by running the launching script again, so each
check runs a small script (written below into a temporary folder) in a subprocess; every rank saves
what it saw, and the tests compare the ranks with each other and with a single-process reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_pareto._distributed import (
    all_reduce_sum,
    broadcast_object,
    broadcast_tensor,
    global_rank,
    is_distributed,
    merge_rows,
    world_size,
)
from lightning_pareto.callbacks._run import check_strategy
from lightning_pareto.data import DigitsDataModule
from lightning_pareto.influence import category_influence
from lightning_pareto.influence.kfac import _eigensolver, eigen
from lightning_pareto.nets import MLP

REPOSITORY = Path(__file__).resolve().parents[2]

WORKER = r'''
"""One DDP run on 2 CPU ranks: influence probe, Direct Improvement and Course Correction in turn."""
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch import Callback
from torch.utils.data import DataLoader

from lightning_pareto import ClassifierModule, CourseCorrection, DirectImprovement, PerClassAccuracy
from lightning_pareto._distributed import global_rank, world_size
from lightning_pareto.data import DigitsDataModule
from lightning_pareto.influence import category_influence
from lightning_pareto.influence.kfac import _eigensolver, eigen
from lightning_pareto.nets import MLP

torch.set_num_threads(1)
OUT = Path(sys.argv[1])


def trainer(callbacks, max_epochs):
    return L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=max_epochs, callbacks=callbacks,
        default_root_dir=str(OUT), logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )


def module(lr=0.05, spike_epoch=None):
    torch.manual_seed(0)
    schedule = None
    if spike_epoch is not None:  # a 40x learning-rate spike for one epoch: some class drops
        schedule = lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: 40.0 if epoch == spike_epoch else 1.0)
    return ClassifierModule(MLP(64, 10, hidden=(16,)), 10,
                            optimizer=lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9), scheduler=schedule)


def data():
    return DigitsDataModule(batch_size=64, label_noise=0.2, seed=0)


@contextmanager
def sketched_first_layer():
    """The 65-input first layer counts as wide: its input factor is sketched, 24 columns (20 kept)."""
    saved = eigen.TRUNCATE_INPUTS_ABOVE, _eigensolver.SKETCH_COLUMNS, _eigensolver.SKETCH_OVERSAMPLING
    eigen.TRUNCATE_INPUTS_ABOVE, _eigensolver.SKETCH_COLUMNS, _eigensolver.SKETCH_OVERSAMPLING = 48, 24, 4
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # more than 20 directions above the tolerance: the sketch's 20 kept
            yield
    finally:
        eigen.TRUNCATE_INPUTS_ABOVE, _eigensolver.SKETCH_COLUMNS, _eigensolver.SKETCH_OVERSAMPLING = saved


class InfluenceProbe(Callback):
    """After epoch 1: EKFAC influence from this rank's shard, and the model it was computed on."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch != 1:
            return
        dataset = trainer.train_dataloader.dataset
        shard = DataLoader(dataset, batch_size=100, sampler=range(global_rank(), len(dataset), world_size()))
        val = trainer.val_dataloaders.dataset
        val_shard = DataLoader(val, batch_size=100, sampler=range(global_rank(), len(val), world_size()))
        with torch.inference_mode(False), torch.enable_grad():
            influence = category_influence(pl_module.net, shard, val_shard, 10)
            with sketched_first_layer():
                sketched = category_influence(pl_module.net, shard, val_shard, 10)
        torch.save({"influence": influence, "sketched": sketched, "state": pl_module.net.state_dict()},
                   OUT / f"influence_rank{trainer.global_rank}.pt")


class WeightProbe(Callback):
    """At every epoch start (after the intervention callbacks): the weights in use and the parameters."""

    def __init__(self, name):
        self.name, self.seen, self.batches = name, [], {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.setdefault(trainer.current_epoch, []).append(batch[2].tolist())

    def on_train_epoch_start(self, trainer, pl_module):
        weights = pl_module.sample_weights.weights
        self.seen.append({"epoch": trainer.current_epoch,
                          "weights": None if weights is None else weights.clone(),
                          "params": {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}})

    def on_fit_end(self, trainer, pl_module):
        torch.save(self.seen, OUT / f"{self.name}_rank{trainer.global_rank}.pt")
        torch.save(self.batches, OUT / f"{self.name}_batches_rank{trainer.global_rank}.pt")


trainer([PerClassAccuracy(log_figure_every_n_epochs=0), InfluenceProbe()], 2).fit(module(), data())

direct = DirectImprovement(targets="worst:2", at_epochs=[1], guard="off", log_figures=False)
probe = WeightProbe("direct")
trainer([PerClassAccuracy(log_figure_every_n_epochs=0), direct, probe], 3).fit(module(), data())
torch.save([r.to_dict() for r in direct.records], OUT / f"direct_records_rank{global_rank()}.pt")

correction = CourseCorrection(drop_threshold=0.02, max_corrections=1, log_figures=False)
probe = WeightProbe("correction")
trainer([PerClassAccuracy(log_figure_every_n_epochs=0), correction, probe], 4).fit(module(lr=0.05, spike_epoch=2), data())
torch.save([r.to_dict() for r in correction.records], OUT / f"correction_records_rank{global_rank()}.pt")
'''


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), environment.get("PYTHONPATH", "")])
    environment.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return environment


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs the worker script once under DDP (2 CPU ranks) and returns its output folder."""
    folder = tmp_path_factory.mktemp("ddp")
    script = folder / "worker.py"
    script.write_text(WORKER)
    completed = subprocess.run(
        [sys.executable, str(script), str(folder)],
        cwd=folder,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    return folder


def _load(path: Path) -> Any:
    return torch.load(path, weights_only=False)


def _without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Each rank times its own intervention and epochs; everything else is rank zero's decision.
    timing = ("seconds", "epoch_seconds", "cost_epochs")
    return [{key: value for key, value in record.items() if key not in timing} for record in records]


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharding_strategies_are_refused_with_the_fix(strategy: str) -> None:
    # Neither runs on this CPU-only machine (FSDP needs CUDA, DeepSpeed its package), so the check is
    # given a trainer holding the strategy object; test_cuda.py runs the FSDP refusal inside fit.
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    instance = FSDPStrategy() if strategy == "fsdp" else DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    with pytest.raises(ValueError, match="strategy='ddp'") as raised:
        check_strategy(SimpleNamespace(strategy=instance), "DirectImprovement")
    assert type(instance).__name__ in str(raised.value)


@pytest.mark.parametrize("strategy", ["auto", "ddp"])
def test_single_device_and_ddp_strategies_pass_the_check(strategy: str) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=strategy, logger=False)
    check_strategy(trainer, "DirectImprovement")


def test_collectives_are_the_identity_in_one_process() -> None:
    values = torch.arange(6.0).view(3, 2)
    assert not is_distributed() and world_size() == 1 and global_rank() == 0
    assert all_reduce_sum(values) is values
    assert broadcast_tensor(values) is values
    assert broadcast_object({"a": 1}) == {"a": 1}
    merged = merge_rows(values, torch.tensor([True, False, True]))
    torch.testing.assert_close(merged[[0, 2]], values[[0, 2]])
    assert torch.isnan(merged[1]).all()


@pytest.mark.slow
def test_influence_under_ddp_equals_one_process(ddp_run: Path) -> None:
    ranks = [_load(ddp_run / f"influence_rank{rank}.pt") for rank in (0, 1)]
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(ranks[1]["state"][key], value, rtol=0, atol=0)
    torch.testing.assert_close(ranks[1]["influence"], ranks[0]["influence"], rtol=0, atol=0)
    # The single-process reference: the same model on the whole training and validation sets.
    datamodule = DigitsDataModule(batch_size=64, label_noise=0.2, seed=0)
    datamodule.setup("fit")
    model = MLP(64, 10, hidden=(16,))
    model.load_state_dict(ranks[0]["state"])
    reference = category_influence(
        model,
        DataLoader(datamodule.train_dataset, batch_size=100),
        DataLoader(datamodule.val_dataset, batch_size=100),
        10,
    )
    assert torch.isfinite(ranks[0]["influence"]).all()
    # Sums over two shards instead of one set: float32 summation order only.
    scale = float(reference.abs().max())
    torch.testing.assert_close(ranks[0]["influence"], reference, rtol=1e-4, atol=1e-5 * scale)


def test_a_sketched_input_factor_under_ddp_equals_one_process(ddp_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank sketches with the same test matrix and the sketches are summed: one process's sketch."""
    ranks = [_load(ddp_run / f"influence_rank{rank}.pt") for rank in (0, 1)]
    torch.testing.assert_close(ranks[1]["sketched"], ranks[0]["sketched"], rtol=0, atol=0)
    datamodule = DigitsDataModule(batch_size=64, label_noise=0.2, seed=0)
    datamodule.setup("fit")
    model = MLP(64, 10, hidden=(16,))
    model.load_state_dict(ranks[0]["state"])
    monkeypatch.setattr(eigen, "TRUNCATE_INPUTS_ABOVE", 48)
    monkeypatch.setattr(_eigensolver, "SKETCH_COLUMNS", 24)
    monkeypatch.setattr(_eigensolver, "SKETCH_OVERSAMPLING", 4)
    with pytest.warns(UserWarning, match="more than its sketch resolves"):
        reference = category_influence(
            model,
            DataLoader(datamodule.train_dataset, batch_size=100),
            DataLoader(datamodule.val_dataset, batch_size=100),
            10,
        )
    # The sketch changed the scores (20 of 65 input directions kept), and DDP did not.
    assert float((reference - ranks[0]["influence"]).abs().max()) > 1e-3 * float(reference.abs().max())
    scale = float(reference.abs().max())
    torch.testing.assert_close(ranks[0]["sketched"], reference, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.slow
def test_both_ranks_train_with_the_same_weights(ddp_run: Path) -> None:
    ranks = [_load(ddp_run / f"direct_rank{rank}.pt") for rank in (0, 1)]
    records = [_load(ddp_run / f"direct_records_rank{rank}.pt") for rank in (0, 1)]
    assert _without_timing(records[0]) == _without_timing(records[1])
    (record,) = records[0]
    assert record["status"] == "applied", record["reason"]
    assert record["epoch_seconds"] > 0 and record["cost_epochs"]["extra_epochs"] == record["extra_epochs"]
    weighted = [seen for seen in ranks[0] if seen["weights"] is not None]
    assert [seen["epoch"] for seen in weighted] == [2]  # the epoch after the intervention
    for first, second in zip(ranks[0], ranks[1]):
        assert first["epoch"] == second["epoch"]
        if first["weights"] is None:
            assert second["weights"] is None
        else:
            torch.testing.assert_close(second["weights"], first["weights"], rtol=0, atol=0)
    weights = weighted[0]["weights"]
    assert (weights - 1).abs().gt(1e-6).sum() == record["n_weighted"] > 0
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_a_rollback_leaves_both_ranks_with_the_start_of_the_bad_epoch(ddp_run: Path) -> None:
    ranks = [_load(ddp_run / f"correction_rank{rank}.pt") for rank in (0, 1)]
    records = [_load(ddp_run / f"correction_records_rank{rank}.pt") for rank in (0, 1)]
    assert _without_timing(records[0]) == _without_timing(records[1])
    (record,) = records[0]
    bad_epoch = record["epoch"]
    assert record["status"] in ("applied", "rejected"), record["reason"]  # a redo ran
    starts = {rank: {seen["epoch"]: seen for seen in ranks[rank]} for rank in (0, 1)}
    for epoch in starts[0]:
        for key, value in starts[0][epoch]["params"].items():
            torch.testing.assert_close(starts[1][epoch]["params"][key], value, rtol=0, atol=0)
    # The redo (the next epoch) starts from exactly the parameters the detrimental epoch started from.
    redo = starts[0][bad_epoch + 1]
    for key, value in starts[0][bad_epoch]["params"].items():
        torch.testing.assert_close(redo["params"][key], value, rtol=0, atol=0)
    assert redo["weights"] is not None
    # DistributedSampler shuffles by epoch number: the redo gets the detrimental epoch's number back and
    # replays its batches on every rank.
    for rank in (0, 1):
        batches = _load(ddp_run / f"correction_batches_rank{rank}.pt")
        assert batches[bad_epoch + 1] == batches[bad_epoch]
        assert batches[bad_epoch + 2] != batches[bad_epoch]  # the epochs after it shuffle anew


@pytest.mark.slow
def test_cli_fit_with_ddp_records_its_intervention(tmp_path: Path) -> None:
    config = REPOSITORY / "configs" / "digits_direct_improvement.yaml"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_pareto",
            "fit",
            "--config",
            str(config),
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    (records_file,) = tmp_path.glob("lightning_logs/version_*/interventions.jsonl")
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    # Written once (rank zero), not once per rank: two interventions, the first after epoch 4 (the second
    # after the tenth epoch that stands, later in trainer epochs when the guard redid weighted epochs).
    assert len(records) == 2 and records[0]["epoch"] == 4 and records[1]["epoch"] >= 9
    assert all(record["status"] in ("applied", "dropped", "skipped") for record in records)
    assert any(record["status"] in ("applied", "dropped") for record in records)  # "dropped": applied, then guarded
    assert all(np.isfinite(record["seconds"]) for record in records)
