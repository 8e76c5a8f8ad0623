"""Genetic search over the LP's class thresholds (and trust radius): the GA of seed 003's Pareto-LP-GA."""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pygad

from lightning_pareto.pareto._arrays import as_float_array
from lightning_pareto.pareto._dual_simplex import Basis
from lightning_pareto.pareto._workers import SolverWorkers, WorkerFailure, fork_workers_available
from lightning_pareto.pareto.reweight import MIN_RELATIVE_GAIN, Scale, WeightLP, WeightSolution

TrialFunction = Callable[[np.ndarray], Any]
"""``trial(weights) -> per-class accuracy``: weights of shape ``(n,)``, accuracy array-like of shape ``(K,)``."""

SearchStatus = Literal["improved", "no_improvement", "infeasible"]

PARALLEL_MIN_SAMPLES = 20_000
"""From this many training samples on, ``search_weights(workers=None)`` solves the LPs in two processes."""

# Fitness levels below every real score (Algorithm 1 line 7's "large negative value").
NOT_IMPROVED_FITNESS = -1e6
"""Fitness of a candidate with a target class that does not improve (minus its total shortfall)."""
_NO_CANDIDATE_FITNESS = -2e6  # LP without weights, or (trial mode) no predicted target gain: never trained
_SKIPPED_FITNESS = -3e6  # not evaluated: the time budget ran out

# Genes live in [0, 1]. A threshold gene maps log-uniformly to tau_c / (trust * mean |I[:, c]|) in
# [1e-3, 1]: from "no loss allowed" to the loss the whole trust budget could cause on an average sample.
_THRESHOLD_DECADES = 3.0
# The trust gene maps log-uniformly to [trust / 10, trust]: the given trust is a cap.
_TRUST_DECADES = 1.0


@dataclass(frozen=True)
class GAPreset:
    """Genetic-algorithm settings.

    Attributes:
        generations: Number of generations after the initial population.
        population: Candidates per generation.
        elites: Best candidates copied unchanged into the next generation (pygad ``keep_elitism``).
        mutation_rate: Probability that a gene is mutated.
        mutation_strength: Mutations add a uniform value in ``[-strength, strength]`` to a gene in [0, 1].
    """

    generations: int
    population: int
    elites: int
    mutation_rate: float
    mutation_strength: float


PRESETS: dict[str, GAPreset] = {
    # Seed 003 Table 2: 20 iterations, population 24, 6 elites, mutation rate and strength 0.25.
    "paper": GAPreset(generations=20, population=24, elites=6, mutation_rate=0.25, mutation_strength=0.25),
    # At most 6 + 3 * 4 = 18 distinct candidates, and fewer trials: candidates that repeat weights or
    # predict no target gain are not trained. With a trial of a quarter epoch that is a few epochs.
    "fast": GAPreset(generations=3, population=6, elites=2, mutation_rate=0.25, mutation_strength=0.25),
}


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
        seconds: Wall-clock time of the search.
        stopped_early: Whether the time budget stopped the search.
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
        }


@dataclass(frozen=True, eq=False)
class _Candidate:
    solution: WeightSolution
    fitness: float
    improved: bool
    trial_accuracy: np.ndarray | None


