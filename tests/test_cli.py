"""The ``lightning-pareto`` CLI: a real digits run from YAML, TensorBoard tags, resume, dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_pareto import cli

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "digits.yaml")
QUIET = ["--trainer.enable_progress_bar=false"]


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when sys.argv (here pytest's) and args are both given."""
    monkeypatch.setattr(sys, "argv", ["lightning-pareto"])


def _scalar_tags(run_dir: Path) -> set[str]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_fit_from_yaml_logs_every_digit_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["fit", "--config", CONFIG, "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path}", *QUIET])
    run = tmp_path / "lightning_logs" / "version_0"
    tags = _scalar_tags(run)
    assert {f"val_acc/{digit}" for digit in range(10)} | {"val_acc/mean", "val_acc/worst"} <= tags
    assert len([t for t in tags if t.startswith("val_acc/")]) == 12
    summary = capsys.readouterr().out
    assert "Per-class validation accuracy" in summary and "epoch   0  epoch   1" in summary
    assert (run / "config.yaml").is_file()

    checkpoint = next((run / "checkpoints").glob("*.ckpt"))
    cli.main(
        [
            "fit",
            "--config",
            CONFIG,
            "--trainer.max_epochs=3",
            f"--trainer.default_root_dir={tmp_path}",
            f"--ckpt_path={checkpoint}",
            *QUIET,
        ]
    )
    # The resumed run's history starts at the first run's epoch 0: the monitor state came back.
    assert "epoch   0  epoch   2" in capsys.readouterr().out

    cli.main(
        ["test", "--config", CONFIG, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={checkpoint}", *QUIET]
    )
    printed = capsys.readouterr().out
    assert "test_acc" in printed and "Per-class test accuracy" in printed
    table = printed[printed.index("Per-class test accuracy") :].splitlines()[2:12]
    assert [row.split()[0] for row in table] == [str(d) for d in range(10)]


def test_print_config_resolves_short_class_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", CONFIG, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for class_path in ("lightning_pareto.data.DigitsDataModule", "lightning_pareto.nets.MLP", "PerClassAccuracy"):
        assert class_path in printed


def test_experiments_dispatch_to_their_main(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[list[str]] = []
    fake = types.ModuleType("fake_trim")
    fake.main = received.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_trim", fake)
    monkeypatch.setitem(cli.EXPERIMENTS, "trim", "fake_trim")
    cli.main(["trim", "--config", "x.yaml"])
    assert received == [["--config", "x.yaml"]]


def test_missing_experiment_module_gives_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.EXPERIMENTS, "active", "lightning_pareto.experiments_not_there.active")
    with pytest.raises(SystemExit, match="lightning-pareto active: this experiment is not available"):
        cli.main(["active"])


def test_console_script_points_at_main() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["lightning-pareto"] == "lightning_pareto.cli:main"


@pytest.mark.slow
def test_compare_trains_the_config_with_and_without_its_interventions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    config = str(Path(CONFIG).with_name("digits_direct_improvement.yaml"))
    cli.main(
        [
            "compare",
            "--config",
            config,
            "--trainer.max_epochs=7",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks.init_args.at_epochs=[3]",
            *QUIET,
        ]
    )
    printed = capsys.readouterr().out
    runs = sorted((tmp_path / "lightning_logs").iterdir())
    assert [run.name for run in runs] == ["version_0", "version_1"]
    assert (runs[0] / "interventions.jsonl").is_file() and not (runs[1] / "interventions.jsonl").exists()
    result = json.loads((runs[0] / "comparison.json").read_text())
    assert result["classes"] == [str(d) for d in range(10)]
    table = printed[printed.index("class  without") :].splitlines()
    for line, name, without, with_ in zip(table[1:11], result["classes"], result["without"], result["with"]):
        assert line.split()[:3] == [name, f"{100 * without:.1f}", f"{100 * with_:.1f}"]


def test_help_lists_every_registered_command_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A command registered later (as the audit command will be) shows up without touching the help.
    (tmp_path / "fake_audit.py").write_text(
        '"""``lightning-pareto audit``: which samples help or hurt each class.\n"""\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.EXPERIMENTS, "audit", "fake_audit")
    for argv in (["--help"], ["-h"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 0
        printed = capsys.readouterr().out
        assert printed.startswith("usage: lightning-pareto ")
        listed = {
            line.split()[0]: line.split(maxsplit=1)[1]
            for line in printed.split("commands:\n")[1].split("\n\n")[0].splitlines()
            if not line.startswith("    ")
        }
        assert list(listed) == ["fit", "validate", "test", "predict", "trim", "active", "compare", "audit"]
        assert listed["audit"] == "Which samples help or hurt each class."
        assert listed["compare"].startswith("A config's run beside the same run without its interventions")


def test_module_entry_point_names_the_program() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_pareto", "fit", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        check=True,
    )
    assert result.stdout.startswith("usage: lightning-pareto [options] fit ")
    help_text = " ".join(result.stdout.split())
    # --model.net lists the package's networks, not every torch.nn class.
    assert "MLP, LogisticRegression, MnistCNN, SmallCNN" in help_text and "torch.nn.Bilinear" not in help_text
    assert "--trainer.callbacks" in help_text and len(result.stdout.splitlines()) < 700


@pytest.mark.slow
def test_demo_console_has_no_third_party_tips_or_deprecations(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "lightning_pareto",
        "fit",
        "--config",
        CONFIG,
        "--trainer.max_epochs=1",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    console = result.stdout + result.stderr
    assert "Per-class validation accuracy" in console  # the run did happen
    for noise in ("Tip:", "LeafSpec", "log_every_n_steps", "Warning"):
        assert noise not in console
