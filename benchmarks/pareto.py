"""Quality of Direct Improvement and Course Correction on real digits with label noise, one epoch after.

The quantity of Table 1 of "What Is The Performance Ceiling of My Classifier?": the per-class change
in the epoch after an intervention.

What is measured: the per-class accuracy change an intervention causes, for its target classes and
for the other classes, against the *counterfactual*: the same epoch trained from the same state
without weights. Everything runs on CPU with fixed seeds and is deterministic, which gives the
counterfactual exactly:

- **DI** (``DirectImprovement(targets="worst:2", at_epochs=[e])``): a plain run with the same seed
  reaches the same state after epoch ``e`` (checked: per-class accuracies identical) and trains epoch
  ``e + 1`` without weights; the change is ``DI run - plain run`` after epoch ``e + 1``.
- **CC** (``CourseCorrection``, the learning rate multiplied by 15 at epoch 6 to provoke drops): the
  redo starts from the detrimental epoch's start with its RNG state, so without weights it would
  reproduce the detrimental epoch bit for bit; the change is ``redo - detrimental epoch``. This is
  checked once per dataset by a run whose "search" returns uniform weights (``redo == bad``).

Both validation accuracy (what the callbacks see and trial fitness optimises) and test accuracy
(held out from everything) are reported. ``predicted`` fitness scores GA candidates by first-order
gains; ``trial`` trains one epoch per candidate (the paper's way).

Run ``python benchmarks/pareto.py`` (writes ``benchmarks/results/pareto.json`` after every seed);
``--seeds``, ``--datasets``, ``--fitness``, ``--modes`` select a subset, ``--trust`` a variant of the LP's
trust radius.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_pareto import ClassifierModule, CourseCorrection, DirectImprovement, PerClassAccuracy
from lightning_pareto.callbacks._accuracy import per_class_accuracy
from lightning_pareto.data import DigitsDataModule, MNIST5kDataModule
from lightning_pareto.nets import MLP
from lightning_pareto.pareto import search as search_module
from lightning_pareto.pareto.search import SearchResult

RESULTS = Path(__file__).parent / "results" / "pareto.json"
DI_EPOCH = 4  # 0-based: DI after the 5th epoch, weights in the 6th
DI_TARGETS = "worst:2"
CC_EPOCHS = 10
CC_SPIKE_EPOCH = 6
# "What Is The Performance Ceiling of My Classifier?", Table 1 (CIFAR-10, ResNet): DI targets changed by
# +16.02, +11.39, +5.73 points; CC by +1.65, +1.31, +2.77.
PAPER = {
    "direct_improvement": {"target_changes_pp": [16.02, 11.39, 5.73], "nontarget_min_pp": -2.90},
    "course_correction": {"target_changes_pp": [1.65, 1.31, 2.77]},
}

DATASETS: dict[str, dict[str, Any]] = {
    "digits": {
        "make": lambda seed, noise: DigitsDataModule(batch_size=64, label_noise=noise, seed=seed),
        "in_features": 64,
        "hidden": (32,),
    },
    "mnist5k": {
        "make": lambda seed, noise: MNIST5kDataModule(batch_size=64, label_noise=noise, seed=seed),
        "in_features": 784,
        "hidden": (64,),
    },
}


class TestAccuracy(Callback):
    """Per-class test accuracy of the model after every training epoch (after validation)."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, list[float]] = {}

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = trainer.datamodule.test_dataloader()
        self.by_epoch[trainer.current_epoch] = per_class_accuracy(pl_module.net, loader, pl_module.num_classes).tolist()


def _fit(
    dataset: str, seed: int, noise: float, callbacks: list[Callback], max_epochs: int, lr: float, spike: bool
) -> tuple[PerClassAccuracy, TestAccuracy, Trainer]:
    spec = DATASETS[dataset]
    L.seed_everything(seed, verbose=False)
    monitor, test = PerClassAccuracy(log_figure_every_n_epochs=0), TestAccuracy()
    scheduler = (
        (lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[CC_SPIKE_EPOCH], gamma=15.0))
        if spike
        else None
    )
    module = ClassifierModule(
        MLP(spec["in_features"], 10, hidden=spec["hidden"]),
        10,
        optimizer=lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9),
        scheduler=scheduler,
    )
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=[monitor, *callbacks, test],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir="/tmp/pareto_benchmark",
    )
    trainer.fit(module, spec["make"](seed, noise))
    return monitor, test, trainer