def search_weights(
    influence: Any,
    targets: Iterable[int] | int,
    *,
    fitness: Literal["predicted"] | TrialFunction = "predicted",
    reference: Any = None,
    preset: Literal["fast", "paper"] = "fast",
    generations: int | None = None,
    population: int | None = None,
    elites: int | None = None,
    mutation_rate: float | None = None,
    mutation_strength: float | None = None,
    search_trust: bool = True,
    degradation_penalty: float = 1.0,
    seed: int = 0,
    time_budget: float | None = None,
    progress: bool | None = None,
    w_min: float = 0.0,
    w_max: float = 3.0,
    trust: float = 0.5,
    scale: Scale = "mean_abs",
    workers: int | None = None,
) -> SearchResult:
    """Searches the LP's per-class thresholds with a genetic algorithm (seed 003, Algorithm 1).

    Each candidate holds one gene per non-target class c, mapped log-uniformly to
    ``tau_c = trust * mean|I[:, c]| * 10**(3 * (gene - 1))`` (from a thousandth to all of what the trust
    budget could cost class c), and, with ``search_trust``, one gene mapped log-uniformly to a trust
    radius in ``[trust / 10, trust]``. Each candidate is solved by the LP (:class:`WeightLP`, built once)
    and scored by per-class changes ``d``:

    - ``fitness="predicted"``: ``d_c = Delta_c / mean|I[:, c]|``, the LP's first-order predicted gains on
      the common scale (no training).
    - ``fitness=trial``: ``d = trial(weights) - reference``, per-class accuracy after training from the
      same state with the candidate's weights minus the reference accuracy (the paper's way; for Course
      Correction the reference is the detrimental epoch's accuracy). Candidates whose LP gives no
      weights or no predicted target gain are not trained; equal weights are trained once.

    Fitness (Algorithm 1 line 7): if some target t has ``d_t <= 0``, ``-1e6 - sum_t max(0, -d_t)``;
    otherwise ``sum_t d_t - degradation_penalty * sum_{c not target} max(0, -d_c)``. The search has
    improved when its best candidate raises every target and has a positive fitness (for predicted
    gains, above ``MIN_RELATIVE_GAIN``): at a two-class ceiling every target gain is an equal loss of
    the other class on the common scale, the fitness is zero and uniform weights are kept.

    Args:
        influence: Category-wise influence matrix, array-like or tensor of shape ``(n, K)``.
        targets: Class indices to improve.
        fitness: ``"predicted"`` or a trial function ``weights (n,) -> per-class accuracy (K,)``.
        reference: Per-class accuracy ``(K,)`` the trial is compared with; required with a trial
            function, not allowed in predicted mode.
        preset: ``"fast"`` (default; 3 generations of 6, 2 elites) or ``"paper"`` (20 generations of
            24, 6 elites, mutation rate and strength 0.25), see :data:`PRESETS`.
        generations: Overrides the preset's number of generations (>= 1).
        population: Overrides the preset's population size (>= 2).
        elites: Overrides the preset's number of elites (0 <= elites <= population).
        mutation_rate: Overrides the preset's gene mutation probability (in [0, 1]).
        mutation_strength: Overrides the preset's mutation range (> 0, genes live in [0, 1]).
        search_trust: Whether the trust radius is searched too (else fixed at ``trust``).
        degradation_penalty: Weight of the non-target degradation in the fitness (>= 0).
        seed: Seed of the GA; the same seed gives the same result (without a binding time budget).
        time_budget: Wall-clock seconds after which no new candidate is evaluated and the search stops.
        progress: Show a tqdm bar over generations; ``None`` shows it when stderr is a terminal.
        w_min: Smallest weight, passed to the LP.
        w_max: Largest weight, passed to the LP.
        trust: Trust radius of the LP (its cap when ``search_trust``).
        scale: Objective scale of the LP, ``"mean_abs"`` or ``"none"``.
        workers: Processes that solve a generation's LPs side by side (forked, Linux only; predicted
            fitness only). ``None`` uses two from ``PARALLEL_MIN_SAMPLES`` training samples on when two
            CPUs are usable (at n = 50,000 the paper search took about half the time), else one;
            ``1`` solves every LP in this process. The result does not depend on it beyond round-off.

    Returns:
        A :class:`SearchResult`; without a candidate that improves every target its status is
        ``"no_improvement"`` (or ``"infeasible"``) and its weights ``None``.

    Raises:
        ValueError: On malformed arguments (the message names the argument), or a trial result that
            is not a finite array of shape ``(K,)``.
        TypeError: If ``fitness`` is neither ``"predicted"`` nor callable.
    """
    start = time.perf_counter()
    lp = WeightLP(influence, targets, w_min=w_min, w_max=w_max, scale=scale)
    settings = _resolve_settings(preset, generations, population, elites, mutation_rate, mutation_strength)
    trial, reference_accuracy = _resolve_fitness_mode(fitness, reference, lp.num_classes)
    if not (np.isfinite(trust) and trust > 0):
        raise ValueError(f"`trust` must be a finite number > 0 (mean |w - 1| allowed); got {trust!r}.")
    if not (np.isfinite(degradation_penalty) and degradation_penalty >= 0):
        raise ValueError(f"`degradation_penalty` must be a finite number >= 0; got {degradation_penalty!r}.")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"`time_budget` must be a positive number of seconds or None; got {time_budget!r}.")

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"`workers` must be None or an integer >= 1; got {workers!r}.")

    evaluator = _Evaluator(lp, trial, reference_accuracy, degradation_penalty, trust, search_trust)
    deadline = None if time_budget is None else start + time_budget
    num_genes = len(lp.non_targets) + int(search_trust)
    generations_done, stopped_early = 0, False
    if num_genes == 0:
        evaluator.evaluate(np.zeros(0))
    else:
        with _solver_workers(evaluator, workers, settings) as pool:
            generations_done, stopped_early = _run_ga(evaluator, num_genes, settings, seed, deadline, progress, pool)
    return evaluator.result(time.perf_counter() - start, generations_done, stopped_early)


