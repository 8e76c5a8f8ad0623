"""``lightning-pareto trim``: the data-trimming comparison of "Enhancing Prediction Performance through Influence Measure" over methods, budgets and seeds.

::

    lightning-pareto trim --config configs/trim_gaussians.yaml --output_dir runs/trim_gaussians
    lightning-pareto trim --help
    lightning-pareto trim --config configs/trim_gaussians.yaml --print_config

For every seed the data (the datamodule's ``seed`` is set to it) and the network's initialisation
(``torch.manual_seed(seed)`` before it is built) are drawn anew and
:func:`lightning_pareto.trimming.trim` runs the protocol: train, score once per method, remove the
top ``b`` for every budget, retrain from the same initialisation, test.

Writes to ``--output_dir``:

- ``results.csv``: one row per (method, seed, budget), columns ``method, seed, budget, test_acc,
  seconds`` then ``score_seconds, retrain_seconds, flipped_precision, noisy_precision``. Budget 0
  is the untrimmed baseline (the same model for every method; ``seconds`` = its training time);
  otherwise ``seconds`` = scoring + retraining. Precisions (share of removed samples whose label
  was flipped / features noised by the datamodule) are empty when the data has no such corruption.
  Rewritten after every seed, so a long run can be inspected while it goes.
- ``summary.json``: mean and standard deviation (over seeds, ``ddof=0``) of test accuracy per
  method and budget, mean precisions, and the paper's "cases FI beats IV" counts.
- ``accuracy.png``: mean test accuracy against budget, one line per method, a band of one standard
  deviation over seeds (the picture of the FI paper's Figure 2).
- TensorBoard scalars ``trim/test_acc/<method>``, ``trim/test_acc_std/<method>``,
  ``trim/<precision>/<method>``, ``trim/score_seconds/<method>`` and ``trim/<method>_beats_iv``,
  with the budget as the step, and the figure ``trim/accuracy``.
- ``config.yaml``: the full configuration of the run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jsonargparse import ArgumentParser
from matplotlib.figure import Figure

from lightning_pareto.experiments._common import (
    check_names,
    comparison_parser,
    prepare_output,
    seed_list,
    seeded_objects,
    write_csv,
)
from lightning_pareto.trimming import METHODS, Fitter, ScoringOptions, TrimReport, trim

__all__ = ["COLUMNS", "accuracy_figure", "build_parser", "format_summary", "main", "summarize"]

COLUMNS = (
    "method",
    "seed",
    "budget",
    "test_acc",
    "seconds",
    "score_seconds",
    "retrain_seconds",
    "flipped_precision",
    "noisy_precision",
)
_PRECISIONS = ("flipped_precision", "noisy_precision")


def build_parser() -> ArgumentParser:
    """The ``lightning-pareto trim`` argument parser (jsonargparse; ``--config`` and ``--print_config`` included)."""
    parser = comparison_parser(
        "lightning-pareto trim",
        'The data-trimming comparison of "Enhancing Prediction Performance through Influence Measure": '
        "train, remove the top-b training samples by each method, retrain from the same initialisation, and "
        "compare test accuracy over seeds. Methods: fi = FI^util, the paper's local influence of a sample on the "
        "validation loss (its FI measure aimed at utility); fi_approx = FI^util with the paper's KFSVD and "
        "random-forest approximations; iv = the influence value of Chhabra et al. 2024 (the classical "
        "influence-function estimate of a sample's effect on the validation loss); random = random removal.",
        data_help="Datamodule (e.g. GaussiansDataModule).",
        net_help="Network, e.g. LogisticRegression or MLP.",
        outputs="results.csv, summary.json, accuracy.png and the TensorBoard events",
    )
    parser.add_subclass_arguments(
        Fitter,
        "fit",
        default={"class_path": "lightning_pareto.trimming.LBFGSFit"},
        help="How to train: LBFGSFit (full batch, to convergence) or LightningFit (mini-batch Trainer).",
    )
    parser.add_argument(
        "--scoring",
        type=ScoringOptions,
        default=ScoringOptions(),
        help="Curvature, damping, layers and the approximations' rank/alpha.",
    )
    parser.add_argument(
        "--methods",
        type=list[Literal["fi", "fi_approx", "iv", "random"]],
        default=["fi", "iv", "random"],
        help=f"Methods to compare, from {list(METHODS)}.",
    )
    parser.add_argument(
        "--budgets",
        type=list[int],
        default=[5, 10, 20],
        help="Numbers of samples to remove (0, the baseline, is always reported).",
    )
    parser.set_defaults(seeds=5)
    return parser


def main(argv: list[str]) -> None:
    """Run ``lightning-pareto trim`` with the given arguments (without the program and subcommand names).

    Args:
        argv: e.g. ``["--config", "configs/trim_gaussians.yaml", "--output_dir", "runs/trim"]``.

    Raises:
        ValueError: On an empty method list, no positive budget, a negative budget, bad seeds, or
            a budget that is not below the training-set size (raised before any training).
    """
    parser = build_parser()
    config = parser.parse_args(argv)
    methods, budgets, seeds = _check_plan(config.methods, config.budgets, config.seeds)
    output = prepare_output(parser, config)

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for number, seed in enumerate(seeds, start=1):
        objects = seeded_objects(parser, config, seed)
        report = trim(
            objects.net,
            objects.data,
            methods=methods,
            budgets=budgets,
            seed=seed,
            fitter=objects.fit,
            scoring=objects.scoring,
        )
        rows.extend(_report_rows(report, methods))
        write_csv(rows, output / "results.csv", COLUMNS)
        print(
            f"seed {seed} ({number}/{len(seeds)}, {time.perf_counter() - started:.0f} s): " + _seed_line(report),
            flush=True,
        )

    summary = summarize(rows, methods, [0, *budgets])
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    figure = accuracy_figure(summary)
    figure.savefig(output / "accuracy.png", dpi=120)
    _write_tensorboard(output, summary, figure)
    print(format_summary(summary))
    print(f"results in {output.resolve()}")


def summarize(rows: Sequence[dict[str, Any]], methods: Sequence[str], budgets: Sequence[int]) -> dict[str, Any]:
    """Aggregate result rows over seeds.

    Args:
        rows: Rows with the keys of :data:`COLUMNS`.
        methods: Methods, in display order.
        budgets: Budgets, in display order (0 = baseline).

    Returns:
        ``{"seeds": S, "budgets": [...], "methods": {method: {budget: {"mean", "std", "n",
        "score_seconds", <precision>...}}}, "comparisons": {"<m>_vs_iv": {budget: {"wins", "ties", "losses"}}}}``
        with budgets as strings (JSON keys); accuracies are fractions. Comparisons pair each of
        ``"fi"``/``"fi_approx"`` with ``"iv"`` seed by seed (the paper's "# of better case").
    """
    by_key = {(row["method"], row["seed"], row["budget"]): row for row in rows}
    seeds = sorted({row["seed"] for row in rows})
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for method in methods:
        table[method] = {}
        for budget in budgets:
            found = [by_key[(method, seed, budget)] for seed in seeds if (method, seed, budget) in by_key]
            accuracy = np.array([row["test_acc"] for row in found], dtype=np.float64)
            cell: dict[str, Any] = {
                "mean": float(accuracy.mean()) if accuracy.size else math.nan,
                "std": float(accuracy.std()) if accuracy.size else math.nan,
                "n": int(accuracy.size),
            }
            if budget > 0 and found:
                cell["score_seconds"] = float(np.mean([row["score_seconds"] for row in found]))
            for key in _PRECISIONS:
                values = [row[key] for row in found if row.get(key) is not None]
                if values:
                    cell[key] = float(np.mean(values))
            table[method][str(budget)] = cell
    comparisons: dict[str, dict[str, dict[str, int]]] = {}
    for method in ("fi", "fi_approx"):
        if method not in methods or "iv" not in methods:
            continue
        counts = {}
        for budget in budgets:
            if budget == 0:
                continue
            pairs = [
                (by_key[(method, s, budget)]["test_acc"], by_key[("iv", s, budget)]["test_acc"])
                for s in seeds
                if (method, s, budget) in by_key and ("iv", s, budget) in by_key
            ]
            counts[str(budget)] = {
                "wins": sum(a > b for a, b in pairs),
                "ties": sum(a == b for a, b in pairs),
                "losses": sum(a < b for a, b in pairs),
            }
        comparisons[f"{method}_vs_iv"] = counts
    return {"seeds": len(seeds), "budgets": list(budgets), "methods": table, "comparisons": comparisons}


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table: mean ± std test accuracy (%) per budget and method, and the FI-vs-IV counts."""
    methods = list(summary["methods"])
    comparisons = summary["comparisons"]
    header = ["budget", *methods, *(f"{name.split('_vs_')[0]} > iv" for name in comparisons)]
    lines = []
    for budget in summary["budgets"]:
        line = [str(budget)]
        for method in methods:
            cell = summary["methods"][method][str(budget)]
            text = f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}" if cell["n"] else "-"
            precision = [f"{cell[key]:.2f}" for key in _PRECISIONS if key in cell]
            line.append(text + (f" (p {'/'.join(precision)})" if precision else ""))
        for counts in comparisons.values():
            count = counts.get(str(budget))
            line.append(f"{count['wins']}/{summary['seeds']} ({count['ties']} ties)" if count else "")
        lines.append(line)
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def render(row: list[str]) -> str:
        return "  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip()

    note = f"Test accuracy (%), mean ± std over {summary['seeds']} seeds"
    corrupted = [
        key
        for key in _PRECISIONS
        if any(key in cells[str(b)] for cells in summary["methods"].values() for b in summary["budgets"])
    ]
    if corrupted:
        kinds = " / ".join(key.removesuffix("_precision") for key in corrupted)
        note += f"; (p ...) = share of the removed samples that the data set corrupted ({kinds})"
    note += "."
    return "\n".join([note, render(header), render(["-" * w for w in widths]), *map(render, lines)])