def _changes(after: list[float], reference: list[float], targets: list[int]) -> dict[str, Any]:
    delta = 100.0 * (np.asarray(after, dtype=float) - np.asarray(reference, dtype=float))
    others = [c for c in range(len(delta)) if c not in targets]
    return {
        "per_class_pp": [round(float(d), 3) for d in delta],
        "targets_mean_pp": float(np.mean(delta[targets])),
        "nontargets_mean_pp": float(np.mean(delta[others])),
        "nontargets_min_pp": float(np.min(delta[others])),
        "all_targets_improved": bool(np.all(delta[targets] > 0)),
    }


def direct_improvement(dataset: str, seed: int, fitness_modes: list[str], trust: float) -> list[dict[str, Any]]:
    """DI after epoch DI_EPOCH vs the plain run's next epoch, for each fitness mode."""
    epochs = DI_EPOCH + 2
    plain, plain_test, _ = _fit(dataset, seed, 0.2, [], epochs, lr=0.05, spike=False)
    plain_val = {r["epoch"]: r["accuracy"] for r in plain.history}
    rows = []
    for fitness in fitness_modes:
        callback = DirectImprovement(
            targets=DI_TARGETS, at_epochs=[DI_EPOCH], fitness=fitness, trust=trust, log_figures=False
        )
        monitor, test, _ = _fit(dataset, seed, 0.2, [callback], epochs, lr=0.05, spike=False)
        val = {r["epoch"]: r["accuracy"] for r in monitor.history}
        (record,) = callback.records
        row = {
            "dataset": dataset,
            "seed": seed,
            "mode": "direct_improvement",
            "fitness": fitness,
            "epoch": record.epoch,
            "targets": record.targets,
            "status": record.status,
            "reason": record.reason,
            "seconds": record.seconds,
            "n_weighted": record.n_weighted,
            "search": record.search,
            "same_state_as_counterfactual": val[DI_EPOCH] == plain_val[DI_EPOCH],
        }
        if record.status == "applied":
            row["val"] = _changes(val[DI_EPOCH + 1], plain_val[DI_EPOCH + 1], record.targets)
            row["test"] = _changes(test.by_epoch[DI_EPOCH + 1], plain_test.by_epoch[DI_EPOCH + 1], record.targets)
            row["val_vs_before"] = _changes(val[DI_EPOCH + 1], val[DI_EPOCH], record.targets)
        rows.append(row)
    return rows


def course_correction(dataset: str, seed: int, fitness_modes: list[str], trust: float) -> list[dict[str, Any]]:
    """Every CC redo vs the detrimental epoch it replaced (its exact counterfactual), for each fitness mode."""
    rows = []
    for fitness in fitness_modes:
        callback = CourseCorrection(
            drop_threshold=0.25, max_corrections=2, fitness=fitness, trust=trust, log_figures=False
        )
        _, test, _ = _fit(dataset, seed, 0.1, [callback], CC_EPOCHS, lr=0.02, spike=True)
        for record in callback.records:
            row = {
                "dataset": dataset,
                "seed": seed,
                "mode": "course_correction",
                "fitness": fitness,
                "epoch": record.epoch,
                "targets": record.targets,
                "status": record.status,
                "reason": record.reason,
                "seconds": record.seconds,
                "n_weighted": record.n_weighted,
                "search": record.search,
            }
            if record.status == "applied" and record.after is not None:
                redo = record.weighted_epochs[0]
                row["val"] = _changes(record.after, record.bad, record.targets)
                row["test"] = _changes(test.by_epoch[redo], test.by_epoch[record.epoch], record.targets)
            rows.append(row)
    return rows