@contextmanager
def _solver_workers(evaluator: _Evaluator, workers: int | None, settings: GAPreset) -> Iterator[SolverWorkers | None]:
    """The worker processes the search should use (``None``: solve here), closed on exit."""
    available = fork_workers_available()
    if workers is None:
        large = evaluator.lp.num_samples >= PARALLEL_MIN_SAMPLES and settings.population > 1
        workers = 2 if evaluator.trial is None and large and available >= 2 else 1
    elif workers > 1 and (evaluator.trial is not None or available == 0):
        why = "trial fitness trains models in this process" if evaluator.trial is not None else "fork is not available"
        warnings.warn(f"workers={workers} ignored: {why}; the LPs are solved in this process", UserWarning, stacklevel=3)
        workers = 1
    if workers == 1:
        yield None
        return
    # One LP solved here before forking (genes at the middle of their range, its result discarded) leaves
    # every worker a warm basis pool: otherwise each starts the first generation from scratch.
    evaluator.warm_up()
    try:
        pool = SolverWorkers(evaluator.score_run, workers)
    except WorkerFailure as failure:
        warnings.warn(f"{failure}; the weight search runs in this process", RuntimeWarning, stacklevel=3)
        yield None
        return
    try:
        yield pool
    finally:
        pool.close()


def _resolve_settings(
    preset: str,
    generations: int | None,
    population: int | None,
    elites: int | None,
    mutation_rate: float | None,
    mutation_strength: float | None,
) -> GAPreset:
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}; got {preset!r}.")
    base = PRESETS[preset]
    settings = GAPreset(
        generations=base.generations if generations is None else generations,
        population=base.population if population is None else population,
        elites=base.elites if elites is None else elites,
        mutation_rate=base.mutation_rate if mutation_rate is None else mutation_rate,
        mutation_strength=base.mutation_strength if mutation_strength is None else mutation_strength,
    )
    if not (isinstance(settings.generations, int) and settings.generations >= 1):
        raise ValueError(f"`generations` must be an integer >= 1; got {settings.generations!r}.")
    if not (isinstance(settings.population, int) and settings.population >= 2):
        raise ValueError(f"`population` must be an integer >= 2; got {settings.population!r}.")
    if not (isinstance(settings.elites, int) and 0 <= settings.elites <= settings.population):
        raise ValueError(
            f"`elites` must be an integer in [0, population={settings.population}]; got {settings.elites!r}."
        )
    if not 0.0 <= settings.mutation_rate <= 1.0:
        raise ValueError(f"`mutation_rate` must lie in [0, 1]; got {settings.mutation_rate!r}.")
    if not settings.mutation_strength > 0:
        raise ValueError(f"`mutation_strength` must be > 0 (genes live in [0, 1]); got {settings.mutation_strength!r}.")
    return settings


