"""``lightning-pareto active``: the active-learning comparison of "Enhancing Prediction Performance through Influence Measure" over strategies and seeds.

::

    lightning-pareto active --config configs/active_digits.yaml --output_dir runs/active_digits
    lightning-pareto active --help
    lightning-pareto active --config configs/active_mnist5k.yaml --print_config

The datamodule's training split is the pool (initial labelled set + unlabelled pool), its
validation split serves IV, its test split is the test set. For every seed the data (the
datamodule's ``seed`` is set to it), the network's initialisation (``torch.manual_seed(seed)``
before it is built) and the initial labelled set are drawn anew and shared by all strategies, so
strategies are compared on the same start. Each strategy then runs
:func:`~lightning_pareto.active.loop.run_active_learning` with the known training labels as the oracle.

``variant`` builds the FI paper's harder pools (appendix D.2) from a 10-digit data set:
``"unbalanced"`` keeps a subset of the pool with digits 0-4 each 1/55 and 5-9 each 10/55 (the
validation and test sets stay as they are); ``"redundant"`` relabels every split as 1 vs 7 vs
"neither" (the network must have 3 outputs).

Writes to ``--output_dir``:

- ``results.csv``: one row per (strategy, seed, round), columns ``strategy, seed, round,
  n_labeled, test_acc, seconds``; ``seconds`` is the wall time of the acquisition (pool scoring
  and selection) that completed that labelled set, 0 in round 0. Rewritten after every run.
- ``summary.json``: per strategy, mean and standard deviation over seeds (``ddof=0``) of test
  accuracy at every labelled-set size, the mean accuracy over the curve, and the timings.
- ``curves.png``: mean test accuracy against labelled-set size, one line per strategy, a band of
  one standard deviation over seeds (the picture of the FI paper's Figures 3-4).
- A timing table on stdout (the counterpart of Table 9).
- TensorBoard scalars ``active/test_acc/<strategy>``, ``active/test_acc_std/<strategy>`` and
  ``active/seconds/<strategy>`` with the labelled-set size as the step, and the figure ``active/curves``.
- ``config.yaml``: the full configuration of the run.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.cli import OptimizerCallable
from matplotlib.figure import Figure
from torch import Tensor

from lightning_pareto.active._variants import REDUNDANT_CLASS_NAMES, redundant_labels, unbalanced_positions
from lightning_pareto.active.loop import RoundResult, check_plan, random_initial_pool, run_active_learning
from lightning_pareto.active.strategies import STRATEGIES, make_strategy
from lightning_pareto.data.base import ClassificationDataModule
from lightning_pareto.experiments._common import (
    check_names,
    comparison_parser,
    prepare_output,
    seed_list,
    seeded_objects,
    write_csv,
)
from lightning_pareto.module import ClassifierModule

__all__ = ["COLUMNS", "build_parser", "curves_figure", "format_timings", "main", "summarize"]

COLUMNS = ("strategy", "seed", "round", "n_labeled", "test_acc", "seconds")
StrategyName = Literal["fi", "fi_approx", "iv", "bald", "entropy", "margin", "random"]


def build_parser() -> ArgumentParser:
    """The ``lightning-pareto active`` argument parser (jsonargparse; ``--config`` and ``--print_config`` included)."""
    parser = comparison_parser(
        "lightning-pareto active",
        'The active-learning comparison of "Enhancing Prediction Performance through Influence Measure": '
        "FI^active against IV, BALD, entropy, margin and random acquisition, test accuracy against labelled-set "
        "size over seeds.",
        data_help="Datamodule (e.g. DigitsDataModule); training split = pool, validation = IV's, test = test.",
        net_help="Network, e.g. LogisticRegression or MnistCNN.",
        outputs="results.csv, summary.json, curves.png and the TensorBoard events",
    )
    parser.add_argument(
        "--optimizer",
        type=OptimizerCallable | None,
        default=None,
        help="Optimizer of every round's training (default SGD lr=0.1, momentum=0.9).",
    )
    parser.add_argument(
        "--strategies",
        type=list[StrategyName],
        default=list(STRATEGIES),
        help=f"Strategies to compare, from {list(STRATEGIES)}.",
    )
    parser.add_argument(
        "--strategy_options",
        type=dict[str, dict[str, Any]],
        default={},
        help="Keyword arguments per strategy, e.g. {fi: {modules: [net.head]}, bald: {samples: 20}}.",
    )
    parser.add_argument(
        "--variant",
        type=Literal["standard", "unbalanced", "redundant"],
        default="standard",
        help="The FI paper's appendix D.2 pools from 10-digit data: unbalanced, or redundant (1/7/neither).",
    )
    parser.add_argument("--initial_size", type=int, default=20, help="Size of the random initial labelled set.")
    parser.add_argument("--acquisition_size", type=int, default=20, help="Points queried per round.")
    parser.add_argument("--rounds", type=int, default=10, help="Number of acquisition rounds.")
    parser.add_argument("--max_epochs", type=int, default=50, help="Training epochs per round.")
    parser.add_argument("--batch_size", type=int, default=64, help="Training batch size.")
    parser.add_argument("--pool_batch_size", type=int, default=512, help="Batch size of pool scoring and testing.")
    parser.add_argument(
        "--restart",
        type=bool,
        default=True,
        help="Retrain every round from the initial weights (true) or continue (false).",
    )
    parser.add_argument(
        "--trainer",
        type=dict[str, Any],
        default={},
        help="Extra Trainer arguments for every round, e.g. {accelerator: gpu}.",
    )
    return parser


def main(argv: list[str]) -> None:
    """Run ``lightning-pareto active`` with the given arguments (without the program and subcommand names).

    Args:
        argv: e.g. ``["--config", "configs/active_digits.yaml", "--output_dir", "runs/active_digits"]``.

    Raises:
        ValueError: On an empty or repeated strategy list, options for strategies not run, bad
            seeds, or any schedule the loop rejects (acquisition size larger than the pool, zero
            rounds, BALD on a network without dropout, ...): all before any training.
    """
    parser = build_parser()
    config = parser.parse_args(argv)
    strategies, seeds = _check_plan(config.strategies, config.strategy_options, config.seeds)
    built = {name: make_strategy(name, **config.strategy_options.get(name, {})) for name in strategies}
    output = prepare_output(parser, config)

    # Everything is built and checked for every seed before the first training.
    runs = []
    for seed in seeds:
        objects = seeded_objects(parser, config, seed)
        pool, labels, val_arrays, test_arrays, class_names = _pool_and_splits(objects.data, config.variant, seed)
        initial = random_initial_pool(len(pool), config.initial_size, seed)
        for strategy in built.values():
            check_plan(
                _module(objects, class_names),
                strategy,
                pool,
                initial,
                config.acquisition_size,
                config.rounds,
                val_arrays,
            )
        runs.append((seed, objects, pool, labels, val_arrays, test_arrays, class_names, initial))

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed, objects, pool, labels, val_arrays, test_arrays, class_names, initial in runs:
        for number, (name, strategy) in enumerate(built.items()):
            with warnings.catch_warnings():
                if number:  # the strategies share the initial set: warn about missing classes once per seed
                    warnings.filterwarnings("ignore", message="the initial labelled set")
                results = run_active_learning(
                    _module(objects, class_names),
                    strategy,
                    pool,
                    labels.__getitem__,
                    test_arrays,
                    initial=initial,
                    acquisition_size=config.acquisition_size,
                    rounds=config.rounds,
                    val_arrays=val_arrays,
                    max_epochs=config.max_epochs,
                    batch_size=config.batch_size,
                    pool_batch_size=config.pool_batch_size,
                    restart=config.restart,
                    trainer_kwargs=config.trainer,
                    seed=seed,
                )
            rows.extend(_rows(name, seed, results))
            write_csv(rows, output / "results.csv", COLUMNS)
            elapsed = time.perf_counter() - started
            print(f"seed {seed} {name}: {_run_line(results)} ({elapsed:.0f} s)", flush=True)

    summary = summarize(rows, strategies)
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    figure = curves_figure(summary)
    figure.savefig(output / "curves.png", dpi=120)
    _write_tensorboard(output, summary, figure)
    print(format_timings(summary))
    print(f"results in {output.resolve()}")


def summarize(rows: Sequence[dict[str, Any]], strategies: Sequence[str]) -> dict[str, Any]:
    """Aggregate result rows over seeds.

    Args:
        rows: Rows with the keys of :data:`COLUMNS`.
        strategies: Strategies, in display order.

    Returns:
        ``{"seeds": S, "strategies": {name: {"n_labeled": [...], "mean": [...], "std": [...],
        "seconds": [...], "curve_mean", "curve_std", "final_mean", "final_std", "acquisition_seconds",
        "acquisition_seconds_std", "seconds_per_round"}}}``: accuracies are fractions, ``mean``/``std``
        over seeds per labelled-set size (``seconds``: mean acquisition seconds); ``curve_*`` the
        accuracy averaged over the curve (the normalised area under it); ``acquisition_seconds`` the total acquisition time of one run.
    """
    seeds = sorted({row["seed"] for row in rows})
    table: dict[str, dict[str, Any]] = {}
    for name in strategies:
        mine = [row for row in rows if row["strategy"] == name]
        sizes = sorted({row["n_labeled"] for row in mine})
        accuracy = np.array([[_cell(mine, seed, size) for size in sizes] for seed in seeds])
        round_seconds = np.array([[_cell(mine, seed, size, "seconds") for size in sizes] for seed in seeds])
        seconds = np.nansum(round_seconds, axis=1)
        acquisitions = max(len(sizes) - 1, 1)
        curve = np.nanmean(accuracy, axis=1)
        table[name] = {
            "n_labeled": sizes,
            "mean": np.nanmean(accuracy, axis=0).tolist(),
            "std": np.nanstd(accuracy, axis=0).tolist(),
            "seconds": np.nanmean(round_seconds, axis=0).tolist(),
            "curve_mean": float(curve.mean()),
            "curve_std": float(curve.std()),
            "final_mean": float(accuracy[:, -1].mean()),
            "final_std": float(accuracy[:, -1].std()),
            "acquisition_seconds": float(seconds.mean()),
            "acquisition_seconds_std": float(seconds.std()),
            "seconds_per_round": float(seconds.mean() / acquisitions),
        }
    return {"seeds": len(seeds), "strategies": table}


def format_timings(summary: dict[str, Any]) -> str:
    """A plain-text table per strategy: acquisition time (total and per round), final and curve-mean accuracy."""
    header = ["strategy", "acquisition s (total)", "s / round", "final acc %", "mean acc over curve %"]
    lines = [
        [
            name,
            f"{cell['acquisition_seconds']:.2f} ± {cell['acquisition_seconds_std']:.2f}",
            f"{cell['seconds_per_round']:.3f}",
            f"{100 * cell['final_mean']:.2f} ± {100 * cell['final_std']:.2f}",
            f"{100 * cell['curve_mean']:.2f} ± {100 * cell['curve_std']:.2f}",
        ]
        for name, cell in summary["strategies"].items()
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    render = lambda row: "  ".join(text.ljust(width) for text, width in zip(row, widths))  # noqa: E731
    note = f"Active learning, mean ± std over {summary['seeds']} seeds (acquisition = scoring the pool and choosing)."
    return "\n".join([note, render(header), render(["-" * w for w in widths]), *map(render, lines)])


def curves_figure(summary: dict[str, Any]) -> Figure:
    """Mean test accuracy (%) against labelled-set size, one line per strategy, a band of ± one std over seeds."""
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    axes = figure.add_subplot()
    for name, cell in summary["strategies"].items():
        sizes = np.array(cell["n_labeled"])
        mean, std = 100 * np.array(cell["mean"]), 100 * np.array(cell["std"])
        (line,) = axes.plot(sizes, mean, marker="o", markersize=3, label=name)
        axes.fill_between(sizes, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
    axes.set_xlabel("labelled samples")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"Active learning, mean ± std over {summary['seeds']} seeds")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _module(objects: Namespace, class_names: list[str]) -> ClassifierModule:
    """A ClassifierModule around a fresh copy of the seed's network (the same initial weights for every strategy)."""
    optimizer = {} if objects.optimizer is None else {"optimizer": objects.optimizer}
    return ClassifierModule(copy.deepcopy(objects.net), len(class_names), class_names, **optimizer)


