"""DirectImprovement: weights exactly for the chosen epochs, records, failures that never stop training, resume."""

from __future__ import annotations

import json
from collections.abc import Callable
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

from lightning_pareto import ClassifierModule, DirectImprovement, PerClassAccuracy
from lightning_pareto.pareto.search import SearchResult


def _fit(root: Path, callbacks: list, max_epochs: int, ckpt_path: str | None = None, **overrides: object) -> L.Trainer:
    L.seed_everything(0)
    run = trainer(root, callbacks, max_epochs, **overrides)
    run.fit(classifier(), blobs_datamodule(), ckpt_path=ckpt_path)
    return run


def _weights_seen(probe: Probe, epoch: int, n: int) -> torch.Tensor:
    """The per-sample weights the batches of one epoch used, by dataset index (NaN = never seen)."""
    seen = torch.full((n,), float("nan"))
    for weights, index in zip(probe.batch_weights[epoch], probe.batch_indices[epoch]):
        seen[index] = weights
    return seen


IndexProbe = Probe  # every Probe keeps the batches' dataset indices


def test_weights_apply_exactly_for_the_chosen_epochs_then_clear(tmp_path: Path) -> None:
    monitor, probe = PerClassAccuracy(log_figure_every_n_epochs=0), IndexProbe()
    improvement = DirectImprovement(
        targets=["b"], at_epochs=[1], apply_epochs=2, guard="off", curvature="exact", log_figures=False
    )
    run = _fit(tmp_path, [monitor, improvement, probe], max_epochs=5)

    assert probe.weighted_epochs() == [2, 3]
    n = len(run.datamodule.train_dataset)
    first, second = _weights_seen(probe, 2, n), _weights_seen(probe, 3, n)
    assert not first.isnan().any() and torch.equal(first, second)  # the same weights for the whole window
    assert first.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert first.min() >= 0.0 and first.max() <= 3.0 + 1e-6 and (first != 1).sum() > 0
    assert all(w is None for w in probe.batch_weights[4])  # cleared after the window
    assert not run.lightning_module.sample_weights.active

    (record,) = improvement.records
    accuracy = {r["epoch"]: r["accuracy"] for r in monitor.history}
    assert record.status == "applied" and record.targets == [1] and record.weighted_epochs == [2, 3]
    assert record.before == pytest.approx(accuracy[1]) and record.after == pytest.approx(accuracy[3])
    assert record.n_weighted == int((first != 1).sum())
    line = json.loads((tmp_path / "interventions.jsonl").read_text())
    assert set(RECORD_KEYS) <= set(line)
    assert line["mode"] == "direct_improvement" and line["epoch"] == 1 and line["bad"] is None
    assert line["seconds"] > 0 and line["thresholds"][1] is None  # no threshold for the target


def test_every_n_epochs_never_intervenes_after_the_last_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = patch_influence(monkeypatch, random_influence)
    probe = Probe()
    improvement = DirectImprovement(targets=[0], every_n_epochs=2, guard="off", log_figures=False)
    _fit(tmp_path, [ScriptedAccuracy({}), improvement, probe], max_epochs=6)
    assert [r.epoch for r in improvement.records] == [1, 3]  # not after epoch 5, the last
    # Each intervention's weights hold until the next one replaces them, then to the end of training.
    assert [r.weighted_epochs for r in improvement.records] == [[2, 3], [4, 5]]
    assert probe.weighted_epochs() == [2, 3, 4, 5] and len(calls) == 2


def test_worst_k_targets_the_lowest_classes_of_the_chosen_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    improvement = DirectImprovement(targets="worst:2", at_epochs=[1], log_figures=False)
    _fit(tmp_path, [ScriptedAccuracy({1: (0.9, 0.4, 0.6)}), improvement], max_epochs=3)
    assert improvement.records[0].targets == [1, 2]


def _skipped_run(tmp_path: Path) -> tuple[DirectImprovement, Probe, L.Trainer]:
    improvement, probe = DirectImprovement(targets=["a"], at_epochs=[1], log_figures=False), Probe()
    run = _fit(tmp_path, [ScriptedAccuracy({}), improvement, probe], max_epochs=3)
    return improvement, probe, run


@pytest.mark.parametrize(
    ("influence", "reason"),
    [
        (lambda n, k: torch.full((n, k), float("nan")), "non-finite"),
        (lambda n, k: torch.zeros(n, k), "no_improvement"),
    ],
)
def test_nan_or_useless_influence_skips_with_uniform_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, influence: object, reason: str
) -> None:
    patch_influence(monkeypatch, influence)
    with pytest.warns(UserWarning, match="skipped"):
        improvement, probe, run = _skipped_run(tmp_path)
    assert run.current_epoch == 3 and probe.weighted_epochs() == []
    (record,) = improvement.records
    assert record.status == "skipped" and reason in record.reason and record.after is None
    line = json.loads((tmp_path / "interventions.jsonl").read_text())
    assert line["status"] == "skipped" and reason in line["reason"]