def cc_counterfactual_check(dataset: str, seed: int) -> dict[str, Any]:
    """A CC run whose search returns uniform weights: the redo must reproduce the detrimental epoch exactly."""

    def uniform(influence: Any, targets: Any, **kwargs: Any) -> SearchResult:
        n, k = np.asarray(influence).shape
        return SearchResult.given(np.ones(n), k, evaluations=1)

    original = search_module.search_weights
    search_module.search_weights = uniform
    try:
        callback = CourseCorrection(drop_threshold=0.25, max_corrections=2, log_figures=False)
        _, test, _ = _fit(dataset, seed, 0.1, [callback], CC_EPOCHS, lr=0.02, spike=True)
    finally:
        search_module.search_weights = original
    checks = [
        {
            "epoch": r.epoch,
            "val_redo_equals_bad": r.after == r.bad,
            "test_redo_equals_bad": test.by_epoch[r.weighted_epochs[0]] == test.by_epoch[r.epoch],
        }
        for r in callback.records
        if r.status == "applied"
    ]
    return {"dataset": dataset, "seed": seed, "corrections": checks}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(f"{row['dataset']}/{row['mode']}/{row['fitness']}", []).append(row)
    summary = {}
    for key, members in sorted(groups.items()):
        applied = [r for r in members if "val" in r]
        entry: dict[str, Any] = {
            "interventions": len(members),
            "applied": len(applied),
            "skipped_reasons": sorted({r["reason"].split(":")[0] for r in members if r["status"] != "applied"}),
            "seconds_median": statistics.median(r["seconds"] for r in members) if members else None,
        }
        for split in ("val", "test"):
            if applied:
                values = {
                    name: [r[split][name] for r in applied]
                    for name in ("targets_mean_pp", "nontargets_mean_pp", "nontargets_min_pp")
                }
                entry[split] = {
                    **{f"{name}_median": float(np.median(v)) for name, v in values.items()},
                    **{f"{name}_mean": float(np.mean(v)) for name, v in values.items()},
                    "all_targets_improved_fraction": float(
                        np.mean([r[split]["all_targets_improved"] for r in applied])
                    ),
                }
        summary[key] = entry
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"], choices=sorted(DATASETS))
    parser.add_argument("--fitness", nargs="+", default=["predicted", "trial"], choices=["predicted", "trial"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["direct_improvement", "course_correction"],
        choices=["direct_improvement", "course_correction"],
    )
    parser.add_argument(
        "--trust",
        type=float,
        default=0.5,
        help="trust radius of the LP (0.5: results/pareto.json; the callbacks' default is 0.2)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for dataset in args.datasets:
        if "course_correction" in args.modes:
            checks.append(cc_counterfactual_check(dataset, 0))
        for seed in range(args.seeds):
            if "direct_improvement" in args.modes:
                rows += direct_improvement(dataset, seed, args.fitness, args.trust)
            if "course_correction" in args.modes:
                rows += course_correction(dataset, seed, args.fitness, args.trust)
            # Written after every seed, so an interrupted run keeps what it measured.
            _write(args, rows, checks, time.perf_counter() - start, complete=False)
            print(
                f"{dataset} seed {seed}: {len(rows)} interventions so far, {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    result = _write(args, rows, checks, time.perf_counter() - start, complete=True)
    print(json.dumps(result["summary"], indent=1))
    print(json.dumps(checks))


def _write(
    args: argparse.Namespace, rows: list[dict[str, Any]], checks: list[dict[str, Any]], seconds: float, complete: bool
) -> dict[str, Any]:
    result = {
        "benchmark": "pareto",
        "complete": complete,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "settings": {
            "seeds": args.seeds,
            "datasets": args.datasets,
            "fitness": args.fitness,
            "modes": args.modes,
            "trust": args.trust,
            "w_min": 0.0,
            "w_max": 3.0,
            "direct_improvement": {
                "label_noise": 0.2,
                "lr": 0.05,
                "momentum": 0.9,
                "at_epoch": DI_EPOCH,
                "targets": DI_TARGETS,
                "preset": "fast",
                "curvature": "ekfac",
            },
            "course_correction": {
                "label_noise": 0.1,
                "lr": 0.02,
                "lr_x15_at_epoch": CC_SPIKE_EPOCH,
                "drop_threshold": 0.25,
                "max_corrections": 2,
                "epochs": CC_EPOCHS,
                "preset": "fast",
                "curvature": "ekfac",
            },
            "model": "MLP (digits 64-32-10, MNIST-5k 784-64-10), SGD momentum 0.9, batch 64",
        },
        "paper_table_1": PAPER,
        "counterfactual_checks": checks,
        "summary": _summary(rows),
        "rows": rows,
        "total_seconds": seconds,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