def _pool_and_splits(
    data: ClassificationDataModule, variant: str, seed: int
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor], list[str]]:
    """The pool inputs and (oracle) labels, validation and test arrays, and class names of one seed."""
    data.setup("fit")
    (pool, labels), val_arrays, test_arrays = data.train_arrays, data.val_arrays, data.test_arrays
    class_names = list(data.class_names)
    if variant == "unbalanced":
        keep = unbalanced_positions(labels, seed)
        pool, labels = pool[keep], labels[keep]
    elif variant == "redundant":
        labels = redundant_labels(labels)
        val_arrays = (val_arrays[0], redundant_labels(val_arrays[1]))
        test_arrays = (test_arrays[0], redundant_labels(test_arrays[1]))
        class_names = list(REDUNDANT_CLASS_NAMES)
    return pool, labels, val_arrays, test_arrays, class_names


def _check_plan(
    strategies: list[str], options: dict[str, dict[str, Any]], seeds: int | list[int]
) -> tuple[list[str], list[int]]:
    strategies = check_names(strategies, STRATEGIES, "strategies")
    unused = sorted(set(options) - set(strategies))
    if unused:
        raise ValueError(f"strategy_options names strategies that are not run: {unused} (strategies: {strategies})")
    return strategies, seed_list(seeds)