def test_infeasible_search_and_engine_errors_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_influence(monkeypatch, random_influence)
    infeasible = SearchResult(
        status="infeasible",
        reason="no candidate's LP gave weights",
        weights=None,
        thresholds=np.full(3, np.nan),
        trust=0.5,
        fitness=-2e6,
        predicted_gain=np.full(3, np.nan),
        trial_accuracy=None,
        evaluations=18,
        trials=0,
        generations=3,
        seconds=0.1,
        stopped_early=False,
    )
    monkeypatch.setattr("lightning_pareto.pareto.search.search_weights", lambda *args, **kwargs: infeasible)
    with pytest.warns(UserWarning, match="infeasible"):
        improvement, probe, _ = _skipped_run(tmp_path / "lp")
    assert improvement.records[0].reason.startswith("infeasible") and probe.weighted_epochs() == []

    def singular(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("curvature is singular")

    monkeypatch.setattr("lightning_pareto.influence.category_influence", singular)
    with pytest.warns(UserWarning, match="curvature is singular"):
        improvement, probe, run = _skipped_run(tmp_path / "error")
    assert "RuntimeError" in improvement.records[0].reason and run.current_epoch == 3


def test_trial_fitness_trains_candidates_without_touching_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    probe = Probe()
    improvement = DirectImprovement(targets=[1], at_epochs=[1], fitness="trial", trial_batches=2, log_figures=False)
    _fit(tmp_path / "trial", [PerClassAccuracy(log_figure_every_n_epochs=0), improvement, probe], max_epochs=3)
    reference = Probe()
    _fit(tmp_path / "plain", [PerClassAccuracy(log_figure_every_n_epochs=0), reference], max_epochs=3)

    (record,) = improvement.records
    assert record.search["trials"] >= 1
    assert record.status == "applied" or "trial accuracy" in record.reason
    # The trials trained the run's model and put everything back: the weighted epoch starts from exactly
    # the state (parameters, optimizer, scheduler, global RNG) of a run without the callback.
    after, plain = probe.starts[2], reference.starts[2]
    assert states_equal(after["params"], plain["params"]) and states_equal(after["optimizer"], plain["optimizer"])
    assert torch.equal(after["torch_rng"], plain["torch_rng"]) and np.array_equal(
        after["numpy_rng"], plain["numpy_rng"]
    )


def test_trial_batches_auto_trains_a_quarter_of_the_epoch_per_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    trial_batch_sizes: list[int] = []

    def counting_loss(pl_module: ClassifierModule) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        # The trials alone call the loss the callback hands them: one call per trained batch.
        def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            trial_batch_sizes.append(len(y))
            return pl_module.per_sample_loss(logits, y)

        return loss

    monkeypatch.setattr("lightning_pareto.callbacks._intervention.loss_function", counting_loss)
    improvement = DirectImprovement(targets=[1], at_epochs=[1], fitness="trial", log_figures=False)
    run = _fit(tmp_path, [PerClassAccuracy(log_figure_every_n_epochs=0), improvement], max_epochs=3)

    (record,) = improvement.records
    assert run.num_training_batches == 6  # 180 samples in batches of 32
    assert record.search["trial_batches"] == 2  # ceil(6 / 4)
    trials = record.search["trials"]
    assert trials >= 1 and len(trial_batch_sizes) == 2 * trials
    assert record.cost_epochs is not None and 0 < record.cost_epochs["trials"] <= record.cost_epochs["search"]


def test_resume_mid_window_keeps_weights_and_callback_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_influence(monkeypatch, random_influence)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    improvement, probe = (
        DirectImprovement(targets=[2], at_epochs=[1], apply_epochs=2, guard="off", log_figures=False),
        IndexProbe(),
    )
    _fit(
        tmp_path / "a", [ScriptedAccuracy({}), improvement, probe, checkpoints], max_epochs=5, enable_checkpointing=True
    )

    resumed, resumed_probe = (
        DirectImprovement(targets=[2], at_epochs=[1], apply_epochs=2, guard="off", log_figures=False),
        IndexProbe(),
    )
    run = _fit(
        tmp_path / "b",
        [ScriptedAccuracy({}), resumed, resumed_probe],
        max_epochs=5,
        ckpt_path=str(tmp_path / "ckpt" / "epoch=2.ckpt"),
    )
    n = len(run.datamodule.train_dataset)
    assert resumed_probe.weighted_epochs() == [3]
    assert torch.equal(_weights_seen(resumed_probe, 3, n), _weights_seen(probe, 3, n))
    assert (
        [(r.epoch, r.weighted_epochs, r.status) for r in resumed.records]
        == [(r.epoch, r.weighted_epochs, r.status) for r in improvement.records]
        == [(1, [2, 3], "applied")]
    )
    assert not run.lightning_module.sample_weights.active


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": [], "at_epochs": [1]}, "targets is empty"),
        ({"targets": "worst", "at_epochs": [1]}, "worst:k"),
        ({"targets": [0]}, "exactly one of at_epochs"),
        ({"targets": [0], "at_epochs": [1], "every_n_epochs": 2}, "exactly one of at_epochs"),
        ({"targets": [0], "at_epochs": [1, 2], "apply_epochs": 2}, "closer than apply_epochs"),
        ({"targets": [0], "every_n_epochs": 1, "apply_epochs": 2}, "every_n_epochs"),
        ({"targets": [0], "at_epochs": [-1]}, "at_epochs"),
        ({"targets": [0], "at_epochs": [1], "w_max": 0.5}, "w_max"),
        ({"targets": [0], "at_epochs": [1], "curvature": "diag"}, "curvature"),
        ({"targets": [0], "at_epochs": [1], "retry": "again"}, "retry"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DirectImprovement(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": ["zebra"], "at_epochs": [0]}, "unknown class 'zebra'"),
        ({"targets": [3], "at_epochs": [0]}, "out of range"),
        ({"targets": "worst:3", "at_epochs": [0]}, "worst:3"),
        ({"targets": [0], "at_epochs": [1]}, "leave no epoch"),
        ({"targets": [0], "at_epochs": [0], "modules": ["net.head"]}, "modules"),
    ],
)
def test_bad_arguments_fail_at_setup_before_training(tmp_path: Path, kwargs: dict, message: str) -> None:
    probe = Probe()
    with pytest.raises(ValueError, match=message):
        _fit(tmp_path, [ScriptedAccuracy({}), DirectImprovement(**kwargs), probe], max_epochs=2)
    assert probe.starts == []


def test_curvature_samples_reach_the_engine_and_the_intervention_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning_pareto import influence

    calls: list[dict] = []
    real = influence.category_influence

    def recording(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr("lightning_pareto.influence.category_influence", recording)
    improvement = DirectImprovement(
        targets=["b"], at_epochs=[1], curvature="kfac", curvature_samples=40, log_figures=False
    )
    _fit(tmp_path, [PerClassAccuracy(log_figure_every_n_epochs=0), improvement], max_epochs=3)
    assert [call["curvature_samples"] for call in calls] == [40]
    assert improvement.records[0].status == "applied"
    # The record says what each influence phase cost (K-FAC: no correction pass).
    phases = improvement.records[0].influence_seconds
    assert set(phases) == {"factors", "eigen", "queries", "precondition", "scores"}
    assert all(value > 0.0 for value in phases.values()) and sum(phases.values()) < improvement.records[0].seconds


def _guarded_run(
    tmp_path: Path, script: dict, support: int = 1000, **kwargs: object
) -> tuple[DirectImprovement, IndexProbe, L.Trainer]:
    improvement, probe = DirectImprovement(targets=["a"], at_epochs=[1], log_figures=False, **kwargs), IndexProbe()
    run = _fit(tmp_path, [ScriptedAccuracy(script, support=support), improvement, probe], max_epochs=5)
    return improvement, probe, run


def _same_start(a: dict, b: dict) -> bool:
    return (
        states_equal(a["params"], b["params"])
        and states_equal(a["optimizer"], b["optimizer"])
        and states_equal(a["scheduler"], b["scheduler"])
        and torch.equal(a["torch_rng"], b["torch_rng"])
    )


def test_weights_hold_until_the_end_of_training_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_influence(monkeypatch, random_influence)
    improvement, probe, run = _guarded_run(tmp_path, {})
    n = len(run.datamodule.train_dataset)
    # No class falls in the first weighted epoch, so the default guard (paired_on_drop) trains no counterfactual.
    assert probe.weighted_epochs() == [2, 3, 4] and run.current_epoch == 5
    assert torch.equal(_weights_seen(probe, 2, n), _weights_seen(probe, 4, n))
    (record,) = improvement.records
    assert record.status == "applied" and record.weighted_epochs == [2, 3, 4] and record.reason == ""
    assert [entry["action"] for entry in record.guard] == ["kept"] and record.extra_epochs == 0
    assert not run.lightning_module.sample_weights.active  # cleared once fit ends


def test_guard_rolls_back_a_weighted_epoch_that_hurts_a_non_target_and_retries_with_shrunk_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    # Epoch 2 (weighted) lowers the non-target c by 50 points; its redo (epoch 3) and later epochs do not.
    improvement, probe, run = _guarded_run(tmp_path, {2: (0.9, 0.8, 0.3)}, guard="rollback", tolerance=0.05)
    n = len(run.datamodule.train_dataset)
    first, retry = _weights_seen(probe, 2, n), _weights_seen(probe, 3, n)
    torch.testing.assert_close(retry, 1.0 + 0.5 * (first - 1.0))  # half the distance to uniform weights
    assert _same_start(probe.starts[3], probe.starts[2])  # the retry replays the epoch from its start, RNG included
    assert run.fit_loop.max_epochs == 6 and run.current_epoch == 6  # the retry is one more epoch
    (record,) = improvement.records
    assert [(e["epoch"], e["action"], e["violations"]) for e in record.guard] == [
        (2, "rollback", [2]),
        (3, "kept", []),
        (4, "kept", []),
        (5, "kept", []),
    ]
    assert record.weighted_epochs == [3, 4, 5] and record.status == "applied" and record.extra_epochs == 1
    assert record.guard[0]["change"] == pytest.approx([0.1, 0.0, -0.5])


def test_guard_drops_the_weights_after_repeated_violations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_influence(monkeypatch, random_influence)
    hurt = (0.9, 0.8, 0.3)
    with pytest.warns(UserWarning, match="dropped the weights"):
        improvement, probe, run = _guarded_run(
            tmp_path, {2: hurt, 3: hurt, 4: hurt}, guard="rollback", tolerance=0.05, max_retries=2
        )
    # Epochs 2, 3 and 4 are the same epoch trained with |w - 1| x1, x0.5, x0.25; all hurt c, so epoch 5
    # replays it once more without weights, from the same start.
    assert probe.weighted_epochs() == [2, 3, 4]
    assert all(_same_start(probe.starts[e], probe.starts[2]) for e in (3, 4, 5))
    n = len(run.datamodule.train_dataset)
    torch.testing.assert_close(_weights_seen(probe, 4, n), 1.0 + 0.25 * (_weights_seen(probe, 2, n) - 1.0))
    (record,) = improvement.records
    assert record.status == "dropped" and [e["action"] for e in record.guard] == ["rollback", "rollback", "dropped"]
    assert record.weighted_epochs == [] and not run.lightning_module.sample_weights.active
    assert run.current_epoch == 8  # three redone epochs


def test_guard_shrink_mode_shrinks_without_rolling_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_influence(monkeypatch, random_influence)
    improvement, probe, run = _guarded_run(tmp_path, {2: (0.9, 0.8, 0.3)}, guard="shrink", tolerance=0.05)
    n = len(run.datamodule.train_dataset)
    torch.testing.assert_close(_weights_seen(probe, 3, n), 1.0 + 0.5 * (_weights_seen(probe, 2, n) - 1.0))
    assert run.current_epoch == 5  # nothing redone
    (record,) = improvement.records
    assert [e["action"] for e in record.guard] == ["shrink", "kept", "kept"] and record.weighted_epochs == [2, 3, 4]


@pytest.mark.parametrize(
    "drop",
    [
        (0.5, 0.78, 0.8),  # a is the target; b's 2 points are within the tolerance
        (0.9, 0.8, 0.6),  # c's 20 points are within the sampling noise of 20 validation samples (25 points)
    ],
)
def test_guard_ignores_drops_of_targets_and_drops_within_tolerance_or_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop: tuple
) -> None:
    patch_influence(monkeypatch, random_influence)
    improvement, _, run = _guarded_run(tmp_path, {2: drop}, support=20, guard="rollback", tolerance=0.05)
    assert run.current_epoch == 5 and [e["action"] for e in improvement.records[0].guard] == ["kept"] * 3


def test_resume_with_a_pending_guard_rollback_replays_the_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    script = {2: (0.9, 0.8, 0.3)}
    improvement, probe = (
        DirectImprovement(targets=["a"], at_epochs=[1], guard="rollback", tolerance=0.05, log_figures=False),
        IndexProbe(),
    )
    _fit(
        tmp_path / "a",
        [ScriptedAccuracy(script), improvement, probe, checkpoints],
        max_epochs=5,
        enable_checkpointing=True,
    )

    resumed, resumed_probe = (
        DirectImprovement(targets=["a"], at_epochs=[1], guard="rollback", tolerance=0.05, log_figures=False),
        IndexProbe(),
    )
    run = _fit(
        tmp_path / "b",
        [ScriptedAccuracy(script), resumed, resumed_probe],
        max_epochs=5,
        ckpt_path=str(tmp_path / "ckpt" / "epoch=2.ckpt"),
    )
    n = len(run.datamodule.train_dataset)
    assert states_equal(resumed_probe.starts[0]["params"], probe.starts[3]["params"])  # the rolled-back start
    assert torch.equal(_weights_seen(resumed_probe, 3, n), _weights_seen(probe, 3, n))
    assert resumed_probe.batch_order(3) == probe.batch_order(3) == probe.batch_order(2)  # the same batches again
    assert run.current_epoch == 6
    assert [(e["epoch"], e["action"]) for e in resumed.records[0].guard] == [
        (e["epoch"], e["action"]) for e in improvement.records[0].guard
    ]


def test_paired_guard_judges_the_weighted_epoch_against_the_same_epoch_without_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    # Epoch 2: the counterfactual (no weights); 3: the weighted try, c 50 points below it; 4: the retry, fine.
    improvement, probe, run = _guarded_run(tmp_path, {3: (0.9, 0.8, 0.3)}, guard="paired", tolerance=0.05)
    reference_probe = IndexProbe()
    _fit(tmp_path / "plain", [ScriptedAccuracy({}), reference_probe], max_epochs=5)
    n = len(run.datamodule.train_dataset)
    assert probe.weighted_epochs() == [3, 4, 5, 6]
    assert _same_start(probe.starts[2], reference_probe.starts[2])  # the counterfactual is the plain run's epoch
    assert _same_start(probe.starts[3], probe.starts[2]) and _same_start(probe.starts[4], probe.starts[2])
    torch.testing.assert_close(_weights_seen(probe, 4, n), 1.0 + 0.5 * (_weights_seen(probe, 3, n) - 1.0))
    (record,) = improvement.records
    assert [(e["epoch"], e["action"]) for e in record.guard] == [(2, "counterfactual"), (3, "retry"), (4, "kept")]
    assert record.guard[1]["change"] == pytest.approx([0.1, 0.0, -0.5]) and record.weighted_epochs == [4, 5, 6]
    assert run.fit_loop.max_epochs == 7 and record.extra_epochs == 2  # the counterfactual and the rejected try


def test_paired_guard_keeps_the_unweighted_epoch_after_repeated_violations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    hurt = (0.9, 0.8, 0.3)
    improvement, probe, run = _guarded_run(tmp_path, {3: hurt, 4: hurt, 5: hurt}, guard="paired", tolerance=0.05)
    reference = _fit(tmp_path / "plain", [ScriptedAccuracy({})], max_epochs=5)
    (record,) = improvement.records
    assert record.status == "dropped" and [e["action"] for e in record.guard] == [
        "counterfactual",
        "retry",
        "retry",
        "dropped",
    ]
    assert probe.weighted_epochs() == [3, 4, 5] and run.fit_loop.max_epochs == 8 and record.extra_epochs == 3
    # The unweighted epoch stands: the run ends exactly where the run without the callback ends.
    assert states_equal(run.lightning_module.state_dict(), reference.lightning_module.state_dict())


def test_chosen_epochs_count_the_epochs_that_stand_after_a_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    # Intervene after epochs 1 and 3; epoch 2 (weighted) is rolled back and redone as trainer epoch 3, so
    # the second intervention comes after trainer epoch 4, the fourth epoch that stands.
    improvement = DirectImprovement(
        targets=["a"], at_epochs=[1, 3], guard="rollback", tolerance=0.05, log_figures=False
    )
    run = _fit(tmp_path, [ScriptedAccuracy({2: (0.9, 0.8, 0.3)}), improvement], max_epochs=6)
    assert [r.epoch for r in improvement.records] == [1, 4]
    assert [r.weighted_epochs for r in improvement.records] == [[3, 4], [5, 6]]
    assert run.current_epoch == 7


class PlainMeanModule(ClassifierModule):
    """A module that opts into the weight contract but reduces its loss with a plain mean."""

    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        return torch.nn.functional.cross_entropy(self(x), y)


def test_weights_that_never_reach_the_loss_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_influence(monkeypatch, random_influence)
    reference = classifier()
    module = PlainMeanModule(reference.net, 3, class_names=["a", "b", "c"], optimizer=reference.optimizer_factory)
    improvement = DirectImprovement(targets=["a"], at_epochs=[1], log_figures=False)
    L.seed_everything(0)
    with pytest.warns(UserWarning, match="never looked them up"):
        trainer(tmp_path, [ScriptedAccuracy({}), improvement], 4).fit(module, blobs_datamodule())
    (record,) = improvement.records
    assert "did not reach the loss" in record.reason
    line = json.loads((tmp_path / "interventions.jsonl").read_text())
    assert "did not reach the loss" in line["reason"]


def test_the_reference_module_uses_its_weights_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    improvement = DirectImprovement(targets=["a"], at_epochs=[1], log_figures=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|smaller than the logging).*")
        _fit(tmp_path, [ScriptedAccuracy({}), improvement], max_epochs=4)
    assert improvement.records[0].reason == ""


def test_a_resumed_run_writes_each_intervention_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_influence(monkeypatch, random_influence)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    first = DirectImprovement(targets=[0], at_epochs=[1, 3], apply_epochs=1, guard="off", log_figures=False)
    _fit(tmp_path / "run", [ScriptedAccuracy({}), first, checkpoints], max_epochs=6, enable_checkpointing=True)
    resumed = DirectImprovement(targets=[0], at_epochs=[1, 3], apply_epochs=1, guard="off", log_figures=False)
    _fit(
        tmp_path / "run",
        [ScriptedAccuracy({}), resumed],
        max_epochs=6,
        ckpt_path=str(tmp_path / "ckpt" / "epoch=2.ckpt"),
    )
    lines = [json.loads(line) for line in (tmp_path / "run" / "interventions.jsonl").read_text().splitlines()]
    assert [(line["epoch"], line["weighted_epochs"]) for line in lines] == [(1, [2]), (3, [4])]


def test_resuming_after_a_chosen_epoch_that_never_ran_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_influence(monkeypatch, random_influence)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    _fit(tmp_path / "a", [ScriptedAccuracy({}), checkpoints], max_epochs=3, enable_checkpointing=True)
    late = DirectImprovement(targets=[0], at_epochs=[0, 3], log_figures=False)
    with pytest.warns(UserWarning, match=r"after at_epochs \[0\]"):
        _fit(
            tmp_path / "b",
            [ScriptedAccuracy({}), late],
            max_epochs=5,
            ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"),
        )
    assert [r.epoch for r in late.records] == [3]


def test_a_nan_validation_feature_is_named_as_the_cause_of_a_skip(tmp_path: Path) -> None:
    data = blobs_datamodule()
    data.setup("fit")
    x, y = data.val_arrays
    x[int(torch.nonzero(y == 1)[0]), 0] = float("nan")  # one validation sample of class b (the dataset shares x)
    improvement = DirectImprovement(targets=["a"], at_epochs=[1], curvature="exact", log_figures=False)
    L.seed_everything(0)
    with pytest.warns(UserWarning, match=r"column\(s\) \[1\] are not finite"):
        trainer(tmp_path, [PerClassAccuracy(log_figure_every_n_epochs=0), improvement], 3).fit(classifier(), data)
    (record,) = improvement.records
    assert record.status == "skipped"
    assert "column(s) [1] are not finite: the validation gradients of those classes" in record.reason
    assert "never yielded" not in record.reason


def test_resume_between_the_counterfactual_and_the_weighted_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    improvement, probe = (
        DirectImprovement(targets=["a"], at_epochs=[1], guard="paired", log_figures=False),
        IndexProbe(),
    )
    _fit(
        tmp_path / "a", [ScriptedAccuracy({}), improvement, probe, checkpoints], max_epochs=4, enable_checkpointing=True
    )
    resumed, resumed_probe = (
        DirectImprovement(targets=["a"], at_epochs=[1], guard="paired", log_figures=False),
        IndexProbe(),
    )
    run = _fit(
        tmp_path / "b",
        [ScriptedAccuracy({}), resumed, resumed_probe],
        max_epochs=4,
        ckpt_path=str(tmp_path / "ckpt" / "epoch=2.ckpt"),
    )  # after the counterfactual epoch 2
    n = len(run.datamodule.train_dataset)
    assert resumed_probe.batch_order(3) == probe.batch_order(3) == probe.batch_order(2)  # the counterfactual's batches
    assert torch.equal(_weights_seen(resumed_probe, 3, n), _weights_seen(probe, 3, n))
    assert states_equal(resumed_probe.starts[0]["params"], probe.starts[2]["params"])  # from the counterfactual's start
    assert [(r.epoch, r.weighted_epochs, [e["action"] for e in r.guard]) for r in resumed.records] == [
        (r.epoch, r.weighted_epochs, [e["action"] for e in r.guard]) for r in improvement.records
    ]


def test_the_searched_weights_are_saved_by_dataset_index_next_to_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = patch_influence(monkeypatch, random_influence)
    improvement, probe = DirectImprovement(targets=["a"], at_epochs=[1], guard="off", log_figures=False), IndexProbe()
    run = _fit(tmp_path, [ScriptedAccuracy({}), improvement, probe], max_epochs=3)
    (record,) = improvement.records
    line = json.loads((tmp_path / "interventions.jsonl").read_text())
    assert line["weights_file"] == record.weights_file == "intervention_weights/001_direct_improvement_epoch1.npz"
    saved = np.load(tmp_path / record.weights_file)
    n = len(run.datamodule.train_dataset)
    assert saved["index"].tolist() == list(range(n)) and saved["targets"].tolist() == [0]
    # What the batches of the weighted epoch were multiplied by, looked up by their dataset indices.
    torch.testing.assert_close(torch.from_numpy(saved["weights"]), _weights_seen(probe, 2, n))
    torch.testing.assert_close(torch.from_numpy(saved["influence"]), random_influence(calls[0], 3))


@pytest.mark.parametrize("trial_screen", [None, 0.8])
def test_the_trial_screen_setting_reaches_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trial_screen: float | None
) -> None:
    import lightning_pareto.pareto.search as search

    patch_influence(monkeypatch, random_influence)
    screens: list[float | None] = []
    original = search.search_weights

    def recording(*args, **kwargs):
        screens.append(kwargs["trial_screen"])
        return original(*args, **kwargs)

    monkeypatch.setattr(search, "search_weights", recording)
    improvement = DirectImprovement(
        targets=[1], at_epochs=[1], fitness="trial", trial_screen=trial_screen, log_figures=False
    )
    _fit(tmp_path, [PerClassAccuracy(log_figure_every_n_epochs=0), improvement], max_epochs=3)
    assert screens == [trial_screen]
    if trial_screen is None:  # the paper's protocol: every candidate trained
        assert improvement.records[0].search["trials_skipped"] == 0


