"""What a user reads about the interventions: the before/after table and the TensorBoard entries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_pareto.callbacks._record import InterventionRecord

if TYPE_CHECKING:
    from lightning_pareto.pareto.ceiling import CeilingReport
    from lightning_pareto.pareto.search import SearchResult

__all__ = [
    "intervention_label",
    "intervention_table",
    "log_outcome",
    "log_search",
    "log_start",
    "notify",
    "outcome_figure",
]

TAG = "pareto"
GAIN_UNIT = "predicted decrease of the class's mean validation loss (nats), first order"


def intervention_table(records: Sequence[InterventionRecord], class_names: Sequence[str]) -> str:
    """Per-class validation accuracy before and after each intervention, as a text table.

    Args:
        records: The interventions, in order.
        class_names: One name per class.

    Returns:
        One block per intervention: a header line (mode, epoch, targets, status; applied ones also their
        seconds, in epochs of the fit when timed, and the extra epochs they trained) and, per class,
        the accuracy before, after the detrimental epoch (CC), after the weighted epoch(s) and the
        change; target classes are starred. Skipped interventions show their reason.
    """
    blocks = ["Interventions: per-class validation accuracy (%), * = target"]
    width = max([len("mean targets"), *(len(str(n)) + 2 for n in class_names)])
    for position, record in enumerate(records, start=1):
        names = [class_names[t] for t in record.targets if t < len(class_names)]
        header = f"#{record.number or position} {record.mode} at epoch {record.epoch}, targets {names}: {record.status}"
        if record.status != "applied":
            blocks.append(f"{header} ({record.reason})")
            continue
        epochs = ",".join(str(e) for e in record.weighted_epochs)
        has_bad = record.bad is not None
        columns = ["before", *(["bad"] if has_bad else []), f"after{' ' + epochs if epochs else ''}", "change"]
        lines = [
            f"{header} ({record.seconds:.1f} s{_cost_text(record)}, {record.n_weighted} samples reweighted)",
            f"{'class':<{width}}" + "".join(f"  {c:>10}" for c in columns),
        ]
        reference = record.bad if has_bad else record.before
        rows = [(f"{'*' if c in record.targets else ' '} {name}", c) for c, name in enumerate(class_names)]
        for label, c in rows:
            values = [_at(record.before, c), *([_at(record.bad, c)] if has_bad else []), _at(record.after, c)]
            change = _at(record.after, c) - _at(reference, c)
            lines.append(
                f"{label:<{width}}"
                + "".join(f"  {_percent(v):>10}" for v in values)
                + f"  {_percent(change, signed=True):>10}"
            )
        for label, group in (
            ("targets", record.targets),
            ("others", [c for c in range(len(class_names)) if c not in record.targets]),
        ):
            if not group:
                continue
            values = [
                _mean(record.before, group),
                *([_mean(record.bad, group)] if has_bad else []),
                _mean(record.after, group),
            ]
            change = _mean(record.after, group) - _mean(reference, group)
            lines.append(
                f"{'mean ' + label:<{width}}"
                + "".join(f"  {_percent(v):>10}" for v in values)
                + f"  {_percent(change, signed=True):>10}"
            )
        if has_bad:
            lines.append("(change: after the weighted redo minus the detrimental epoch it replaced)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def notify(trainer: Trainer, message: str) -> None:
    """Print ``message`` on its own line on rank zero: through the progress bar while one is shown, else Lightning's log."""
    if not trainer.is_global_zero:
        return
    bar = trainer.progress_bar_callback
    if bar is not None and bar.is_enabled:
        bar.print(message)
    else:
        rank_zero_info(message)


def intervention_label(record: InterventionRecord) -> str:
    """``"#2 Course Correction: rejected"``: how figures and notices name an intervention."""
    return f"#{record.number} {record.mode.replace('_', ' ').title()}: {record.status}"


def outcome_figure(records: Sequence[InterventionRecord], class_names: Sequence[str]) -> Any | None:
    """Predicted gain beside realised change for the records that have both (a Figure), or ``None``."""
    from lightning_pareto.plots import predicted_vs_realised

    shown = [r for r in records if r.predicted_gain is not None and r.realised_change is not None]
    if not shown:
        return None
    nan = float("nan")
    return predicted_vs_realised(
        class_names,
        [f"{intervention_label(r)} (after epoch {r.epoch}, weighted epochs {r.weighted_epochs})" for r in shown],
        np.array([[nan if g is None else g for g in r.predicted_gain] for r in shown], dtype=np.float64),
        np.array([[nan if g is None else g for g in r.realised_change] for r in shown], dtype=np.float64),
        [r.targets for r in shown],
    )


