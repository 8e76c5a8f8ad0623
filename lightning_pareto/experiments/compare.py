"""``lightning-pareto compare``: a config's run beside the same run without its interventions, per class, on test.

What a user gets from the plugin is the per-class *test* accuracy at the end of training against the
run they would have had: the same config, seed and data without ``DirectImprovement``,
``CourseCorrection`` or ``ClassUpweighting``. This trains both (same seed, so identical up to the
first intervention) and prints that table::

    lightning-pareto compare --config configs/digits_course_correction.yaml

Every other argument goes to ``fit`` as usual (``--trainer.max_epochs=20``, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lightning_pareto.callbacks._accuracy import per_class_accuracy
from lightning_pareto.callbacks._run import influence_model
from lightning_pareto.callbacks.monitor import resolve_class_names

__all__ = ["comparison_table", "main"]


def _fit_and_test(argv: list[str], with_interventions: bool) -> tuple[np.ndarray, list[str], str]:
    from lightning_pareto.cli import build_cli

    program, sys.argv[1:] = sys.argv[1:], []  # LightningCLI warns when both sys.argv and args carry arguments
    try:
        cli = build_cli(argv, run=False)
    finally:
        sys.argv[1:] = program
    trainer = cli.trainer
    if not with_interventions:
        # Every callback that sets sample weights: DirectImprovement, CourseCorrection, ClassUpweighting, trimming.
        trainer.callbacks = [cb for cb in trainer.callbacks if not getattr(cb, "writes_sample_weights", False)]
    trainer.fit(cli.model, cli.datamodule)
    names = resolve_class_names(trainer, cli.model)
    accuracy = per_class_accuracy(influence_model(cli.model), cli.datamodule.test_dataloader(), len(names))
    return accuracy, names, str(trainer.log_dir or trainer.default_root_dir)


def comparison_table(without: np.ndarray, with_: np.ndarray, names: list[str]) -> str:
    """Per-class test accuracy (%) of the run without and with the interventions, the change, mean and worst class.

    Example:
        >>> print(comparison_table(np.array([0.5, 1.0]), np.array([0.75, 1.0]), ["a", "b"]))
        class  without     with   change
        a         50.0     75.0    +25.0
        b        100.0    100.0     +0.0
        mean      75.0     87.5    +12.5
        worst     50.0     75.0    +25.0
    """
    width = max(len("class"), *(len(n) for n in names))
    lines = [f"{'class':<{width}}  {'without':>7}  {'with':>7}  {'change':>7}"]
    rows = [
        *zip(names, without, with_),
        ("mean", np.nanmean(without), np.nanmean(with_)),
        ("worst", np.nanmin(without), np.nanmin(with_)),
    ]
    for name, a, b in rows:
        change = "-" if math.isnan(a) or math.isnan(b) else f"{100 * (b - a):+.1f}"
        lines.append(f"{name:<{width}}  {100 * a:>7.1f}  {100 * b:>7.1f}  {change:>7}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Entry point of ``lightning-pareto compare``."""
    parser = argparse.ArgumentParser(
        prog="lightning-pareto compare",
        description="Train a config with and without its interventions (same seed) and print per-class test accuracy "
        "at the end of training. Other arguments go to `fit`.",
    )
    parser.add_argument("--config", required=True, help="the fit config (YAML), as for `lightning-pareto fit`")
    args, rest = parser.parse_known_args(argv)
    fit_args = ["--config", args.config, *rest]
    with_, names, log_dir = _fit_and_test(fit_args, with_interventions=True)
    without, _, _ = _fit_and_test(fit_args, with_interventions=False)
    print(
        "\nEnd of training, per-class test accuracy (%): without = the same config and seed without the "
        "interventions\n" + comparison_table(without, with_, names)
    )
    summary: dict[str, Any] = {
        "config": args.config,
        "classes": names,
        "without": without.tolist(),
        "with": with_.tolist(),
    }
    path = Path(log_dir) / "comparison.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    print(f"(written to {path})")
