"""Scoring the weight search's candidates: genes -> LP thresholds -> weights -> fitness (Algorithm 1, line 7)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from lightning_pareto.pareto._arrays import as_float_array
from lightning_pareto.pareto._dual_simplex import Basis
from lightning_pareto.pareto._workers import SolverWorkers
from lightning_pareto.pareto.reweight import MIN_RELATIVE_GAIN, WeightLP, WeightSolution
from lightning_pareto.pareto.search_result import SearchResult, SearchStatus, TrialFunction

# Fitness levels below every real score (Algorithm 1 line 7's "large negative value").
NOT_IMPROVED_FITNESS = -1e6
"""Fitness of a candidate with a target class that does not improve (minus its total shortfall)."""
_NO_CANDIDATE_FITNESS = -2e6  # LP without weights, or (trial mode) no predicted target gain: never trained
_SKIPPED_FITNESS = -3e6  # not evaluated: the time budget ran out

TRIAL_SCREEN_RATIO = 0.5
"""Trial fitness: a candidate predicted (first order) to reach less than this fraction of the predicted fitness
of the best trialled candidate so far is not trained (``search_weights(trial_screen=...)``)."""

# Genes live in [0, 1]. A threshold gene maps log-uniformly to tau_c / (trust * mean |I[:, c]|) in
# [1e-3, 1]: from "no loss allowed" to the loss the whole trust budget could cause on an average sample.
_THRESHOLD_DECADES = 3.0
# The trust gene maps log-uniformly to [trust / 10, trust]: the given trust is a cap.
_TRUST_DECADES = 1.0


@dataclass(frozen=True, eq=False)
class _Candidate:
    solution: WeightSolution
    fitness: float
    improved: bool
    trial_accuracy: np.ndarray | None
    # Trial mode: the first-order fitness the screen compares with (None: not computed).
    predicted_fitness: float | None = None


class _Evaluator:
    """Decodes genes, solves the LP, scores candidates and remembers every one of them."""

    def __init__(
        self,
        lp: WeightLP,
        trial: TrialFunction | None,
        reference: np.ndarray | None,
        degradation_penalty: float,
        trust: float,
        search_trust: bool,
        trial_screen: float | None = None,
    ) -> None:
        self.lp = lp
        self.trial = trial
        self.reference = reference
        self.degradation_penalty = degradation_penalty
        self.trust = trust
        self.search_trust = search_trust
        self.candidates: dict[tuple[float, ...], _Candidate] = {}
        # Only the best candidate keeps its weights (the first of equal ones, as ``max`` picks): the
        # others' are dropped (375 weight vectors at n = 50,000 held 150 MB, and every fresh vector
        # cost its page faults).
        self._best_key: tuple[float, ...] | None = None
        # Per worker: the optimal bases its last run found, for the other workers' next runs.
        self._fresh_bases: list[list[tuple[int, Basis]]] = []
        self.trial_cache: dict[bytes, np.ndarray] = {}
        self.trials = 0
        self.trial_screen = trial_screen
        self.trials_skipped = 0  # candidates the screen scored without a trial
        self.trial_seconds = 0.0  # wall time inside the trial function
        self.target_mask = np.zeros(lp.num_classes, dtype=bool)
        self.target_mask[list(lp.targets)] = True

    def evaluate(self, genes: np.ndarray) -> float:
        """Fitness of a gene vector (clipped to [0, 1]); each distinct vector is scored once."""
        key = _key(genes)
        if key not in self.candidates:
            self.remember(key, self._score(np.asarray(key)))
        return self.candidates[key].fitness

    def evaluate_batch(self, genes: np.ndarray, workers: SolverWorkers | None) -> list[float]:
        """``evaluate`` of each row of ``genes``; new vectors are scored by ``workers`` when given.

        Raises:
            WorkerFailure: If a worker failed; nothing of the batch is remembered then.
        """
        keys = [_key(row) for row in genes]
        missing = list(dict.fromkeys(key for key in keys if key not in self.candidates))
        if workers is None or len(missing) < 2:
            return [self.evaluate(row) for row in genes]
        # Every count-th candidate per worker: neighbouring candidates often cost alike (elites
        # first, then offspring), so this balances the workers better than contiguous halves.
        runs = [missing[worker :: workers.count] for worker in range(workers.count)]
        if len(self._fresh_bases) != workers.count:
            self._fresh_bases = [[] for _ in range(workers.count)]
        # Each worker adopts the bases the others found in the previous batch.
        payloads = [
            (run, [basis for other, found in enumerate(self._fresh_bases) if other != worker for basis in found])
            for worker, run in enumerate(runs)
        ]
        replies = workers.call(payloads)
        scored = {
            key: candidate for run, (candidates, _) in zip(runs, replies) for key, candidate in zip(run, candidates)
        }
        self._fresh_bases = [found for _, found in replies]
        for key in missing:  # in GA order, whichever worker scored it
            self.remember(key, scored[key])
        return [self.candidates[key].fitness for key in keys]

    def score_run(
        self, payload: tuple[list[tuple[float, ...]], list[tuple[int, Basis]]]
    ) -> tuple[list[_Candidate], list[tuple[int, Basis]]]:
        """In a worker: adopt other workers' bases, score a run of gene vectors, return them and the new bases.

        Only the run's first best candidate keeps its weights: it is the only one of the run that
        ``remember`` can make the search's best (the first of equal candidates in evaluation order
        wins, and a run keeps the evaluation order of its candidates).
        """
        keys, foreign_bases = payload
        self.lp.adopt_bases(foreign_bases)
        mark = self.lp.bases_found
        scored = [self._score(np.asarray(key)) for key in keys]
        best = max(range(len(scored)), key=lambda index: scored[index].fitness, default=None)
        candidates = [
            candidate if index == best else _without_weights(candidate) for index, candidate in enumerate(scored)
        ]
        return candidates, self.lp.bases_found_since(mark)

    def warm_up(self) -> None:
        """Solve the LP of the middle gene vector (all genes 0.5) to fill the basis pools; nothing is remembered."""
        self._score(np.full(len(self.lp.non_targets) + int(self.search_trust), 0.5))

    def remember(self, key: tuple[float, ...], candidate: _Candidate) -> None:
        """Store a scored candidate; only the best so far (the first of equal ones) keeps its weights."""
        best = None if self._best_key is None else self.candidates[self._best_key]
        if best is None or candidate.fitness > best.fitness:
            if best is not None:
                self.candidates[self._best_key] = _without_weights(best)
            self._best_key = key
        else:
            candidate = _without_weights(candidate)
        self.candidates[key] = candidate

    def _score(self, genes: np.ndarray) -> _Candidate:
        num_thresholds = len(self.lp.non_targets)
        trust = self.trust * 10.0 ** (_TRUST_DECADES * (genes[-1] - 1.0)) if self.search_trust else self.trust
        non_targets = list(self.lp.non_targets)
        fractions = 10.0 ** (_THRESHOLD_DECADES * (genes[:num_thresholds] - 1.0))
        thresholds = trust * self.lp.column_scale[non_targets] * fractions
        solution = self.lp.solve(thresholds, trust)
        if solution.weights is None:
            return _Candidate(solution, _NO_CANDIDATE_FITNESS, improved=False, trial_accuracy=None)
        if self.trial is None:
            return self._judge(solution, solution.predicted_gain / self.lp.column_scale, None)
        if solution.objective <= MIN_RELATIVE_GAIN:
            return _Candidate(solution, _NO_CANDIDATE_FITNESS, improved=False, trial_accuracy=None)
        predicted = self._judge(solution, solution.predicted_gain / self.lp.column_scale, None).fitness
        if _trial_key(solution.weights) not in self.trial_cache:  # a repeated weighting costs no trial: never screened
            estimate = self._screened_fitness(predicted)
            if estimate is not None:
                self.trials_skipped += 1
                return _Candidate(solution, estimate, improved=False, trial_accuracy=None, predicted_fitness=predicted)
        accuracy = self._run_trial(solution.weights)
        return dataclasses.replace(
            self._judge(solution, accuracy - self.reference, accuracy), predicted_fitness=predicted
        )

    def _screened_fitness(self, predicted: float) -> float | None:
        """The fitness a candidate gets without a trial, or ``None`` when it must be trained.

        Once a trialled candidate improved, one whose predicted fitness is below ``trial_screen`` times the
        predicted fitness of the best trialled candidate is not trained. The yardstick is the current
        winner's prediction, not the highest prediction trialled: where large predicted gains overshoot in
        training and a modest candidate wins, the bar falls with it. The score is the candidate's predicted
        fitness on the trial scale (times the winner's realised-to-predicted ratio), at most
        ``trial_screen`` times the winner's fitness and at least minus it: it can never become the best,
        and the GA still ranks screened candidates by their prediction.
        """
        if self.trial_screen is None or self._best_key is None:
            return None
        best = self.candidates[self._best_key]
        if not best.improved or best.trial_accuracy is None or not (best.predicted_fitness or 0.0) > 0.0:
            return None  # nothing trialled has won yet, or its prediction gives no scale
        ratio = predicted / best.predicted_fitness
        if ratio >= self.trial_screen:
            return None
        return max(ratio, -1.0) * best.fitness

    def _run_trial(self, weights: np.ndarray) -> np.ndarray:
        key = _trial_key(weights)
        if key not in self.trial_cache:
            started = time.perf_counter()
            accuracy = as_float_array(self.trial(weights))
            self.trial_seconds += time.perf_counter() - started
            if accuracy.shape != (self.lp.num_classes,) or not np.all(np.isfinite(accuracy)):
                raise ValueError(
                    f"The trial function must return a finite per-class accuracy of shape ({self.lp.num_classes},); "
                    f"got {accuracy.tolist()}."
                )
            self.trials += 1
            self.trial_cache[key] = accuracy
        return self.trial_cache[key]

    def _judge(self, solution: WeightSolution, change: np.ndarray, accuracy: np.ndarray | None) -> _Candidate:
        # Predicted gains are relative to the column scale; accuracy changes are counted as they are.
        threshold = MIN_RELATIVE_GAIN if accuracy is None else 0.0
        target_change = change[self.target_mask]
        if np.any(target_change <= threshold):
            fitness = NOT_IMPROVED_FITNESS - float(np.maximum(-target_change, 0.0).sum())
            return _Candidate(solution, fitness, improved=False, trial_accuracy=accuracy)
        degradation = float(np.maximum(-change[~self.target_mask], 0.0).sum())
        fitness = float(target_change.sum()) - self.degradation_penalty * degradation
        return _Candidate(solution, fitness, improved=fitness > threshold, trial_accuracy=accuracy)

    def result(self, seconds: float, generations: int, stopped_early: bool) -> SearchResult:
        """The search's outcome from the best candidate scored so far."""
        num_classes = self.lp.num_classes
        counts = {
            "trials": self.trials,
            "generations": generations,
            "seconds": seconds,
            "stopped_early": stopped_early,
            "trials_skipped": self.trials_skipped,
            "trial_seconds": self.trial_seconds,
        }
        if not self.candidates:
            return SearchResult(
                status="no_improvement",
                reason="the time budget ran out before any candidate was evaluated",
                weights=None,
                thresholds=np.full(num_classes, np.nan),
                trust=float("nan"),
                fitness=_SKIPPED_FITNESS,
                predicted_gain=np.full(num_classes, np.nan),
                trial_accuracy=None,
                evaluations=0,
                **counts,
            )
        # The first of equal candidates (as max() would pick): evaluation order is seeded, so this is
        # deterministic. It is the only one that kept its weights.
        best = self.candidates[self._best_key]
        if best.improved:
            status: SearchStatus = "improved"
            reason = ""
        elif all(candidate.solution.status != "optimal" for candidate in self.candidates.values()):
            status, reason = "infeasible", f"no candidate's LP gave weights; last: {best.solution.reason}"
        else:
            status = "no_improvement"
            measured = "trial accuracy" if self.trial is not None else "predicted gain"
            reason = (
                f"none of {len(self.candidates)} candidates improved every target class {list(self.lp.targets)} "
                f"({measured}) by more than the penalised loss of the other classes; uniform weights are kept"
            )
        return SearchResult(
            status=status,
            reason=reason,
            weights=best.solution.weights if best.improved else None,
            thresholds=best.solution.thresholds,
            trust=best.solution.trust,
            fitness=best.fitness,
            predicted_gain=best.solution.predicted_gain,
            trial_accuracy=best.trial_accuracy,
            evaluations=len(self.candidates),
            **counts,
        )


def _key(genes: np.ndarray) -> tuple[float, ...]:
    """A gene vector clipped to [0, 1], as a hashable key."""
    return tuple(np.clip(genes, 0.0, 1.0).tolist())


def _trial_key(weights: np.ndarray) -> bytes:
    """Weights rounded to 1e-9, as the trial cache's key: equal weightings are trained once."""
    return np.round(weights, 9).tobytes()


def _without_weights(candidate: _Candidate) -> _Candidate:
    return dataclasses.replace(candidate, solution=dataclasses.replace(candidate.solution, weights=None))
