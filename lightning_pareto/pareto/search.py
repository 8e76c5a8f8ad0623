"""Genetic search over the LP's class thresholds (and trust radius): the GA of Pareto-LP-GA.

"What Is The Performance Ceiling of My Classifier?", Algorithm 1. The GA driver lives here; the
candidates' scoring in :mod:`~lightning_pareto.pareto._fitness`, the settings in
:mod:`~lightning_pareto.pareto.presets` and the result type in :mod:`~lightning_pareto.pareto.search_result`.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import pygad

from lightning_pareto.pareto._arrays import as_float_array
from lightning_pareto.pareto._fitness import _SKIPPED_FITNESS, NOT_IMPROVED_FITNESS, TRIAL_SCREEN_RATIO, _Evaluator
from lightning_pareto.pareto._workers import SolverWorkers, WorkerFailure, fork_workers_available
from lightning_pareto.pareto.presets import PRESETS, GAPreset, resolve_preset
from lightning_pareto.pareto.reweight import Scale, WeightLP
from lightning_pareto.pareto.search_result import SearchResult, SearchStatus, TrialFunction

__all__ = [
    "NOT_IMPROVED_FITNESS",
    "PARALLEL_MIN_SAMPLES",
    "PRESETS",
    "TRIAL_SCREEN_RATIO",
    "GAPreset",
    "SearchResult",
    "SearchStatus",
    "TrialFunction",
    "search_weights",
]

PARALLEL_MIN_SAMPLES = 20_000
"""From this many training samples on, ``search_weights(workers=None)`` solves the LPs in two processes."""


def search_weights(
    influence: Any,
    targets: Iterable[int] | int,
    *,
    fitness: Literal["predicted"] | TrialFunction = "predicted",
    reference: Any = None,
    preset: Literal["fast", "paper"] | GAPreset = "fast",
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
    trial_screen: float | None = TRIAL_SCREEN_RATIO,
) -> SearchResult:
    """Searches the LP's per-class thresholds with a genetic algorithm (Algorithm 1 of the Pareto-LP-GA paper).

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
      weights or no predicted target gain are not trained; equal weights are trained once. Once a
      trialled candidate has improved, a candidate whose predicted fitness (the first-order one above)
      is below ``trial_screen`` times the predicted fitness of the best trialled candidate is not
      trained either (``trials_skipped``): it scores its predicted fitness times the best's
      realised-to-predicted ratio, which stays below the best's fitness, so it cannot be chosen.

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
        preset: ``"fast"`` (default; 3 generations of 6, 2 elites), ``"paper"`` (20 generations of
            24, 6 elites, mutation rate and strength 0.25; see :data:`PRESETS`) or a
            :class:`GAPreset` of one's own, e.g. ``dataclasses.replace(PRESETS["paper"], generations=5)``.
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
        trial_screen: Trial fitness: the fraction of the best trialled candidate's predicted fitness below
            which a candidate is scored without a trial, in ``(0, 1]``; ``None`` trains every candidate
            (the paper's way). Unused with predicted fitness.

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
    settings = resolve_preset(preset)
    trial, reference_accuracy = _resolve_fitness_mode(fitness, reference, lp.num_classes)
    if not (np.isfinite(trust) and trust > 0):
        raise ValueError(f"`trust` must be a finite number > 0 (mean |w - 1| allowed); got {trust!r}.")
    if not (np.isfinite(degradation_penalty) and degradation_penalty >= 0):
        raise ValueError(f"`degradation_penalty` must be a finite number >= 0; got {degradation_penalty!r}.")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"`time_budget` must be a positive number of seconds or None; got {time_budget!r}.")

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"`workers` must be None or an integer >= 1; got {workers!r}.")
    if trial_screen is not None and (
        isinstance(trial_screen, bool) or not isinstance(trial_screen, (int, float)) or not 0 < trial_screen <= 1
    ):
        raise ValueError(f"`trial_screen` must be None or a fraction in (0, 1]; got {trial_screen!r}.")

    evaluator = _Evaluator(
        lp, trial, reference_accuracy, degradation_penalty, trust, search_trust, trial_screen=trial_screen
    )
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
        warnings.warn(
            f"workers={workers} ignored: {why}; the LPs are solved in this process", UserWarning, stacklevel=3
        )
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