def test_paired_on_drop_guard_adds_no_epoch_when_no_class_falls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    improvement, probe, run = _guarded_run(tmp_path, {}, guard="paired_on_drop", tolerance=0.05)
    assert probe.weighted_epochs() == [2, 3, 4] and run.fit_loop.max_epochs == 5 and run.current_epoch == 5
    (record,) = improvement.records
    assert [(e["epoch"], e["action"]) for e in record.guard] == [(2, "kept")]
    assert record.weighted_epochs == [2, 3, 4] and record.extra_epochs == 0 and record.status == "applied"


def test_paired_on_drop_guard_keeps_a_weighted_epoch_whose_drop_the_counterfactual_shares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    # Epoch 2 (weighted) lowers c by 50 points against epoch 1; its counterfactual (epoch 3, no weights, same
    # batches) lowers it as much: the drop is the epoch's, not the weights'. The run goes on from epoch 2's end.
    hurt = (0.9, 0.8, 0.3)
    improvement, probe, run = _guarded_run(tmp_path, {2: hurt, 3: hurt}, guard="paired_on_drop", tolerance=0.05)
    unguarded, unguarded_probe = (
        DirectImprovement(targets=["a"], at_epochs=[1], guard="off", log_figures=False),
        IndexProbe(),
    )
    reference = _fit(tmp_path / "off", [ScriptedAccuracy({2: hurt, 3: hurt}), unguarded, unguarded_probe], max_epochs=5)
    n = len(run.datamodule.train_dataset)
    assert probe.weighted_epochs() == [2, 4, 5] and run.fit_loop.max_epochs == 6
    assert _same_start(probe.starts[3], probe.starts[2])  # the counterfactual replays the weighted epoch's start
    assert probe.batch_order(3) == probe.batch_order(2)
    # After it, the run is where the unguarded run was after the weighted epoch: state, RNG, batches, weights.
    assert _same_start(probe.starts[4], unguarded_probe.starts[3])
    assert probe.batch_order(4) == unguarded_probe.batch_order(3)
    assert torch.equal(_weights_seen(probe, 4, n), _weights_seen(unguarded_probe, 3, n))
    assert states_equal(run.lightning_module.state_dict(), reference.lightning_module.state_dict())
    (record,) = improvement.records
    assert [(e["epoch"], e["action"]) for e in record.guard] == [(2, "confirm"), (3, "counterfactual"), (2, "kept")]
    assert record.guard[0]["violations"] == [2] and record.guard[2]["violations"] == []
    assert record.weighted_epochs == [2, 4, 5] and record.extra_epochs == 1 and record.status == "applied"


