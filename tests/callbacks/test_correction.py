"""CourseCorrection: bit-for-bit rollback, extra epoch, no correction of a redo, max_corrections, skips, resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from _intervention_helpers import (
    RECORD_KEYS,
    Probe,
    ScriptedAccuracy,
    blobs_datamodule,
    classifier,
    patch_influence,
    random_influence,
    states_equal,
    trainer,
)
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_pareto import CourseCorrection

GOOD = (0.8, 0.8, 0.8)


def _fit(root: Path, callbacks: list, max_epochs: int, ckpt_path: str | None = None, **overrides: object) -> L.Trainer:
    L.seed_everything(0)
    run = trainer(root, callbacks, max_epochs, **overrides)
    run.fit(classifier(), blobs_datamodule(), ckpt_path=ckpt_path)
    return run


def _assert_same_start(a: dict, b: dict, rng: bool = True) -> None:
    assert states_equal(a["params"], b["params"])
    assert states_equal(a["optimizer"], b["optimizer"])
    assert states_equal(a["scheduler"], b["scheduler"])
    if rng:
        assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert np.array_equal(a["numpy_rng"], b["numpy_rng"])


def test_rollback_restores_model_optimizer_scheduler_and_rng_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    correction, probe = CourseCorrection(drop_threshold=0.05, log_figures=False), Probe()
    monitor = ScriptedAccuracy({2: (0.6, 0.8, 0.8)})
    run = _fit(tmp_path, [monitor, correction, probe], max_epochs=4)

    assert [s["epoch"] for s in probe.starts] == [0, 1, 2, 3, 4]  # one extra epoch: the redo
    assert run.current_epoch == 5 and run.fit_loop.max_epochs == 5
    redo, bad = probe.starts[3], probe.starts[2]
    _assert_same_start(redo, bad)
    assert bad["optimizer"]["state"], "momentum buffers exist, so the optimizer comparison is not vacuous"
    assert not states_equal(probe.starts[3]["params"], probe.starts[4]["params"])  # the redo did train
    assert probe.weighted_epochs() == [3]
    assert not run.lightning_module.sample_weights.active

    (record,) = correction.records
    assert (record.epoch, record.status, record.targets, record.weighted_epochs) == (2, "applied", [0], [3])
    assert record.extra_epochs == 1
    assert record.before == pytest.approx(GOOD) and record.bad == pytest.approx([0.6, 0.8, 0.8])
    assert record.after == pytest.approx(GOOD)
    line = json.loads((tmp_path / "interventions.jsonl").read_text().splitlines()[0])
    assert set(RECORD_KEYS) <= set(line)
    assert line["mode"] == "course_correction" and line["bad"] == pytest.approx([0.6, 0.8, 0.8])
    assert line["n_weighted"] > 0 and line["ceiling"]["verdict"] in ("improvable", "at the ceiling within tolerance")


def test_a_redo_is_never_corrected_and_max_corrections_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    script = {
        1: (0.8, 0.5, 0.8),  # drop of class b -> redo at epoch 2
        2: (0.8, 0.3, 0.8),  # the redo is even worse than the epoch it replaced: rejected, not corrected
        4: (0.8, 0.8, 0.5),  # drop of class c -> redo at epoch 5 (second correction)
        6: (0.5, 0.8, 0.8),  # drop of class a, but max_corrections=2 is used up
    }
    correction, probe = CourseCorrection(drop_threshold=0.05, max_corrections=2, log_figures=False), Probe()
    run = _fit(tmp_path, [ScriptedAccuracy(script), correction, probe], max_epochs=6)

    assert [(r.epoch, r.targets, r.weighted_epochs, r.status) for r in correction.records] == [
        (1, [1], [2], "rejected"),
        (4, [2], [5], "applied"),
    ]
    assert "did not raise the dropped classes" in correction.records[0].reason
    assert correction.attempts == 2
    assert probe.weighted_epochs() == [2, 5]
    assert run.current_epoch == 8


@pytest.mark.parametrize(
    ("script", "max_epochs"),
    [
        ({1: (0.8, 0.5, 0.8), 2: (0.8, 0.3, 0.8)}, 4),  # the redo lowers the dropped class further
        ({1: (0.8, 0.5, 0.8), 2: (0.8, 0.7, 0.6)}, 4),  # the redo lifts b but costs c 20 points
        ({3: (0.8, 0.5, 0.8), 4: (0.8, 0.3, 0.8)}, 4),  # the detrimental epoch is the last one budgeted
    ],
)
def test_a_rejected_redo_leaves_the_run_exactly_as_without_the_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, script: dict, max_epochs: int
) -> None:
    patch_influence(monkeypatch, random_influence)
    correction, probe, monitor = (
        CourseCorrection(drop_threshold=0.05, log_figures=False),
        Probe(),
        ScriptedAccuracy(script),
    )
    with caplog.at_level(logging.INFO):
        run = _fit(tmp_path / "cc", [monitor, correction, probe], max_epochs=max_epochs)
    assert "#1: the redo (epoch" in caplog.text and "is rejected" in caplog.text
    reference_probe = Probe()
    reference = _fit(tmp_path / "plain", [ScriptedAccuracy(script), reference_probe], max_epochs=max_epochs)

    (record,) = correction.records
    assert record.status == "rejected" and record.guard[-1]["action"] == "rejected"
    redo = record.weighted_epochs[0]
    assert list(monitor.discarded) == [redo]  # the redo's training is what was thrown away
    assert probe.weighted_epochs() == [redo]  # the redo did train with weights ...
    # ... and was undone: every later epoch starts where the run without the callback starts it, one epoch later.
    for ours, theirs in zip(probe.starts[redo + 1 :], reference_probe.starts[redo:]):
        _assert_same_start(ours, theirs)
    assert run.fit_loop.max_epochs == max_epochs + 1  # the spent redo epoch still counts: the run gets its epochs
    assert states_equal(run.lightning_module.state_dict(), reference.lightning_module.state_dict())


def test_a_redo_is_kept_when_it_only_gives_back_what_the_bad_epoch_inflated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    # Epoch 1 sends b's samples to c (b 80 -> 40, c 80 -> 95); the redo restores b and c to 80: c is 15
    # points below the detrimental epoch but not below where it was before it, so the redo stands.
    correction = CourseCorrection(drop_threshold=0.05, log_figures=False)
    _fit(tmp_path, [ScriptedAccuracy({1: (0.8, 0.4, 0.95)}), correction], max_epochs=3)
    (record,) = correction.records
    assert record.status == "applied" and record.guard[-1]["action"] == "accepted" and record.targets == [1]


def test_a_drop_within_the_sampling_noise_of_a_small_validation_set_is_not_corrected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = patch_influence(monkeypatch, random_influence)
    # 20 points on 20 validation samples at 80% is within twice the sampling noise (25 points); 30 points is not.
    quiet = CourseCorrection(drop_threshold=0.05, log_figures=False)
    _fit(tmp_path / "noise", [ScriptedAccuracy({1: (0.8, 0.6, 0.8)}, support=20), quiet], max_epochs=3)
    assert quiet.records == [] and calls == []
    loud = CourseCorrection(drop_threshold=0.05, log_figures=False)
    _fit(tmp_path / "drop", [ScriptedAccuracy({1: (0.8, 0.5, 0.8)}, support=20), loud], max_epochs=3)
    assert [r.targets for r in loud.records] == [[1]]


def test_watched_classes_limit_what_counts_as_a_drop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = patch_influence(monkeypatch, random_influence)
    correction = CourseCorrection(drop_threshold=0.05, classes=["a", 2], log_figures=False)
    run = _fit(tmp_path, [ScriptedAccuracy({1: (0.8, 0.2, 0.8)}), correction], max_epochs=3)
    assert correction.records == [] and calls == [] and run.current_epoch == 3


def test_skipped_correction_leaves_no_trace_and_adds_no_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_influence(monkeypatch, lambda n, k: torch.full((n, k), float("nan")))
    script = {1: (0.6, 0.8, 0.8), 2: (0.8, 0.6, 0.8)}  # epoch 2 is the last one budgeted
    correction, probe = CourseCorrection(drop_threshold=0.05, log_figures=False), Probe()
    with pytest.warns(UserWarning, match="non-finite"):
        run = _fit(tmp_path / "cc", [ScriptedAccuracy(script), correction, probe], max_epochs=3)
    reference_probe = Probe()
    reference = _fit(tmp_path / "plain", [ScriptedAccuracy(script), reference_probe], max_epochs=3)

    assert [(r.epoch, r.status) for r in correction.records] == [(1, "skipped"), (2, "skipped")]
    assert all("non-finite" in r.reason for r in correction.records)
    assert [r.extra_epochs for r in correction.records] == [0, 0]  # skipped: the extension was given back
    assert probe.weighted_epochs() == []
    # Same states as a run without the callback: every epoch start and the final model.
    for ours, theirs in zip(probe.starts[:3], reference_probe.starts):
        _assert_same_start(ours, theirs)
    assert sorted(probe.batch_weights) == [0, 1, 2]  # the budget extension for epoch 2 was taken back
    assert run.fit_loop.max_epochs == 3
    assert states_equal(run.lightning_module.state_dict(), reference.lightning_module.state_dict())
    lines = [json.loads(line) for line in (tmp_path / "cc" / "interventions.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == ["skipped", "skipped"] and lines[0]["after"] is None


def test_resume_with_a_pending_rollback_restores_the_same_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    script = {1: (0.8, 0.5, 0.8)}
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    correction, probe = CourseCorrection(drop_threshold=0.05, log_figures=False), Probe()
    _fit(
        tmp_path / "a",
        [ScriptedAccuracy(script), correction, probe, checkpoints],
        max_epochs=4,
        enable_checkpointing=True,
    )

    resumed, resumed_probe = CourseCorrection(drop_threshold=0.05, log_figures=False), Probe()
    run = _fit(
        tmp_path / "b",
        [ScriptedAccuracy(script), resumed, resumed_probe],
        max_epochs=4,
        ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"),
    )
    assert resumed_probe.starts[0]["epoch"] == 2
    # The redo starts from the rolled-back state. A resumed run creates its first epoch's data iterator
    # again after the RNG is restored (one draw), so the torch RNG is compared through the batch order.
    _assert_same_start(resumed_probe.starts[0], probe.starts[2], rng=False)
    _assert_same_start(resumed_probe.starts[0], probe.starts[1], rng=False)
    # The resumed redo replays the detrimental epoch's batches, batch by batch, as the uninterrupted redo does.
    assert probe.batch_order(2) == probe.batch_order(1)
    assert resumed_probe.batch_order(2) == probe.batch_order(1)
    assert (
        [(r.epoch, r.status, r.weighted_epochs) for r in resumed.records]
        == [(r.epoch, r.status, r.weighted_epochs) for r in correction.records]
        == [(1, "applied", [2])]
    )
    assert run.current_epoch == 5
    # The epoch times go on from the checkpoint's (epochs 0 and 1); the redo is not a normal epoch.
    assert resumed.epoch_clock.normal_seconds[:2] == correction.epoch_clock.normal_seconds[:2]
    assert len(resumed.epoch_clock.normal_seconds) == len(correction.epoch_clock.normal_seconds) == 4
    assert resumed.records[0].cost_epochs is not None and resumed.records[0].cost_epochs["extra_epochs"] == 1.0

    # A checkpoint taken after the redo: the resumed run gets the extra epoch again.
    after_redo = CourseCorrection(drop_threshold=0.05, log_figures=False)
    run = _fit(
        tmp_path / "c",
        [ScriptedAccuracy(script), after_redo],
        max_epochs=4,
        ckpt_path=str(tmp_path / "ckpt" / "epoch=2.ckpt"),
    )
    assert run.current_epoch == 5 and after_redo.attempts == 1 and len(after_redo.records) == 1


def test_course_correction_with_real_influence_applies_weights(tmp_path: Path) -> None:
    correction, probe = CourseCorrection(drop_threshold=0.05, curvature="exact", log_figures=False), Probe()
    run = _fit(tmp_path, [ScriptedAccuracy({2: (0.8, 0.8, 0.5)}), correction, probe], max_epochs=3)
    (record,) = correction.records
    assert record.status == "applied", record.reason
    assert record.predicted_gain[2] > 0 and record.search["status"] == "improved"
    assert probe.weighted_epochs() == [3] and run.current_epoch == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop_threshold": 0.0}, "drop_threshold"),
        ({"drop_threshold": 3}, "drop_threshold"),
        ({"classes": "all"}, "classes"),
        ({"classes": []}, "classes"),
        ({"max_corrections": 0}, "max_corrections"),
        ({"fitness": "measured"}, "fitness"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CourseCorrection(**kwargs)


@pytest.mark.parametrize(("classes", "message"), [(["zebra"], "unknown class 'zebra'"), ([7], "out of range")])
def test_unknown_watched_classes_fail_at_setup(tmp_path: Path, classes: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _fit(tmp_path, [ScriptedAccuracy({}), CourseCorrection(classes=classes)], max_epochs=2)


class BreakModel(L.Callback):
    """Makes the parameters NaN during one epoch: a detrimental epoch that leaves a broken model."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                pl_module.net.head.weight.fill_(float("nan"))


def test_a_skipped_correction_after_a_nan_epoch_restores_the_finite_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, lambda n, k: torch.full((n, k), float("nan")))
    correction, probe = CourseCorrection(drop_threshold=0.05, log_figures=False), Probe()
    with pytest.warns(UserWarning, match="non-finite parameters"):
        run = _fit(tmp_path, [BreakModel(1), ScriptedAccuracy({1: (0.8, 0.3, 0.8)}), correction, probe], max_epochs=4)
    (record,) = correction.records
    assert record.status == "skipped" and "non-finite parameters" in record.reason
    # Epoch 2 starts from the finite state epoch 1 started from, not from the NaN model epoch 1 left.
    _assert_same_start(probe.starts[2], probe.starts[1])
    assert all(torch.isfinite(v).all() for v in run.lightning_module.state_dict().values() if v.is_floating_point())
    assert run.fit_loop.max_epochs == 5  # the broken epoch does not count: it is trained again