def _resolve_fitness_mode(
    fitness: Any, reference: Any, num_classes: int
) -> tuple[TrialFunction | None, np.ndarray | None]:
    if isinstance(fitness, str):
        if fitness != "predicted":
            raise ValueError(f"`fitness` must be 'predicted' or a trial function; got {fitness!r}.")
        if reference is not None:
            raise ValueError("`reference` is only used with a trial function; pass fitness=trial or drop `reference`.")
        return None, None
    if not callable(fitness):
        raise TypeError(
            f"`fitness` must be 'predicted' or a callable trial(weights) -> accuracy; got {type(fitness).__name__}."
        )
    if reference is None:
        raise ValueError("`reference` (per-class accuracy, shape (K,)) is required when `fitness` is a trial function.")
    reference_accuracy = as_float_array(reference)
    if reference_accuracy.shape != (num_classes,) or not np.all(np.isfinite(reference_accuracy)):
        raise ValueError(
            f"`reference` must be a finite per-class accuracy of shape ({num_classes},); "
            f"got {reference_accuracy.tolist()}."
        )
    return fitness, reference_accuracy


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
        scored = {key: candidate for run, (candidates, _) in zip(runs, replies) for key, candidate in zip(run, candidates)}
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
        candidates = [candidate if index == best else _without_weights(candidate) for index, candidate in enumerate(scored)]
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
        accuracy = self._run_trial(solution.weights)
        return self._judge(solution, accuracy - self.reference, accuracy)

    def _run_trial(self, weights: np.ndarray) -> np.ndarray:
        key = np.round(weights, 9).tobytes()
        if key not in self.trial_cache:
            accuracy = as_float_array(self.trial(weights))
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
                trials=self.trials,
                generations=generations,
                seconds=seconds,
                stopped_early=stopped_early,
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
            trials=self.trials,
            generations=generations,
            seconds=seconds,
            stopped_early=stopped_early,
        )


def _key(genes: np.ndarray) -> tuple[float, ...]:
    """A gene vector clipped to [0, 1], as a hashable key."""
    return tuple(np.clip(genes, 0.0, 1.0).tolist())


def _without_weights(candidate: _Candidate) -> _Candidate:
    return dataclasses.replace(candidate, solution=dataclasses.replace(candidate.solution, weights=None))


def _run_ga(
    evaluator: _Evaluator,
    num_genes: int,
    settings: GAPreset,
    seed: int,
    deadline: float | None,
    progress: bool | None,
    workers: SolverWorkers | None = None,
) -> tuple[int, bool]:
    """Runs pygad; returns the generations completed and whether the deadline stopped it.

    With ``workers`` each generation's candidates arrive as one batch and their LPs are solved in the
    worker processes (if one fails, the rest of the search runs here, sequentially).
    """
    out_of_time = False

    def fitness_func(ga: pygad.GA, genes: np.ndarray, index: int) -> float:
        nonlocal out_of_time
        if deadline is not None and time.perf_counter() > deadline:
            out_of_time = True
            return _SKIPPED_FITNESS
        return evaluator.evaluate(genes)

    def batch_fitness_func(ga: pygad.GA, genes: np.ndarray, indices: Any) -> list[float]:
        nonlocal out_of_time, workers
        if deadline is not None and time.perf_counter() > deadline:
            out_of_time = True
            return [_SKIPPED_FITNESS] * len(genes)
        if workers is not None:
            try:
                return evaluator.evaluate_batch(genes, workers)
            except WorkerFailure as failure:
                warnings.warn(f"{failure}; the weight search goes on in this process", RuntimeWarning, stacklevel=2)
                workers = None
        return evaluator.evaluate_batch(genes, None)

    bar = _progress_bar(settings.generations, progress)

    def on_generation(ga: pygad.GA) -> str | None:
        nonlocal out_of_time
        if bar is not None:
            bar.update(1)
            bar.set_postfix(best=f"{max(c.fitness for c in evaluator.candidates.values()):.4g}")
        if out_of_time or (deadline is not None and time.perf_counter() > deadline):
            out_of_time = True
            return "stop"
        return None

    ga = pygad.GA(
        num_generations=settings.generations,
        num_parents_mating=max(2, settings.population // 2),
        fitness_func=fitness_func if workers is None else batch_fitness_func,
        fitness_batch_size=None if workers is None else settings.population,
        sol_per_pop=settings.population,
        num_genes=num_genes,
        init_range_low=0.0,
        init_range_high=1.0,
        gene_type=float,
        parent_selection_type="sss",
        keep_elitism=settings.elites,
        crossover_type="uniform",
        crossover_probability=1.0,
        mutation_type="random",
        mutation_probability=settings.mutation_rate,
        random_mutation_min_val=-settings.mutation_strength,
        random_mutation_max_val=settings.mutation_strength,
        on_generation=on_generation,
        random_seed=seed,
        suppress_warnings=True,
    )
    try:
        ga.run()
    finally:
        if bar is not None:
            bar.close()
    return ga.generations_completed, out_of_time


def _progress_bar(total: int, progress: bool | None) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Pareto-LP-GA", unit="gen", leave=False)
