"""An intervention's cost in epochs: the callback's own epoch clock, the cost in the record, its line in the table."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import lightning as L
import pytest
from _intervention_helpers import ScriptedAccuracy, blobs_datamodule, classifier, trainer

from lightning_pareto import CourseCorrection, DirectImprovement, PerClassAccuracy
from lightning_pareto.callbacks import _cost
from lightning_pareto.callbacks._cost import EpochClock, cost_in_epochs
from lightning_pareto.callbacks._record import InterventionRecord
from lightning_pareto.callbacks._report import intervention_table


class _FakeTime:
    """A ``perf_counter`` that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_clock_takes_the_median_of_normal_epochs_to_the_last_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, now = EpochClock(), _FakeTime()
    monkeypatch.setattr(_cost.time, "perf_counter", now)
    assert clock.epoch_seconds() is None
    clock.stop()  # no epoch started: nothing timed
    assert clock.epoch_seconds() is None

    for seconds in (3.0, 1.0, 2.0):
        clock.start()
        now.now += seconds
        clock.validation_end()
        now.now += 50.0  # epoch-end work after validation (an intervention, a checkpoint) is not the epoch's
        clock.stop()
    clock.start(added=True)  # a redo: timed, kept out of the median
    now.now += 40.0
    clock.stop()  # no validation: the epoch ends at its training end
    assert clock.normal_seconds == [3.0, 1.0, 2.0] and clock.last_seconds == 40.0
    assert clock.epoch_seconds() == 2.0

    restored = EpochClock()
    restored.load_state_dict(clock.state_dict())
    assert restored.epoch_seconds() == 2.0 and restored.last_seconds == 40.0
    old_checkpoint = EpochClock()
    old_checkpoint.load_state_dict({})
    assert old_checkpoint.epoch_seconds() is None


def test_before_any_normal_epoch_the_latest_epoch_sets_the_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, now = EpochClock(), _FakeTime()
    monkeypatch.setattr(_cost.time, "perf_counter", now)
    clock.start(added=True)
    now.now += 4.0
    clock.stop()
    assert clock.normal_seconds == [] and clock.epoch_seconds() == 4.0


def test_cost_in_epochs_divides_each_part_by_the_epoch_time() -> None:
    record = InterventionRecord(
        epoch=1,
        mode="direct_improvement",
        targets=[0],
        before=None,
        seconds=10.0,
        influence_seconds={"factors": 2.0, "scores": 4.0},
        search={"seconds": 3.0, "trial_seconds": 2.5},
        extra_epochs=2,
    )
    cost = cost_in_epochs(record, 2.0)
    assert cost == {
        "influence": 3.0,
        "search": 1.5,
        "trials": 1.25,
        "other": 0.5,  # 10 s - 6 s influence - 3 s search: the ceiling check, logging, saving
        "extra_epochs": 2.0,
        "total": 7.0,
    }
    assert cost_in_epochs(record, None) is None and cost_in_epochs(record, 0.0) is None
    skipped = InterventionRecord(epoch=1, mode="direct_improvement", targets=[0], before=None)
    assert cost_in_epochs(skipped, 2.0) == {
        "influence": 0.0,
        "search": 0.0,
        "trials": 0.0,
        "other": 0.0,
        "extra_epochs": 0.0,
        "total": 0.0,
    }


def test_a_fit_records_the_cost_in_its_own_epochs(tmp_path: Path) -> None:
    # An intervention at the very first epoch's end: the epoch that just ended gives the epoch time.
    improvement = DirectImprovement(targets=["b"], at_epochs=[0], curvature="exact", guard="paired", log_figures=False)
    L.seed_everything(0)
    run = trainer(tmp_path, [PerClassAccuracy(log_figure_every_n_epochs=0), improvement], max_epochs=3)
    run.fit(classifier(), blobs_datamodule())

    (line,) = [json.loads(text) for text in (tmp_path / "interventions.jsonl").read_text().splitlines()]
    assert line["status"] == "applied" and line["extra_epochs"] == 1  # the paired guard's counterfactual epoch
    cost, epoch_seconds = line["cost_epochs"], line["epoch_seconds"]
    assert epoch_seconds > 0
    assert set(cost) == {"influence", "search", "trials", "other", "extra_epochs", "total"}
    assert cost["extra_epochs"] == line["extra_epochs"] and cost["trials"] == 0.0  # predicted fitness trains nothing
    assert cost["influence"] > 0 and cost["search"] > 0 and cost["total"] >= cost["influence"]
    assert cost["total"] == pytest.approx(cost["influence"] + cost["search"] + cost["other"] + cost["extra_epochs"])
    assert (cost["total"] - cost["extra_epochs"]) * epoch_seconds == pytest.approx(line["seconds"], rel=1e-6)
    # Epochs 0 and 3 are normal; 1 (the counterfactual) and 2 (the weighted try) were added by the guard.
    assert len(improvement.epoch_clock.normal_seconds) == 2


def test_a_course_correction_redo_is_not_a_normal_epoch_and_is_charged(tmp_path: Path) -> None:
    correction = CourseCorrection(drop_threshold=0.05, curvature="exact", log_figures=False)
    L.seed_everything(0)
    run = trainer(tmp_path, [ScriptedAccuracy({2: (0.8, 0.8, 0.5)}), correction], max_epochs=4)
    run.fit(classifier(), blobs_datamodule())

    (record,) = correction.records
    assert record.status == "applied" and record.extra_epochs == 1
    assert len(correction.epoch_clock.normal_seconds) == 4  # five epochs trained, one of them the redo
    assert record.cost_epochs is not None and record.cost_epochs["extra_epochs"] == 1.0
    # Finished at the redo's end: the median of the normal epochs before it (0, 1 and the detrimental 2).
    assert record.epoch_seconds == statistics.median(correction.epoch_clock.normal_seconds[:3])


def test_the_table_line_shows_the_cost_in_epochs() -> None:
    record = InterventionRecord(
        epoch=3,
        mode="direct_improvement",
        targets=[0],
        before=[0.5, 0.5],
        after=[0.6, 0.5],
        status="applied",
        seconds=1.9,
        n_weighted=120,
        cost_epochs={"influence": 2.0, "search": 1.0, "trials": 0.0, "other": 0.1, "extra_epochs": 1.0, "total": 4.1},
    )
    assert "(1.9 s = 3.1 epochs + 1 extra epoch, 120 samples reweighted)" in intervention_table([record], ["a", "b"])
    record.cost_epochs = None  # untimed, or a record written before the cost existed
    assert "(1.9 s, 120 samples reweighted)" in intervention_table([record], ["a", "b"])
