"""``lightning-pareto audit``: which training samples help or hurt each class at a checkpoint.

::

    lightning-pareto fit --config configs/digits.yaml
    lightning-pareto audit --config configs/digits.yaml --ckpt_path runs/digits/.../last.ckpt --output_dir runs/audit
    lightning-pareto audit --config configs/digits.yaml --ckpt_path CKPT --output_dir DIR --removal-check --workers 2

The config is the one ``fit`` used (every other argument goes to it, e.g. ``--data.init_args.label_noise=0.2``).
Writes to ``--output_dir``:

- ``samples.csv``: one row per training sample: ``index, label, influence_<class>..., suspect,
  suspect_score, likely_label, rank_<class>..., suspect_rank`` (see :class:`~lightning_pareto.audit.AuditTable`).
- ``top_samples.csv``: per class the ``--top_k`` most helpful and most harmful samples (suspects first).
- ``top_<class>.png`` for image data, and the same figures as TensorBoard images ``audit/top_samples/<class>``
  (``tensorboard --logdir DIR``).
- ``flip_detection.json`` when the datamodule flipped labels (``label_noise``): precision and recall
  of the suspects and of the highest-training-loss baseline.
- With ``--removal-check``: ``removal.json`` and ``removal.png`` (the heatmaps of "What Is The
  Performance Ceiling of My Classifier?", Figures 3-4), retraining from the config's initialisation and seed.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Subset

from lightning_pareto._modes import eval_mode
from lightning_pareto._quiet import quiet_lightning
from lightning_pareto.audit import (
    KINDS,
    AuditTable,
    as_images,
    audit_samples,
    flip_detection,
    removal_figure,
    run_removal_check,
    write_audit,
)
from lightning_pareto.callbacks._accuracy import per_class_accuracy
from lightning_pareto.callbacks._run import influence_model
from lightning_pareto.influence.batches import unpack_batch

__all__ = ["build_parser", "main", "retrain_accuracy", "run_audit"]

# Flat features of these datamodules are images of this shape (other data: pass --image_shape).
_IMAGE_SHAPES = {"DigitsDataModule": (8, 8), "MNIST5kDataModule": (28, 28)}
# Retrains are plain runs: no logging, checkpoints or progress bars of their own.
_QUIET_TRAINER = [
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-pareto audit`` options; everything else is passed on to the ``fit`` config."""
    parser = argparse.ArgumentParser(
        prog="lightning-pareto audit",
        description='Category-wise influence of every training sample at a checkpoint ("What Is The Performance '
        'Ceiling of My Classifier?"): which samples help or hurt each class, suspected mislabels, and optionally '
        "the paper's removal check. Other arguments go to the `fit` config.",
        allow_abbrev=False,  # an abbreviation could swallow a `fit` argument (--seed for --seeds)
    )
    parser.add_argument("--config", required=True, help="the fit config (YAML), as for `lightning-pareto fit`")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint of the trained model (from `fit`)")
    parser.add_argument("--output_dir", required=True, help="folder for samples.csv, top_samples.csv, figures")
    engine = parser.add_argument_group("influence engine (see lightning_pareto.influence.category_influence)")
    engine.add_argument("--curvature", choices=["ekfac", "kfac", "exact"], default="ekfac")
    engine.add_argument("--damping", type=float, default=None, help="default: 0.1 x the largest eigenvalue")
    engine.add_argument("--modules", nargs="+", default=None, help="layers to track (default: every Linear/Conv2d)")
    engine.add_argument("--fisher", choices=["empirical", "sampled", "ggn"], default="empirical")
    engine.add_argument("--curvature_samples", type=int, default=None, help="fit the curvature on this many samples")
    report = parser.add_argument_group("report")
    report.add_argument("--top_k", type=int, default=8, help="helpful and harmful samples listed per class")
    report.add_argument(
        "--margin",
        type=float,
        default=1.0,
        help="suspect when its harm to another class exceeds margin x its help to its own class",
    )
    report.add_argument(
        "--min_harm", type=float, default=3.0, help="... and exceeds min_harm x that class's mean absolute influence"
    )
    report.add_argument(
        "--image_shape",
        default="auto",
        help="'auto' (digits, MNIST-5k, image tensors), 'none', or H,W / C,H,W for flat features",
    )
    removal = parser.add_argument_group("removal check (retrains 2K+1 models)")
    removal.add_argument(
        "--removal_check",
        "--removal-check",
        action="store_true",
        help="remove each class's top beneficial / detrimental samples and retrain",
    )
    removal.add_argument("--removal_fraction", type=float, default=0.1, help="share of each class's samples removed")
    removal.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="retrain seeds, changes averaged over them (default: the config's seed_everything)",
    )
    removal.add_argument("--workers", type=int, default=1, help="retrains run at once, one process each")
    return parser