def accuracy_figure(summary: dict[str, Any]) -> Figure:
    """Mean test accuracy (%) against budget, one line per method, a band of ± one std over seeds."""
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    axes = figure.add_subplot()
    budgets = np.array(summary["budgets"])
    for method, cells in summary["methods"].items():
        mean = 100 * np.array([cells[str(b)]["mean"] for b in budgets])
        std = 100 * np.array([cells[str(b)]["std"] for b in budgets])
        (line,) = axes.plot(budgets, mean, marker="o", label=method)
        axes.fill_between(budgets, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
    axes.set_xlabel("budget b (training samples removed)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"Data trimming, mean ± std over {summary['seeds']} seeds")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _check_plan(
    methods: list[str], budgets: list[int], seeds: int | list[int]
) -> tuple[list[str], list[int], list[int]]:
    methods = check_names(methods, METHODS, "methods")
    if any(budget < 0 for budget in budgets):
        raise ValueError(f"budgets must be >= 0 (numbers of samples to remove), got {budgets}")
    positive = sorted({budget for budget in budgets if budget > 0})
    if not positive:
        raise ValueError(f"budgets must contain at least one positive budget, got {budgets}")
    return methods, positive, seed_list(seeds)


def _report_rows(report: TrimReport, methods: Sequence[str]) -> list[dict[str, Any]]:
    empty = dict.fromkeys(_PRECISIONS)
    rows = [
        {
            "method": method,
            "seed": report.seed,
            "budget": 0,
            "test_acc": report.baseline_acc,
            "seconds": report.train_seconds,
            "score_seconds": 0.0,
            "retrain_seconds": 0.0,
            **empty,
        }
        for method in methods
    ]
    for outcome in report.outcomes:
        rows.append(
            {
                "method": outcome.method,
                "seed": report.seed,
                "budget": outcome.budget,
                "test_acc": outcome.test_acc,
                "seconds": outcome.score_seconds + outcome.retrain_seconds,
                "score_seconds": outcome.score_seconds,
                "retrain_seconds": outcome.retrain_seconds,
                **empty,
                **outcome.precision,
            }
        )
    return rows


def _seed_line(report: TrimReport) -> str:
    parts = [f"baseline {100 * report.baseline_acc:.2f}%"]
    parts += [f"{o.method}@{o.budget} {100 * o.test_acc:.2f}%" for o in report.outcomes]
    return ", ".join(parts)


def _write_tensorboard(output: Path, summary: dict[str, Any], figure: Figure) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(output))
    try:
        for method, cells in summary["methods"].items():
            for budget, cell in cells.items():
                step = int(budget)
                writer.add_scalar(f"trim/test_acc/{method}", cell["mean"], step)
                writer.add_scalar(f"trim/test_acc_std/{method}", cell["std"], step)
                if "score_seconds" in cell:
                    writer.add_scalar(f"trim/score_seconds/{method}", cell["score_seconds"], step)
                for key in _PRECISIONS:
                    if key in cell:
                        writer.add_scalar(f"trim/{key}/{method}", cell[key], step)
        for name, counts in summary["comparisons"].items():
            for budget, count in counts.items():
                writer.add_scalar(f"trim/{name.split('_vs_')[0]}_beats_iv", count["wins"], int(budget))
        writer.add_figure("trim/accuracy", figure, close=False)
    finally:
        writer.close()
