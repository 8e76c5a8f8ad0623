"""What the Pareto-LP-GA weight search returns, and the trial function it may call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["SearchResult", "SearchStatus", "TrialFunction"]

TrialFunction = Callable[[np.ndarray], Any]
"""``trial(weights) -> per-class accuracy``: weights of shape ``(n,)``, accuracy array-like of shape ``(K,)``."""

SearchStatus = Literal["improved", "no_improvement", "infeasible"]


@dataclass(frozen=True, eq=False)
class SearchResult:
    """Outcome of :func:`search_weights`.

    Attributes:
        status: ``"improved"`` (a candidate improved every target with positive fitness), ``"no_improvement"`` or
            ``"infeasible"`` (no candidate's LP gave weights).
        reason: Why there are no weights; empty when improved.
        weights: Best candidate's weights, float64 array of shape ``(n,)`` with mean one, or ``None``
            unless improved (the caller keeps uniform weights).
        thresholds: Best candidate's thresholds ``tau`` per class, float64 array of shape ``(K,)`` in
            the influence matrix's units, NaN at targets (all NaN when nothing was evaluated).
        trust: Best candidate's trust radius.
        fitness: Best candidate's fitness (see :func:`search_weights`).
        predicted_gain: Best candidate's first-order predicted gains ``(K,)`` in the influence units.
        trial_accuracy: Best candidate's per-class accuracy ``(K,)`` from the trial, or ``None``
            (predicted mode, or the best candidate was not trained).
        evaluations: Distinct candidates evaluated (one LP solve each).
        trials: Calls of the trial function.
        generations: Generations completed.
        seconds: Wall-clock time of the search, trials included.
        stopped_early: Whether the time budget stopped the search.
        trials_skipped: Trial fitness: candidates scored without a trial because their predicted fitness
            fell well short of the best trialled candidate's (see ``search_weights(trial_screen=...)``).
        trial_seconds: Wall-clock time inside the trial function, part of ``seconds`` (0 with predicted
            fitness).
    """

    status: SearchStatus
    reason: str
    weights: np.ndarray | None
    thresholds: np.ndarray
    trust: float
    fitness: float
    predicted_gain: np.ndarray
    trial_accuracy: np.ndarray | None
    evaluations: int
    trials: int
    generations: int
    seconds: float
    stopped_early: bool
    trials_skipped: int = 0
    trial_seconds: float = 0.0

    @classmethod
    def given(cls, weights: np.ndarray, num_classes: int, evaluations: int = 0) -> SearchResult:
        """An ``"improved"`` result carrying ``weights`` chosen without a search (a baseline's, in benchmarks).

        Example:
            >>> result = SearchResult.given(np.ones(4), num_classes=3)
            >>> result.status, result.weights.tolist(), result.predicted_gain.tolist()
            ('improved', [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
        """
        return cls(
            status="improved",
            reason="",
            weights=np.asarray(weights, dtype=np.float64),
            thresholds=np.full(num_classes, np.nan),
            trust=0.0,
            fitness=0.0,
            predicted_gain=np.zeros(num_classes),
            trial_accuracy=None,
            evaluations=evaluations,
            trials=0,
            generations=0,
            seconds=0.0,
            stopped_early=False,
        )

    def to_dict(self) -> dict[str, Any]:
        """Returns everything but the weights as JSON-serialisable builtins."""
        return {
            "status": self.status,
            "reason": self.reason,
            "thresholds": self.thresholds.tolist(),
            "trust": self.trust,
            "fitness": self.fitness,
            "predicted_gain": self.predicted_gain.tolist(),
            "trial_accuracy": None if self.trial_accuracy is None else self.trial_accuracy.tolist(),
            "evaluations": self.evaluations,
            "trials": self.trials,
            "generations": self.generations,
            "seconds": self.seconds,
            "stopped_early": self.stopped_early,
            "trials_skipped": self.trials_skipped,
            "trial_seconds": self.trial_seconds,
        }