def _without_fit_options(config: str) -> str:
    """The config's text without ``Trainer.fit``'s own options (``ckpt_path``, ...): the config.yaml that
    ``fit`` saves has them, and LightningCLI without a subcommand rejects them."""
    from lightning.pytorch import Trainer

    text = Path(config).read_text()
    content = yaml.safe_load(text)
    fit_options = set(inspect.signature(Trainer.fit).parameters) - {"self", "model", "datamodule"}
    if isinstance(content, dict) and fit_options & set(content):
        return yaml.safe_dump({k: v for k, v in content.items() if k not in fit_options})
    return text


def _build_cli(fit_argv: Sequence[str]) -> Any:
    """The ``fit`` LightningCLI on ``fit_argv`` without running it (seeds and builds model, data, trainer)."""
    from lightning_pareto.cli import build_cli

    argv = list(fit_argv)
    with tempfile.TemporaryDirectory() as folder:
        for number, word in enumerate(argv[:-1]):
            if word == "--config" and Path(argv[number + 1]).is_file():
                copy = Path(folder) / f"config_{number}.yaml"
                copy.write_text(_without_fit_options(argv[number + 1]))
                argv[number + 1] = str(copy)
        program, sys.argv[1:] = sys.argv[1:], []  # LightningCLI warns when both sys.argv and args carry arguments
        try:
            return build_cli(argv, run=False)
        finally:
            sys.argv[1:] = program


def _load_checkpoint(module: nn.Module, path: Path) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" not in checkpoint:
        raise ValueError(f"--ckpt_path {path} is not a Lightning checkpoint (no 'state_dict').")
    module.load_state_dict(checkpoint["state_dict"])


def _datasets(datamodule: Any) -> tuple[Any, DataLoader, DataLoader, int]:
    """Training dataset, unshuffled training loader, validation loader and batch size of a set-up datamodule."""
    datamodule.setup("fit")
    shuffled = datamodule.train_dataloader()
    batch_size = int(shuffled.batch_size or 1)
    train = DataLoader(shuffled.dataset, batch_size=batch_size, shuffle=False)
    val = datamodule.val_dataloader()
    return shuffled.dataset, train, val, batch_size


def _training_losses(net: nn.Module, loader: DataLoader) -> np.ndarray:
    """Per-sample cross-entropy over a loader, in eval mode (the loss baseline of flip detection)."""
    losses = []
    with eval_mode(net), torch.no_grad():
        for batch in loader:
            x, y, _ = unpack_batch(batch)
            losses.append(F.cross_entropy(net(x), y, reduction="none"))
    return torch.cat(losses).numpy()


def _parse_image_shape(option: str) -> str | tuple[int, ...] | None:
    """``--image_shape``: ``"auto"``, ``None`` (for ``"none"``) or the sizes."""
    if option in ("auto", "none"):
        return None if option == "none" else option
    try:
        return tuple(int(v) for v in option.split(","))
    except ValueError:
        raise ValueError(
            f"--image_shape must be 'auto', 'none' or sizes like 8,8 or 3,32,32; got {option!r}."
        ) from None


def _image_shape(option: str | tuple[int, ...] | None, datamodule: Any, dataset: Any) -> tuple[int, ...] | None:
    if option != "auto":
        return option  # type: ignore[return-value]
    if type(datamodule).__name__ in _IMAGE_SHAPES:
        return _IMAGE_SHAPES[type(datamodule).__name__]
    sample = dataset[0][0]
    return tuple(sample.shape) if getattr(sample, "ndim", 1) in (2, 3) else None


def _training_features(dataset: Any) -> np.ndarray:
    return torch.stack([torch.as_tensor(dataset[i][0]) for i in range(len(dataset))]).numpy()