def log_search(
    trainer: Trainer,
    class_names: Sequence[str],
    record: InterventionRecord,
    report: CeilingReport,
    influence: np.ndarray,
    result: SearchResult,
    *,
    log_figures: bool,
    w_min: float,
    w_max: float,
) -> None:
    """Log one search (rank zero): predicted gains to every logger; ceiling text and figures to TensorBoard.

    ``pareto/predicted_gain/<class>`` is in nats (the first-order predicted decrease of the class's mean
    validation loss) and its step is the intervention's number, so each intervention is one point.
    """
    if not trainer.is_global_zero:
        return
    step = trainer.global_step
    scalars = {
        f"{TAG}/predicted_gain/{name}": float(g)
        for name, g in zip(class_names, result.predicted_gain)
        if np.isfinite(g)
    }
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=record.number)
    for experiment in _tensorboards(trainer):
        experiment.add_text(f"{TAG}/ceiling", _code_block(str(report)), global_step=step)
        if not log_figures:
            continue
        from lightning_pareto.plots import ceiling_figure, influence_scatter, weights_histogram

        weights = result.weights
        experiment.add_figure(f"{TAG}/ceiling", ceiling_figure(report, class_names), global_step=step)
        experiment.add_figure(
            f"{TAG}/influence_scatter",
            influence_scatter(influence, record.targets, class_names, weights),
            global_step=step,
        )
        if weights is not None:
            experiment.add_histogram(f"{TAG}/weights", np.asarray(weights), global_step=step)
            experiment.add_figure(
                f"{TAG}/weights_histogram", weights_histogram(weights, w_min, w_max), global_step=step
            )


def log_start(trainer: Trainer, record: InterventionRecord, class_names: Sequence[str]) -> None:
    """At the intervention's step: ``pareto/interventions`` as a scalar (its number) and as text (what it does)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics({f"{TAG}/interventions": float(record.number)}, step=trainer.global_step)
    names = [class_names[t] for t in record.targets if t < len(class_names)]
    for experiment in _tensorboards(trainer):
        experiment.add_text(
            f"{TAG}/interventions",
            f"{intervention_label(record)} from the state after epoch {record.epoch}, targets {names}",
            global_step=trainer.global_step,
        )


def log_outcome(
    trainer: Trainer, record: InterventionRecord, records: Sequence[InterventionRecord], class_names: Sequence[str]
) -> None:
    """A finished intervention (rank zero): its table as text, ``pareto/realised_change/<class>`` (accuracy points,
    step = its number) and the predicted-vs-realised figure of every intervention so far."""
    if record.realised_change is not None:
        scalars = {
            f"{TAG}/realised_change/{name}": 100.0 * float(change)
            for name, change in zip(class_names, record.realised_change)
            if change is not None
        }
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=record.number)
    experiments = _tensorboards(trainer)
    figure = outcome_figure(records, class_names) if experiments else None
    for experiment in experiments:
        text = intervention_table([record], class_names)
        if record.predicted_gain is not None:
            text += f"\n\npredicted_gain: {GAIN_UNIT}; realised change: validation accuracy points"
        experiment.add_text(f"{TAG}/summary", _code_block(text), global_step=trainer.global_step)
        if figure is not None:
            experiment.add_figure(f"{TAG}/predicted_vs_realised", figure, global_step=record.number, close=False)


def _tensorboards(trainer: Trainer) -> list[Any]:
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _code_block(text: str) -> str:
    # TensorBoard renders text as markdown; indenting keeps the table's columns.
    return "\n".join("    " + line for line in text.splitlines())


def _cost_text(record: InterventionRecord) -> str:
    """`` = 3.1 epochs + 1 extra epoch`` after the seconds, or nothing without a cost in epochs."""
    cost = record.cost_epochs
    if not cost:
        return ""
    try:
        extra = cost["extra_epochs"]
        text = f" = {cost['total'] - extra:.1f} epochs"
    except (KeyError, TypeError):  # a record from elsewhere: its console line goes on without the cost
        return ""
    if extra:
        text += f" + {extra:g} extra epoch{'' if extra == 1 else 's'}"
    return text


def _at(values: Sequence[float | None] | None, c: int) -> float:
    if values is None or c >= len(values) or values[c] is None:
        return math.nan
    return float(values[c])


def _mean(values: Sequence[float | None] | None, classes: Sequence[int]) -> float:
    present = [v for v in (_at(values, c) for c in classes) if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def _percent(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "-"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"
