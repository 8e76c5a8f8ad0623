"""InterventionRecord's JSON, the records file and the weights file, read back as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lightning_pareto.callbacks._record import InterventionRecord, save_weights, write_records


def test_record_json_is_strict_and_round_trips() -> None:
    record = InterventionRecord(
        epoch=3,
        mode="course_correction",
        targets=[1],
        before=[0.5, float("nan")],
        after=[0.75, 0.5],
        bad=[0.25, 0.5],
        status="applied",
        seconds=1.5,
        weighted_epochs=[4],
    )
    line = json.dumps(record.to_dict(), allow_nan=False)
    restored = InterventionRecord.from_dict(json.loads(line))
    assert restored.before == [0.5, None] and restored.bad == [0.25, 0.5] and restored.weighted_epochs == [4]


def test_a_record_keeps_its_cost_and_one_written_before_the_cost_still_loads() -> None:
    record = InterventionRecord(
        epoch=2,
        mode="direct_improvement",
        targets=[0],
        before=[0.5],
        epoch_seconds=1.25,
        cost_epochs={"influence": 1.0, "search": 0.5, "trials": 0.0, "other": 0.1, "extra_epochs": 1.0, "total": 2.6},
    )
    restored = InterventionRecord.from_dict(json.loads(json.dumps(record.to_dict(), allow_nan=False)))
    assert restored.epoch_seconds == 1.25 and restored.cost_epochs == record.cost_epochs
    old_line = {key: value for key, value in record.to_dict().items() if key not in ("epoch_seconds", "cost_epochs")}
    old = InterventionRecord.from_dict({**old_line, "a_key_from_the_future": 1})
    assert old.epoch_seconds is None and old.cost_epochs is None and old.targets == [0]


def test_update_from_takes_over_every_field() -> None:
    decided = InterventionRecord(
        epoch=2,
        mode="direct_improvement",
        targets=[0, 2],
        before=[0.5, 0.5, 0.5],
        status="applied",
        n_weighted=7,
        guard=[{"epoch": 3, "action": "kept"}],
    )
    local = InterventionRecord(epoch=2, mode="direct_improvement", targets=[0], before=None, reason="not decided here")
    local.update_from(decided.to_dict())
    assert local == decided


def test_write_records_rewrites_one_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "interventions.jsonl"
    first = InterventionRecord(epoch=1, mode="course_correction", targets=[0], before=[0.5])
    second = InterventionRecord(epoch=4, mode="course_correction", targets=[1], before=[0.25], status="applied")
    write_records(path, [first])
    write_records(path, [first, second])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 4] and lines[1]["status"] == "applied"
    assert list(path.parent.iterdir()) == [path]  # no partial file left behind


def test_weights_file_loads_with_numpy_one_row_per_sample(tmp_path: Path) -> None:
    record = InterventionRecord(epoch=5, mode="direct_improvement", targets=[2], before=None, number=3)
    weights, influence = np.array([1.0, 0.5, 2.0, 1.0]), np.arange(12.0).reshape(4, 3)
    name = save_weights(tmp_path, record, weights, influence, ["a", "b", "c"])
    assert name == "intervention_weights/003_direct_improvement_epoch5.npz"
    with np.load(tmp_path / name) as saved:
        np.testing.assert_array_equal(saved["index"], [0, 1, 2, 3])
        np.testing.assert_array_equal(saved["weights"], weights)
        np.testing.assert_array_equal(saved["influence"], influence)
        assert saved["targets"].tolist() == [2] and saved["class_names"].tolist() == ["a", "b", "c"]
