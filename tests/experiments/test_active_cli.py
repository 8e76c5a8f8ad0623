"""``lightning-pareto active``: outputs of a tiny digits run, the D.2 variants, help and errors before training."""

from __future__ import annotations

import csv
import json
import statistics
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from lightning_pareto.active._variants import UNBALANCED_SHARES, redundant_labels, unbalanced_positions
from lightning_pareto.cli import main as cli_main
from lightning_pareto.experiments import active

STRATEGIES = ["fi", "iv", "bald", "random"]


def _config(tmp_path: Path, **overrides) -> Path:
    config = {
        "seeds": [0, 1],
        "strategies": STRATEGIES,
        "strategy_options": {
            "fi": {"damping": 0.001},
            "iv": {"damping": 0.001},
            "bald": {"samples": 4, "input_dropout": 0.2},
        },
        "initial_size": 10,
        "acquisition_size": 10,
        "rounds": 2,
        "max_epochs": 3,
        "batch_size": 32,
        "pool_batch_size": 64,
        "num_threads": 1,
        "data": {"class_path": "DigitsDataModule", "init_args": {"val_size": 0.1, "test_size": 0.2, "train_size": 150}},
        "net": {"class_path": "LogisticRegression", "init_args": {"in_features": 64, "num_classes": 10}},
        "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.05, "weight_decay": 0.001}},
    }
    config.update(overrides)
    path = tmp_path / "active.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("active")
    output = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli_main(["active", "--config", str(_config(tmp_path)), "--output_dir", str(output)])
    missing = [w for w in caught if "the initial labelled set" in str(w.message)]
    return output, missing


def test_missing_classes_are_reported_once_per_seed(digits_run):
    _, missing = digits_run
    # Ten random digits out of ten classes miss some class for both seeds; all four strategies share the set.
    assert len(missing) == 2


def _read_rows(output: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (output / "results.csv").open() as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def test_results_csv_has_every_strategy_seed_and_round(digits_run):
    columns, rows = _read_rows(digits_run[0])
    assert columns == ["strategy", "seed", "round", "n_labeled", "test_acc", "seconds"]
    assert len(rows) == len(STRATEGIES) * 2 * 3
    assert {(r["strategy"], r["seed"], r["round"], r["n_labeled"]) for r in rows} == {
        (s, str(seed), str(k), str(10 + 10 * k)) for s in STRATEGIES for seed in (0, 1) for k in range(3)
    }
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 for r in rows)
    assert all(float(r["seconds"]) == 0.0 for r in rows if r["round"] == "0")
    assert all(float(r["seconds"]) > 0.0 for r in rows if r["round"] != "0")
    # Every strategy starts from the same network, initial set and training seed: identical round 0.
    for seed in ("0", "1"):
        start = {r["test_acc"] for r in rows if r["seed"] == seed and r["round"] == "0"}
        assert len(start) == 1


def test_summary_curves_and_tensorboard_agree_with_the_csv(digits_run):
    digits_run, _ = digits_run
    _, rows = _read_rows(digits_run)
    summary = json.loads((digits_run / "summary.json").read_text())
    assert summary["seeds"] == 2 and list(summary["strategies"]) == STRATEGIES
    for name, cell in summary["strategies"].items():
        assert cell["n_labeled"] == [10, 20, 30]
        for size, mean, std in zip(cell["n_labeled"], cell["mean"], cell["std"]):
            values = [float(r["test_acc"]) for r in rows if r["strategy"] == name and r["n_labeled"] == str(size)]
            assert mean == pytest.approx(statistics.fmean(values))
            assert std == pytest.approx(statistics.pstdev(values))
        totals = [sum(float(r["seconds"]) for r in rows if r["strategy"] == name and r["seed"] == s) for s in "01"]
        assert cell["acquisition_seconds"] == pytest.approx(statistics.fmean(totals))
    assert (digits_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(digits_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in STRATEGIES:
        assert {f"active/test_acc/{name}", f"active/test_acc_std/{name}", f"active/seconds/{name}"} <= tags
        steps = [(e.step, e.value) for e in events.Scalars(f"active/test_acc/{name}")]
        cell = summary["strategies"][name]
        assert steps == [(n, pytest.approx(m, abs=1e-6)) for n, m in zip(cell["n_labeled"], cell["mean"])]


def test_timing_table_is_printed(tmp_path, capsys):
    output = tmp_path / "out"
    active.main(
        [
            "--config",
            str(_config(tmp_path, strategies=["margin"], seeds=1, rounds=1, strategy_options={})),
            "--output_dir",
            str(output),
        ]
    )
    printed = capsys.readouterr().out
    assert "acquisition s (total)" in printed and "margin" in printed and "seed 0 margin" in printed


def test_redundant_variant_relabels_one_seven_neither(tmp_path):
    output = tmp_path / "out"
    net = {"class_path": "LogisticRegression", "init_args": {"in_features": 64, "num_classes": 3}}
    path = _config(
        tmp_path, strategies=["entropy"], seeds=1, rounds=1, strategy_options={}, variant="redundant", net=net
    )
    active.main(["--config", str(path), "--output_dir", str(output)])
    _, rows = _read_rows(output)
    assert [r["n_labeled"] for r in rows] == ["10", "20"]
    # Most digits are "neither": even the first model beats a 10-class guess by far.
    assert float(rows[0]["test_acc"]) > 0.5
    with pytest.raises(ValueError, match="num_classes is 3"):
        active.main(["--config", str(_config(tmp_path, variant="redundant", seeds=1)), "--output_dir", str(output)])


def test_variant_builders():
    labels = torch.arange(10).repeat_interleave(torch.tensor([30, 12, 50, 40, 40, 200, 150, 120, 110, 130]))
    keep = unbalanced_positions(labels, seed=0)
    counts = torch.bincount(labels[keep], minlength=10)
    # The binding digit is 1 (12 samples, share 1) and 5-9 need 10 per unit: unit = min(12, 11) = 11.
    assert counts.tolist() == [11 * share for share in UNBALANCED_SHARES]
    assert torch.equal(keep, unbalanced_positions(labels, seed=0)) and len(torch.unique(keep)) == len(keep)
    assert torch.bincount(labels[unbalanced_positions(labels, seed=1, size=110)], minlength=10).tolist() == [
        2 * share for share in UNBALANCED_SHARES
    ]
    with pytest.raises(ValueError, match="too few"):
        unbalanced_positions(labels, seed=0, size=55 * 12)
    assert redundant_labels(torch.tensor([0, 1, 2, 7, 9, 1])).tolist() == [2, 0, 2, 1, 2, 0]
    with pytest.raises(ValueError, match="digit labels"):
        redundant_labels(torch.tensor([0, 10]))


def test_help_and_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["active", "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "--output_dir" in printed and "--strategies" in printed and "--acquisition_size" in printed


def test_print_config_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit):
        active.main(["--config", str(_config(tmp_path)), "--output_dir", "x", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["rounds"] == 2 and printed["strategies"] == STRATEGIES


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"acquisition_size": 500}, "larger than the unlabelled pool"),
        ({"rounds": 0}, "rounds must be an int >= 1"),
        ({"strategy_options": {"bald": {"samples": 4}}}, "needs MC dropout"),
        ({"strategy_options": {"margin": {}}}, "not run"),
        ({"strategies": ["fi", "fi"]}, "duplicates"),
    ],
)
def test_bad_plans_fail_before_any_training(tmp_path, overrides, match):
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        active.main(["--config", str(_config(tmp_path, **overrides)), "--output_dir", str(output)])
    assert not (output / "results.csv").exists()
