"""``lightning-pareto audit`` end to end on a tiny digits run, and its removal check on a tiny wine run."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_pareto import cli
from lightning_pareto.experiments.audit import retrain_accuracy

DIGITS = """
seed_everything: 0
trainer: {max_epochs: 4, enable_progress_bar: false, enable_model_summary: false, logger: false}
model:
  net: {class_path: MLP, init_args: {in_features: 64, num_classes: 10, hidden: [16]}}
  optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1, momentum: 0.9}}
data:
  class_path: DigitsDataModule
  init_args: {batch_size: 32, train_size: 200, val_size: 100, test_size: 100, label_noise: 0.2, seed: 0}
"""

WINE = """
seed_everything: 3
trainer: {max_epochs: 3, enable_progress_bar: false, enable_model_summary: false, logger: false}
model:
  net: {class_path: MLP, init_args: {in_features: 13, num_classes: 3, hidden: [8]}}
  optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1, momentum: 0.9}}
data:
  class_path: WineDataModule
  init_args: {batch_size: 16, val_size: 40, test_size: 40, seed: 0}
"""


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when sys.argv (here pytest's) and args are both given."""
    monkeypatch.setattr(sys, "argv", ["lightning-pareto"])


def _fit(config: str, folder: Path) -> tuple[Path, Path]:
    path = folder / "config.yaml"
    path.write_text(config)
    cli.main(["fit", "--config", str(path), f"--trainer.default_root_dir={folder}"])
    return path, next(folder.rglob("*.ckpt"))


def test_audit_writes_csvs_thumbnails_tensorboard_and_flip_quality(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config, checkpoint = _fit(DIGITS, tmp_path)
    output = tmp_path / "audit"
    cli.main(
        ["audit", "--config", str(config), "--ckpt_path", str(checkpoint), "--output_dir", str(output), "--top_k", "4"]
    )
    with (output / "samples.csv").open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    digits = [str(d) for d in range(10)]
    assert reader.fieldnames == [
        "index",
        "label",
        *(f"influence_{d}" for d in digits),
        "suspect",
        "suspect_score",
        "likely_label",
        *(f"rank_{d}" for d in digits),
        "suspect_rank",
    ]
    assert len(rows) == 200 and all(np.isfinite(float(r["influence_3"])) for r in rows)
    with (output / "top_samples.csv").open() as handle:
        top = list(csv.DictReader(handle))
    assert {(r["class"], r["kind"]) for r in top} <= {(d, k) for d in digits for k in ("helpful", "harmful")}
    assert max(int(r["place"]) for r in top) == 4
    assert sorted(p.name for p in output.glob("top_*.png")) == [f"top_{d}.png" for d in digits]
    events = EventAccumulator(str(output), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {f"audit/top_samples/{d}" for d in digits}
    quality = json.loads((output / "flip_detection.json").read_text())
    assert quality["flips"] == 40 and 0.0 <= quality["precision"] <= 1.0
    assert quality["suspects"] == sum(r["suspect"] == "1" for r in rows)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["suspects"] == quality["suspects"] and summary["classes"] == digits
    printed = capsys.readouterr().out
    assert "Sample audit" in printed and "Known flips: 40" in printed


def test_audit_names_bad_arguments_before_it_loads_anything(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(DIGITS)
    arguments = ["audit", "--config", str(config), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(FileNotFoundError, match="--ckpt_path"):
        cli.main([*arguments, "--ckpt_path", str(tmp_path / "none.ckpt")])
    not_read = tmp_path / "any.ckpt"
    not_read.write_text("the checks come before the checkpoint is read")
    with pytest.raises(ValueError, match="--image_shape"):
        cli.main([*arguments, "--ckpt_path", str(not_read), "--image_shape", "8x8"])
    with pytest.raises(ValueError, match="--removal_fraction"):
        cli.main([*arguments, "--ckpt_path", str(not_read), "--removal_fraction", "0"])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_removal_check_retrains_from_the_same_initialisation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config, checkpoint = _fit(WINE, tmp_path)
    output = tmp_path / "audit"
    cli.main(
        [
            "audit",
            "--config",
            str(config),
            "--ckpt_path",
            str(checkpoint),
            "--output_dir",
            str(output),
            "--removal-check",
            "--removal_fraction",
            "0.2",
        ]
    )
    result = json.loads((output / "removal.json").read_text())
    assert result["seeds"] == [3]  # the config's seed_everything
    # The baseline retrain is a plain rerun of the config: the same numbers again.
    train_size = sum(1 for _ in (output / "samples.csv").open()) - 1
    rerun = retrain_accuracy(["--config", str(config)], np.arange(train_size), seed=3)
    np.testing.assert_allclose(result["baseline"], rerun)
    for kind in ("beneficial", "detrimental"):
        assert np.asarray(result[kind]["change"]).shape == (3, 3)
        assert len(result[kind]["removed"]) == 3
    assert (output / "removal.png").stat().st_size > 10_000
    assert "Removal check, beneficial: Spearman" in capsys.readouterr().out