def retrain_accuracy(fit_argv: Sequence[str], keep: np.ndarray, seed: int, threads: int | None = None) -> np.ndarray:
    """Train the config's model with ``seed_everything=seed`` (initialisation, shuffling) on the samples ``keep``.

    The config's sample-weighting callbacks (interventions) are dropped, so every retrain is a plain run.

    Args:
        fit_argv: The ``fit`` arguments (``--config`` ...).
        keep: Training indices to train on.
        seed: The run's seed (the datamodule's own ``seed``, which fixes the data and its split, is kept).
        threads: ``torch.set_num_threads`` for this run (worker processes use 1).

    Returns:
        ``(K,)`` per-class test accuracy at the end of training.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    with quiet_lightning():
        cli = _build_cli([*fit_argv, f"--seed_everything={int(seed)}", *_QUIET_TRAINER])  # seeds, then builds the model
        trainer, module, datamodule = cli.trainer, cli.model, cli.datamodule
        trainer.callbacks = [cb for cb in trainer.callbacks if not getattr(cb, "writes_sample_weights", False)]
        dataset, _, val, batch_size = _datasets(datamodule)
        train = DataLoader(Subset(dataset, np.asarray(keep).tolist()), batch_size=batch_size, shuffle=True)
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    datamodule.setup("test")
    return per_class_accuracy(influence_model(module), datamodule.test_dataloader(), int(module.num_classes))


def run_audit(args: argparse.Namespace, fit_argv: Sequence[str]) -> dict[str, Any]:
    """The audit of ``lightning-pareto audit`` (parsed ``args``, the ``fit`` arguments); returns its summary."""
    output = Path(args.output_dir)
    if args.top_k < 1:
        raise ValueError(f"--top_k must be >= 1, got {args.top_k}.")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}.")
    if not 0.0 < args.removal_fraction <= 1.0:
        raise ValueError(f"--removal_fraction must be in (0, 1], got {args.removal_fraction}.")
    if not Path(args.ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path {args.ckpt_path} does not exist; run `lightning-pareto fit` first.")
    image_shape = _parse_image_shape(args.image_shape)
    started = time.perf_counter()
    cli = _build_cli(fit_argv)
    module, datamodule = cli.model, cli.datamodule
    _load_checkpoint(module, Path(args.ckpt_path))
    dataset, train, val, _ = _datasets(datamodule)
    names = list(getattr(module, "class_names", None) or [str(c) for c in range(module.num_classes)])
    net = influence_model(module)
    net.eval()  # dropout off, batch-norm statistics fixed while influence is computed
    table = audit_samples(
        net,
        train,
        val,
        names,
        margin=args.margin,
        min_harm=args.min_harm,
        curvature=args.curvature,
        damping=args.damping,
        modules=args.modules,
        fisher=args.fisher,
        curvature_samples=args.curvature_samples,
    )
    shape = _image_shape(image_shape, datamodule, dataset)
    images = None if shape is None else as_images(_training_features(dataset), shape)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(output)) as writer:
        written = write_audit(table, output, top_k=args.top_k, images=images, writer=writer)
        summary: dict[str, Any] = {
            "config": args.config,
            "ckpt_path": args.ckpt_path,
            "classes": names,
            "suspects": int(table.suspect.sum()),
            "margin": args.margin,
            "min_harm": args.min_harm,
            "audit_seconds": time.perf_counter() - started,
        }
        print(
            "\nSample audit (harmful: samples with negative influence on the class; suspects: labelled with the "
            "class; likely: suspects whose likely true label it is)\n" + table.summary()
        )
        flipped = getattr(datamodule, "flipped_indices", None)
        if flipped is not None and len(flipped) > 0:
            quality = flip_detection(table.suspect, np.asarray(flipped), _training_losses(net, train))
            (output / "flip_detection.json").write_text(json.dumps(quality, indent=1))
            summary["flip_detection"] = quality
            print(
                f"Known flips: {quality['flips']}; suspects {quality['suspects']}: precision "
                f"{quality['precision']:.3f}, recall {quality['recall']:.3f} (highest training loss, same count: "
                f"precision {quality['loss_precision']:.3f}, recall {quality['loss_recall']:.3f})"
            )
        if args.removal_check:
            summary["removal"] = _removal(table, fit_argv, cli, args, output, writer)
    (output / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"Written to {output}: " + ", ".join(sorted(p.name for p in written.values())))
    return summary


def _removal(
    table: AuditTable, fit_argv: Sequence[str], cli: Any, args: argparse.Namespace, output: Path, writer: Any
) -> dict[str, Any]:
    """The removal check: retrains, ``removal.json``, ``removal.png`` and the TensorBoard figure ``audit/removal``."""
    seed = cli.config.get("seed_everything")  # LightningCLI stores the seed it drew when the config says `true`
    seeds = args.seeds or [seed if isinstance(seed, int) and not isinstance(seed, bool) else 0]
    retrain = functools.partial(retrain_accuracy, list(fit_argv), threads=1 if args.workers > 1 else None)
    baseline, checks = run_removal_check(
        table.influence, retrain, fraction=args.removal_fraction, seeds=seeds, workers=args.workers
    )
    result = {
        "fraction": args.removal_fraction,
        "seeds": list(seeds),
        "baseline": baseline.tolist(),
        **{kind: checks[kind].to_dict() for kind in KINDS},
    }
    (output / "removal.json").write_text(json.dumps(result))
    figure = removal_figure(checks, table.class_names, title=f"removal check: {args.config}")
    figure.savefig(output / "removal.png", dpi=100)
    writer.add_figure("audit/removal", figure)
    for kind in KINDS:
        print(
            f"Removal check, {kind}: Spearman(-cumulative influence, accuracy change) = "
            f"{checks[kind].spearman:+.3f}; "
            f"targeted class moved as predicted for {100 * checks[kind].diagonal_agreement:.0f}% of classes"
        )
    return {
        kind: {"spearman": checks[kind].spearman, "diagonal_agreement": checks[kind].diagonal_agreement}
        for kind in KINDS
    }


def main(argv: list[str]) -> None:
    """Entry point of ``lightning-pareto audit``."""
    args, rest = build_parser().parse_known_args(argv)
    run_audit(args, ["--config", args.config, *rest])