def test_paired_on_drop_guard_retries_a_weighted_epoch_below_its_counterfactual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    # Epoch 2 (weighted) lowers c; the counterfactual (epoch 3) does not: the weights did. Epoch 4 retries it with
    # |w - 1| halved, from the same start, and stands.
    improvement, probe, run = _guarded_run(
        tmp_path, {2: (0.9, 0.8, 0.3)}, guard="paired_on_drop", tolerance=0.05, retry="train"
    )
    n = len(run.datamodule.train_dataset)
    assert probe.weighted_epochs() == [2, 4, 5, 6] and run.fit_loop.max_epochs == 7
    assert _same_start(probe.starts[3], probe.starts[2]) and _same_start(probe.starts[4], probe.starts[2])
    torch.testing.assert_close(_weights_seen(probe, 4, n), 1.0 + 0.5 * (_weights_seen(probe, 2, n) - 1.0))
    (record,) = improvement.records
    assert [(e["epoch"], e["action"]) for e in record.guard] == [
        (2, "confirm"),
        (3, "counterfactual"),
        (2, "retry"),
        (4, "kept"),
    ]
    assert record.guard[2]["change"] == pytest.approx([0.1, 0.0, -0.5]) and record.guard[2]["against"] == 3
    assert record.weighted_epochs == [4, 5, 6] and record.extra_epochs == 2


