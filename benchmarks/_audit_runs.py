"""Shared by the audit benchmarks: train a config with ``lightning-pareto fit`` and audit its checkpoint."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

from lightning_pareto._quiet import quiet_lightning
from lightning_pareto.cli import build_cli
from lightning_pareto.experiments.audit import build_parser, run_audit

CONFIGS = {"digits": "configs/digits.yaml", "mnist5k": "configs/mnist5k.yaml"}


def fit_checkpoint(config: str, overrides: list[str], folder: Path) -> Path:
    """``lightning-pareto fit --config CONFIG OVERRIDES`` writing under ``folder``; the checkpoint it saved."""
    argv = [
        "fit",
        "--config",
        config,
        *overrides,
        f"--trainer.default_root_dir={folder}",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
    ]
    program, sys.argv[1:] = sys.argv[1:], []
    try:
        with quiet_lightning(), contextlib.redirect_stdout(io.StringIO()):
            build_cli(argv)
    finally:
        sys.argv[1:] = program
    checkpoints = sorted(folder.rglob("*.ckpt"))
    if not checkpoints:
        raise RuntimeError(f"fit of {config} saved no checkpoint under {folder}")
    return checkpoints[-1]


def audit(config: str, overrides: list[str], checkpoint: Path, output: Path, extra: list[str]) -> dict[str, Any]:
    """``lightning-pareto audit`` on a checkpoint (same config and overrides); its summary."""
    argv = ["--config", config, "--ckpt_path", str(checkpoint), "--output_dir", str(output), *extra]
    args, rest = build_parser().parse_known_args(argv)
    with quiet_lightning():
        return run_audit(args, ["--config", config, *overrides, *rest])
