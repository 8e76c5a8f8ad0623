"""One intervention as ``interventions.jsonl`` holds it, and the file's atomic rewrite."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RECORDS_FILE", "WEIGHTS_FOLDER", "InterventionRecord", "save_weights", "write_records"]

RECORDS_FILE = "interventions.jsonl"
WEIGHTS_FOLDER = "intervention_weights"


@dataclass
class InterventionRecord:
    """One intervention, as written to ``interventions.jsonl``.

    Attributes:
        number: The intervention's number in the run (1-based), the same in the console, the table,
            TensorBoard and the weights file's name.
        epoch: The epoch whose state the weights were computed from (DI: the chosen epoch; CC: the
            detrimental epoch that was rolled back).
        mode: ``"direct_improvement"`` or ``"course_correction"``.
        targets: Target class indices.
        before: Per-class validation accuracy before (DI: after epoch ``epoch``; CC: after the epoch
            preceding the detrimental one), NaN for classes without validation samples.
        after: Per-class validation accuracy after the weighted epoch(s), or ``None`` (skipped, or
            the run ended first).
        bad: CC only: per-class validation accuracy after the detrimental epoch.
        status: ``"applied"`` or ``"skipped"``.
        reason: Why it was skipped (empty when applied).
        seconds: Wall-clock seconds of influence, ceiling check and search.
        influence_seconds: Seconds of each phase of the influence computation that ran (``factors``,
            ``eigen``, ``correction``, ``queries``, ``precondition``, ``scores``; rank zero's), part of
            ``seconds``; the search's are in ``search``.
        weighted_epochs: ``trainer.current_epoch`` of every epoch trained with the weights.
        n_weighted: Number of training samples whose weight differs from one.
        ceiling: The ceiling report's summary (``ratio``, ``verdict``, ``pca_ratio``, region counts).
        thresholds: Per-class thresholds ``tau`` of the chosen LP (``None`` at targets).
        trust: Trust radius of the chosen LP.
        predicted_gain: First-order predicted per-class gain of the chosen weights,
            ``Delta_c = I[:, c]^T (w - 1) / n``: the predicted decrease of class ``c``'s mean validation
            loss (cross-entropy, nats).
        realised_change: Per-class change of validation accuracy (a fraction) the weighted epoch(s)
            realised: ``after`` minus ``before`` (CC: minus ``bad``, the detrimental epoch the redo
            replaced); ``None`` without both.
        fitness: Fitness of the chosen candidate.
        search: The search's status, evaluations, trials, generations, seconds and (trial fitness)
            the chosen candidate's trial accuracy.
        guard: One entry per weighted epoch checked on validation: ``epoch``, ``scale`` (the
            fraction of the searched ``|w - 1|`` in force), realised per-class ``change`` against the
            epoch before (the paired guards: against the counterfactual epoch, ``against`` when it came
            after), ``violations`` (non-targets that fell past the tolerance) and ``action`` (``"kept"``,
            ``"rollback"``, ``"shrink"``, ``"retry"``, ``"dropped"``, ``"confirm"``: a counterfactual
            epoch follows; CC: ``"accepted"``, ``"rejected"``); the paired guards' counterfactual
            epochs are entries with ``action="counterfactual"``.
        extra_epochs: Training epochs the intervention added to the run: CC's redo, the paired guard's
            counterfactual epoch, rolled-back or rejected weighted tries (their cost beside ``seconds``).
        epoch_seconds: The fit's epoch time the cost is counted in: the median wall time of its
            epochs so far (training plus validation; epochs an intervention added left out), or
            ``None`` if none was timed.
        cost_epochs: The intervention's cost in epochs (seconds / ``epoch_seconds``), filled when it is
            finished: ``influence``, ``search`` (the weight search, trials included), ``trials`` (trial
            training alone; 0 with predicted fitness), ``other`` (the rest of ``seconds``: ceiling
            check, logging, saving), ``extra_epochs`` and ``total`` (``influence + search + other +
            extra_epochs``); ``None`` without an epoch time (and in records written before it existed).
        weights_file: The searched weights, relative to the log folder: an ``.npz`` with ``index`` (dataset
            index), ``weights``, ``influence`` ``(n, K)``, ``targets`` and ``class_names``
            (``numpy.load``; ``pandas.DataFrame({"index": f["index"], "weight": f["weights"]})``).
    """

    epoch: int
    mode: str
    targets: list[int]
    before: list[float] | None
    number: int = 0
    after: list[float] | None = None
    bad: list[float] | None = None
    status: str = "skipped"
    reason: str = ""
    seconds: float = 0.0
    influence_seconds: dict[str, float] = field(default_factory=dict)
    weighted_epochs: list[int] = field(default_factory=list)
    n_weighted: int = 0
    ceiling: dict[str, Any] | None = None
    thresholds: list[float | None] | None = None
    trust: float | None = None
    predicted_gain: list[float] | None = None
    realised_change: list[float | None] | None = None
    fitness: float | None = None
    search: dict[str, Any] | None = None
    guard: list[dict[str, Any]] = field(default_factory=list)
    weights_file: str | None = None
    extra_epochs: int = 0
    epoch_seconds: float | None = None
    cost_epochs: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-safe builtins (NaN and infinities become ``None``)."""
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> InterventionRecord:
        """Rebuild a record from :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in state.items() if key in names})

    def realise(self) -> None:
        """Fill :attr:`realised_change` from ``after`` and the accuracy the weighted epoch(s) are judged against."""
        reference = self.bad if self.bad is not None else self.before
        if self.after is None or reference is None:
            self.realised_change = None
            return
        self.realised_change = [
            None if a is None or r is None or math.isnan(a) or math.isnan(r) else a - r
            for a, r in zip(self.after, reference)
        ]

    def update_from(self, state: dict[str, Any]) -> None:
        """Take over every field of another record's :meth:`to_dict` (rank zero's decision on every rank)."""
        decided = InterventionRecord.from_dict(state)
        for item in fields(InterventionRecord):
            setattr(self, item.name, getattr(decided, item.name))


def write_records(path: Path, records: Sequence[InterventionRecord]) -> None:
    """Rewrite ``path`` with one JSON line per record; a crash mid-write leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    os.replace(partial, path)


def save_weights(
    log_dir: Path, record: InterventionRecord, weights: np.ndarray, influence: np.ndarray, class_names: Sequence[str]
) -> str:
    """Save one intervention's weights and influence matrix by dataset index; the file's name relative to ``log_dir``.

    Args:
        log_dir: The run's log folder.
        record: The intervention (its number, mode, epoch and targets name and fill the file).
        weights: ``(n,)`` weights, position = dataset index.
        influence: ``(n, K)`` category-wise influence the weights were searched on.
        class_names: One name per class.
    """
    name = f"{WEIGHTS_FOLDER}/{record.number:03d}_{record.mode}_epoch{record.epoch}.npz"
    (log_dir / WEIGHTS_FOLDER).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        log_dir / name,
        index=np.arange(weights.shape[0]),
        weights=weights.astype(np.float32),
        influence=influence.astype(np.float32),
        targets=np.asarray(record.targets, dtype=np.int64),
        class_names=np.asarray(class_names),
    )
    return name


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value