def test_paired_on_drop_guard_without_retries_keeps_the_counterfactual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    with pytest.warns(UserWarning, match="dropped the weights"):
        improvement, probe, run = _guarded_run(
            tmp_path, {2: (0.9, 0.8, 0.3)}, guard="paired_on_drop", tolerance=0.05, max_retries=0
        )
    reference = _fit(tmp_path / "plain", [ScriptedAccuracy({})], max_epochs=5)
    (record,) = improvement.records
    assert record.status == "dropped" and [e["action"] for e in record.guard] == [
        "confirm",
        "counterfactual",
        "dropped",
    ]
    assert probe.weighted_epochs() == [2] and run.fit_loop.max_epochs == 6 and record.extra_epochs == 1
    # The counterfactual stands: the run ends exactly where the run without the callback ends.
    assert states_equal(run.lightning_module.state_dict(), reference.lightning_module.state_dict())


def test_resume_during_the_paired_on_drop_counterfactual_ends_as_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    hurt = (0.9, 0.8, 0.3)
    script = {2: hurt, 3: hurt}
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    kwargs = {"targets": ["a"], "at_epochs": [1], "guard": "paired_on_drop", "tolerance": 0.05, "log_figures": False}
    improvement = DirectImprovement(**kwargs)
    run = _fit(
        tmp_path / "a", [ScriptedAccuracy(script), improvement, checkpoints], max_epochs=5, enable_checkpointing=True
    )
    resumed = DirectImprovement(**kwargs)
    again = _fit(
        tmp_path / "b",
        [ScriptedAccuracy(script), resumed],
        max_epochs=5,
        ckpt_path=str(tmp_path / "ckpt" / "epoch=2.ckpt"),
    )
    assert [(e["epoch"], e["action"]) for e in resumed.records[0].guard] == [
        (e["epoch"], e["action"]) for e in improvement.records[0].guard
    ]
    assert resumed.records[0].weighted_epochs == improvement.records[0].weighted_epochs == [2, 4, 5]
    assert states_equal(again.lightning_module.state_dict(), run.lightning_module.state_dict())


