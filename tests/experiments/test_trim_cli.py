"""End-to-end tests of ``lightning-pareto trim``: outputs, summary, help/print_config and bad input."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_pareto.cli import main as cli_main
from lightning_pareto.experiments.trim import COLUMNS

TINY_CONFIG = """
data:
  class_path: GaussiansDataModule
  init_args:
    num_samples: 120
    separation: 3.0
    val_size: 30
    test_size: 50
    label_noise: 0.1
net:
  class_path: LogisticRegression
  init_args: {in_features: 2, num_classes: 2}
fit:
  class_path: LBFGSFit
  init_args: {weight_decay: 0.01}
methods: [fi, iv, random]
budgets: [2, 4]
seeds: 2
num_threads: 1
"""


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """The config sets num_threads: 1; put back what the session had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "trim.yaml"
    path.write_text(TINY_CONFIG)
    return path


def test_trim_writes_results_figure_summary_and_tensorboard(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "out"
    cli_main(["trim", "--config", str(config_file), "--output_dir", str(output)])

    with (output / "results.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert len(rows) == 3 * 2 * 3  # methods x seeds x (baseline + 2 budgets)
    assert {(r["method"], int(r["seed"]), int(r["budget"])) for r in rows} == {
        (m, s, b) for m in ("fi", "iv", "random") for s in (0, 1) for b in (0, 2, 4)
    }
    for seed in (0, 1):
        baseline = {r["test_acc"] for r in rows if int(r["seed"]) == seed and r["budget"] == "0"}
        assert len(baseline) == 1  # budget 0 is the same untrimmed model for every method
    for row in rows:
        assert 0.0 <= float(row["test_acc"]) <= 1.0 and float(row["seconds"]) >= 0.0
        if row["budget"] != "0":  # 12 of the 72 training labels are flipped
            assert 0.0 <= float(row["flipped_precision"]) <= 1.0

    assert (output / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((output / "summary.json").read_text())
    fi_rows = [r for r in rows if r["method"] == "fi" and r["budget"] == "4"]
    assert summary["methods"]["fi"]["4"]["mean"] == pytest.approx(sum(float(r["test_acc"]) for r in fi_rows) / 2)
    counts = summary["comparisons"]["fi_vs_iv"]["2"]
    assert counts["wins"] + counts["ties"] + counts["losses"] == 2

    events = EventAccumulator(str(output))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"trim/test_acc/fi", "trim/test_acc/iv", "trim/test_acc/random", "trim/fi_beats_iv"} <= set(tags)
    assert [event.step for event in events.Scalars("trim/test_acc/fi")] == [0, 2, 4]

    printed = capsys.readouterr().out
    assert "fi > iv" in printed and "mean ± std over 2 seeds" in printed


def test_help_and_print_config(config_file: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["trim", "--help"])
    assert exit_info.value.code == 0
    assert "--output_dir" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["trim", "--config", str(config_file), "--print_config"])
    printed = capsys.readouterr().out
    assert "GaussiansDataModule" in printed and "budgets:" in printed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budgets", "[72]"], "whole training set"),
        (["--budgets", "[0]"], "at least one positive budget"),
        (["--budgets", "[-1, 2]"], "budgets must be >= 0"),
        (["--methods", "[]"], "methods is empty"),
        (["--scoring.alpha", "0"], "alpha"),
        (["--scoring.rank", "0"], "rank"),
    ],
)
def test_bad_input_fails_with_a_clear_error(config_file: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cli_main(["trim", "--config", str(config_file), "--output_dir", str(tmp_path / "bad"), *extra])
    assert not (tmp_path / "bad" / "results.csv").exists()


def test_unknown_method_is_a_parse_error(config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["trim", "--config", str(config_file), "--output_dir", str(tmp_path), "--methods", "[loss]"])
    assert exit_info.value.code != 0
    assert "methods" in capsys.readouterr().err


def test_summary_explains_the_precision_column_only_when_it_is_shown() -> None:
    from lightning_pareto.experiments.trim import format_summary, summarize

    rows = [
        {"method": "fi", "seed": 0, "budget": 0, "test_acc": 0.9, "score_seconds": 0.0, "flipped_precision": None},
        {"method": "fi", "seed": 0, "budget": 5, "test_acc": 0.92, "score_seconds": 1.0, "flipped_precision": None},
    ]
    clean = format_summary(summarize(rows, ["fi"], [0, 5]))
    assert "(p" not in clean and "corrupted" not in clean
    rows[1]["flipped_precision"] = 0.8
    noisy = format_summary(summarize(rows, ["fi"], [0, 5]))
    assert "(p 0.80)" in noisy and "corrupted (flipped)" in noisy