def _cell(rows: Sequence[dict[str, Any]], seed: int, size: int, key: str = "test_acc") -> float:
    found = [row[key] for row in rows if row["seed"] == seed and row["n_labeled"] == size]
    return found[0] if found else np.nan


def _rows(strategy: str, seed: int, results: Sequence[RoundResult]) -> list[dict[str, Any]]:
    return [
        {
            "strategy": strategy,
            "seed": seed,
            "round": r.round,
            "n_labeled": r.n_labeled,
            "test_acc": r.test_acc,
            "seconds": r.seconds,
        }
        for r in results
    ]


def _run_line(results: Sequence[RoundResult]) -> str:
    first, last = results[0], results[-1]
    seconds = sum(r.seconds for r in results)
    return (
        f"{100 * first.test_acc:.1f}% at {first.n_labeled} -> {100 * last.test_acc:.1f}% at {last.n_labeled} "
        f"labelled, acquisition {seconds:.2f} s"
    )


def _write_tensorboard(output: Path, summary: dict[str, Any], figure: Figure) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(output))
    try:
        for name, cell in summary["strategies"].items():
            for size, mean, std, seconds in zip(cell["n_labeled"], cell["mean"], cell["std"], cell["seconds"]):
                writer.add_scalar(f"active/test_acc/{name}", mean, size)
                writer.add_scalar(f"active/test_acc_std/{name}", std, size)
                writer.add_scalar(f"active/seconds/{name}", seconds, size)
        writer.add_figure("active/curves", figure, close=False)
    finally:
        writer.close()
