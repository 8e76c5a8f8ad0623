"""The ``lightning-pareto`` CLI: a real digits run from YAML, TensorBoard tags, resume, dispatch."""

from __future__ import annotations

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
    cli.main(["fit", "--config", CONFIG, "--trainer.max_epochs=3", f"--trainer.default_root_dir={tmp_path}",
              f"--ckpt_path={checkpoint}", *QUIET])
    # The resumed run's history starts at the first run's epoch 0: the monitor state came back.
    assert "epoch   0  epoch   2" in capsys.readouterr().out

    cli.main(["test", "--config", CONFIG, f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={checkpoint}",
              *QUIET])
    printed = capsys.readouterr().out
    assert "test_acc" in printed and "Per-class test accuracy" in printed
    table = printed[printed.index("Per-class test accuracy"):].splitlines()[2:12]
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
def test_compare_trains_the_config_with_and_without_its_interventions(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    config = str(Path(CONFIG).with_name("digits_direct_improvement.yaml"))
    cli.main(["compare", "--config", config, "--trainer.max_epochs=7", f"--trainer.default_root_dir={tmp_path}",
              "--trainer.callbacks.init_args.at_epochs=[3]", *QUIET])
    printed = capsys.readouterr().out
    runs = sorted((tmp_path / "lightning_logs").iterdir())
    assert [run.name for run in runs] == ["version_0", "version_1"]
    assert (runs[0] / "interventions.jsonl").is_file() and not (runs[1] / "interventions.jsonl").exists()
    result = json.loads((runs[0] / "comparison.json").read_text())
    assert result["classes"] == [str(d) for d in range(10)]
    table = printed[printed.index("class  without"):].splitlines()
    for line, name, without, with_ in zip(table[1:11], result["classes"], result["without"], result["with"]):
        assert line.split()[:3] == [name, f"{100 * without:.1f}", f"{100 * with_:.1f}"]


def test_help_names_the_program_and_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.startswith("usage: lightning-pareto ")
    for command in ("fit", "test", "lightning-pareto compare", "lightning-pareto trim", "lightning-pareto active"):
        assert command in printed