class _StopAfter(L.Callback):
    """Stops the fit at the end of one trainer epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def test_a_fit_stopped_before_the_paired_on_drop_counterfactual_keeps_the_weighted_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    hurt = (0.9, 0.8, 0.3)
    kwargs = {"targets": ["a"], "at_epochs": [1], "tolerance": 0.05, "log_figures": False}
    # Epoch 2 (weighted) lowers c, which calls for a counterfactual, but the fit stops right after it.
    improvement = DirectImprovement(guard="paired_on_drop", **kwargs)
    run = _fit(tmp_path / "a", [ScriptedAccuracy({2: hurt}), improvement, _StopAfter(2)], max_epochs=5)
    reference = _fit(
        tmp_path / "b", [ScriptedAccuracy({2: hurt}), DirectImprovement(guard="off", **kwargs), _StopAfter(2)], 5
    )
    # The weighted epoch, the last trained, stands: the model is the unguarded fit's after it.
    assert run.current_epoch == reference.current_epoch == 3
    assert states_equal(run.lightning_module.state_dict(), reference.lightning_module.state_dict())
    (record,) = improvement.records
    assert record.weighted_epochs == [2] and [e["action"] for e in record.guard] == ["confirm"]
    assert "before the guard's paired check finished" in record.reason
    assert not run.lightning_module.sample_weights.active


def _scripted_blends(monkeypatch: pytest.MonkeyPatch, accuracies: list[tuple[float, ...]]) -> list[dict]:
    """Make each validation pass of ``retry="blend"`` return the next of ``accuracies``; records the model seen."""
    import lightning_pareto.callbacks.direct as direct

    seen: list[dict] = []

    def scripted(model: torch.nn.Module, loader: object, num_classes: int) -> np.ndarray:
        seen.append({key: value.clone() for key, value in model.state_dict().items()})
        return np.array(accuracies[len(seen) - 1])

    monkeypatch.setattr(direct, "per_class_accuracy", scripted)
    return seen


def test_blended_retry_continues_between_the_weighted_epoch_and_its_counterfactual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_influence(monkeypatch, random_influence)
    # Epoch 2 (weighted) lowers c; its counterfactual (epoch 3) does not. The first blend (half way) keeps c.
    # (The blends' validation passes: the counterfactual's state first, then each blend.)
    seen = _scripted_blends(monkeypatch, [(0.8, 0.8, 0.8), (0.8, 0.8, 0.8)])
    improvement, probe, run = _guarded_run(
        tmp_path, {2: (0.9, 0.8, 0.3)}, guard="paired_on_drop", tolerance=0.05, retry="blend"
    )
    off, off_probe = DirectImprovement(targets=["a"], at_epochs=[1], guard="off", log_figures=False), IndexProbe()
    _fit(tmp_path / "off", [ScriptedAccuracy({}), off, off_probe], max_epochs=5)
    plain_probe = IndexProbe()
    _fit(tmp_path / "plain", [ScriptedAccuracy({}), plain_probe], max_epochs=5)
    # No retry epoch: the counterfactual is the only added one.
    assert probe.weighted_epochs() == [2, 4, 5] and run.fit_loop.max_epochs == 6
    # Epoch 4 starts half way between the weighted epoch's end (the unguarded run) and the plain run's.
    weighted, plain = off_probe.starts[3], plain_probe.starts[3]
    for key, value in probe.starts[4]["params"].items():
        torch.testing.assert_close(value, 0.5 * (weighted["params"][key] + plain["params"][key]))
    # The validation passes measured the counterfactual's end (the plain run's), then judged the blend.
    assert states_equal({f"net.{key}": value for key, value in seen[0].items()}, plain["params"])
    assert states_equal({f"net.{key}": value for key, value in seen[1].items()}, probe.starts[4]["params"])
    for state, w, p in zip(
        probe.starts[4]["optimizer"]["state"].values(),
        weighted["optimizer"]["state"].values(),
        plain["optimizer"]["state"].values(),
    ):
        torch.testing.assert_close(state["momentum_buffer"], 0.5 * (w["momentum_buffer"] + p["momentum_buffer"]))
    assert states_equal(probe.starts[4]["scheduler"], plain["scheduler"])
    n = len(run.datamodule.train_dataset)
    torch.testing.assert_close(_weights_seen(probe, 4, n), 1.0 + 0.5 * (_weights_seen(probe, 2, n) - 1.0))
    (record,) = improvement.records
    assert [(e["epoch"], e["action"]) for e in record.guard] == [
        (2, "confirm"),
        (3, "counterfactual"),
        (2, "blend"),
        (3, "kept"),
    ]
    assert record.guard[3]["blend"] == 0.5 and record.guard[3]["scale"] == 0.5
    assert record.weighted_epochs == [3, 4, 5] and record.extra_epochs == 1 and record.status == "applied"


def test_blended_retry_drops_the_weights_when_no_blend_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch_influence(monkeypatch, random_influence)
    hurt = (0.9, 0.8, 0.3)
    seen = _scripted_blends(monkeypatch, [(0.8, 0.8, 0.8), hurt, hurt])
    with pytest.warns(UserWarning, match="dropped the weights"):
        improvement, probe, run = _guarded_run(
            tmp_path, {2: hurt}, guard="paired_on_drop", tolerance=0.05, retry="blend", max_retries=2
        )
    reference = _fit(tmp_path / "plain", [ScriptedAccuracy({})], max_epochs=5)
    (record,) = improvement.records
    assert [e["action"] for e in record.guard] == ["confirm", "counterfactual", "blend", "retry", "dropped"]
    assert [e.get("blend") for e in record.guard[3:]] == [0.5, 0.25] and len(seen) == 3
    # The counterfactual's end is back in place: the run ends exactly where the run without the callback ends.
    assert record.status == "dropped" and run.fit_loop.max_epochs == 6
    assert states_equal(run.lightning_module.state_dict(), reference.lightning_module.state_dict())
