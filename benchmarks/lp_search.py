"""Speed of the Pareto-LP-GA maths: one LP solve, and a paper-preset GA search in predicted mode.

Pareto-LP-GA and its GA settings (the ``paper`` preset) are those of "What Is The Performance Ceiling
of My Classifier?".

Influence matrices are synthetic with the trade-off structure seen in practice (each sample helps its
own class and mildly hurts the others, 5% hurt every class; ``tests/pareto/_pareto_cases.py``),
K = 10 classes, targets [0, 2], non-target thresholds of 1% of each column's mean |I|, trust 0.5.
Times are medians over repeats. Prints a table and writes ``benchmarks/results/lp_search.json``.

    python benchmarks/lp_search.py                      # n = 5,000 and 50,000, 3 repeats
    python benchmarks/lp_search.py --sizes 5000 --repeats 5
    python benchmarks/lp_search.py --compare-with /tmp/old --repeats 5   # interleaved A/B at n = 50,000
    python benchmarks/lp_search.py --warm-start --sizes 50000 --repeats 3  # ours vs HiGHS warm-started (highspy)

``--warm-start`` justifies the package's own dual simplex (``pareto/_dual_simplex.py``): the search
solves one LP many times with only the thresholds (row bounds) changed, so the fair peer is HiGHS
kept in memory and warm-started from its previous basis through ``highspy`` (``changeRowsBounds``),
beside ``linprog(method="highs")`` solving each LP from scratch. Needs ``pip install highspy``
(the ``bench`` extra).

For an A/B, export the old code with ``git archive <commit> | tar -x -C /tmp/old``: each search runs in
its own process, old and new taking turns, so both see the same load (nothing is written).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pygad
import scipy

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "tests" / "pareto"))
sys.path.insert(0, str(REPOSITORY))

from _pareto_cases import trade_off_influence  # noqa: E402

from lightning_pareto.pareto import WeightLP, search_weights, solve_weights  # noqa: E402
from lightning_pareto.pareto._dual_simplex import BoxedLP  # noqa: E402

NUM_CLASSES = 10
TARGETS = [0, 2]
THRESHOLD_FRACTION = 0.01
TRUST = 0.5


def _timed(function: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def _count_lp_solves(function: Any) -> tuple[Any, int, int]:
    """Runs ``function``; returns its value, the BoxedLP solves (all nested levels) and their dual simplex iterations."""
    counts = [0, 0]
    original = BoxedLP.solve

    def counted(self: BoxedLP, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        counts[0] += 1
        counts[1] += result.iterations
        return result

    BoxedLP.solve = counted  # type: ignore[method-assign]
    try:
        return function(), counts[0], counts[1]
    finally:
        BoxedLP.solve = original  # type: ignore[method-assign]


def benchmark_size(num_samples: int, repeats: int, search: bool) -> dict[str, Any]:
    """Times one LP (sifting and plain HiGHS) and, if asked, one paper-preset search at one size."""
    influence = trade_off_influence(num_samples, NUM_CLASSES, seed=0)
    non_targets = [c for c in range(NUM_CLASSES) if c not in TARGETS]
    thresholds = THRESHOLD_FRACTION * np.abs(influence).mean(axis=0)[non_targets]

    solve_times, plain_times, objectives = [], [], []
    for _ in range(repeats):
        seconds, solution = _timed(lambda: solve_weights(influence, TARGETS, thresholds, trust=TRUST))
        solve_times.append(seconds)
        plain_lp = WeightLP(influence, TARGETS, sifting=False)
        seconds, plain = _timed(lambda lp=plain_lp: lp.solve(thresholds, TRUST))
        plain_times.append(seconds)
        objectives.append((solution.objective, plain.objective))
    row: dict[str, Any] = {
        "num_samples": num_samples,
        "solve_weights_seconds": solve_times,
        "solve_weights_median": statistics.median(solve_times),
        "plain_highs_seconds": plain_times,
        "plain_highs_median": statistics.median(plain_times),
        "objective_sifting_minus_plain": max(abs(a - b) for a, b in objectives),
    }
    if search:
        search_times, cpu_times, results, one_process_times, one_process_results = [], [], [], [], []
        for _ in range(repeats):  # the default (two worker processes from 20,000 samples on) and one process, in turns
            seconds, result = _timed(lambda: search_weights(influence, TARGETS, preset="paper", progress=False))
            search_times.append(seconds)
            results.append(result)
            cpu_start = time.process_time()
            seconds, result = _timed(
                lambda: search_weights(influence, TARGETS, preset="paper", progress=False, workers=1)
            )
            cpu_times.append(time.process_time() - cpu_start)
            one_process_times.append(seconds)
            one_process_results.append(result)
        # One more (untimed) one-process search counts the LP solves of every nested level and their iterations.
        _, solves, iterations = _count_lp_solves(
            lambda: search_weights(influence, TARGETS, preset="paper", progress=False, workers=1)
        )
        row |= {
            "search_paper_seconds": search_times,
            "search_paper_median": statistics.median(search_times),
            "search_paper_one_process_seconds": one_process_times,
            "search_paper_one_process_median": statistics.median(one_process_times),
            # Process CPU time of the one-process search (one thread): on a shared machine the steadier
            # measure, as wall time includes waiting for a core.
            "search_paper_cpu_seconds": cpu_times,
            "search_paper_cpu_median": statistics.median(cpu_times),
            "search_fitness_one_process": one_process_results[0].fitness,
            "search_weights_max_difference_to_one_process": float(
                np.abs(results[0].weights - one_process_results[0].weights).max()
            )
            if results[0].weights is not None and one_process_results[0].weights is not None
            else None,
            "load_average_after": os.getloadavg(),
            "search_evaluations": results[0].evaluations,
            "search_seconds_per_evaluation": statistics.median(search_times) / results[0].evaluations,
            "search_status": results[0].status,
            "search_fitness": results[0].fitness,
            "search_deterministic": len({r.fitness for r in results}) == 1,
            "search_lp_solves": solves,
            "search_dual_simplex_iterations": iterations,
        }
    return row


# One paper-preset search at n = 50,000 in a fresh process, on the code under ROOT (set before this).
_SEARCH_IN_PROCESS = """
import hashlib, json, sys, time
sys.path[:0] = [ROOT, ROOT + "/tests/pareto"]
from _pareto_cases import trade_off_influence
from lightning_pareto.pareto import search_weights
influence = trade_off_influence(50000, 10, seed=0)
search_weights(influence, [0, 2], preset="fast", progress=False)  # imports and first calls, untimed
start = time.perf_counter()
result = search_weights(influence, [0, 2], preset="paper", progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "fitness": result.fitness,
                  "weights_sha1": hashlib.sha1(result.weights.tobytes()).hexdigest()}))
"""


def compare(old_root: Path, repeats: int) -> None:
    """Interleaved A/B of the paper-preset search at n = 50,000: code under ``old_root`` vs this repository."""
    roots = {"old": str(old_root.resolve()), "new": str(REPOSITORY)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in roots}
    for _ in range(repeats):
        for name, root in roots.items():
            script = f"ROOT = {root!r}\n" + _SEARCH_IN_PROCESS
            output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
            runs[name].append(json.loads(output.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    for name, results in runs.items():
        print(f"{name}: median {statistics.median(r['seconds'] for r in results):.3f} s")
    outcomes = {(r["fitness"], r["weights_sha1"]) for results in runs.values() for r in results}
    print("identical fitness and weights:", len(outcomes) == 1)


def _highspy_model(lp: BoxedLP, rhs: np.ndarray) -> Any:
    """A ``highspy.Highs`` holding ``lp`` with upper row bounds ``rhs`` (and the equality row at 0)."""
    import highspy
    from scipy.sparse import csc_matrix

    matrix = csc_matrix(np.vstack([lp.a_ub, lp.a_eq]))
    num_ub, num_eq = lp.a_ub.shape[0], lp.a_eq.shape[0]
    model = highspy.HighsLp()
    model.num_col_, model.num_row_ = matrix.shape[1], matrix.shape[0]
    model.col_cost_ = lp.cost
    model.col_lower_ = np.zeros(matrix.shape[1])
    model.col_upper_ = lp.upper
    model.row_lower_ = np.concatenate([np.full(num_ub, -highspy.kHighsInf), np.zeros(num_eq)])
    model.row_upper_ = np.concatenate([rhs, np.zeros(num_eq)])
    model.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    model.a_matrix_.start_ = matrix.indptr
    model.a_matrix_.index_ = matrix.indices
    model.a_matrix_.value_ = matrix.data
    solver = highspy.Highs()
    solver.setOptionValue("output_flag", False)
    solver.passModel(model)
    return solver


def warm_start_comparison(num_samples: int, repeats: int, lps: int = 20) -> dict[str, Any]:
    """Seconds per LP over a GA-like sequence of thresholds: ours, HiGHS warm-started, HiGHS from scratch.

    The sequence draws each non-target threshold log-uniformly between 1e-3 and 1 of what the trust
    budget could cost the class, as the search's genes do. The first LP of each solver is untimed
    (it builds the solver's state); the median over the remaining ``lps - 1`` is reported, per repeat.
    """
    import highspy

    influence = trade_off_influence(num_samples, NUM_CLASSES, seed=0)
    ours = WeightLP(influence, TARGETS)
    cold = WeightLP(influence, TARGETS, sifting=False)
    generator = np.random.default_rng(0)
    non_targets = list(ours.non_targets)
    sequence = [
        TRUST * ours.column_scale[non_targets] * 10.0 ** (3.0 * (generator.random(len(non_targets)) - 1.0))
        for _ in range(lps)
    ]

    def rhs(thresholds: np.ndarray) -> np.ndarray:
        # The full LP's upper row bounds for these thresholds, as WeightLP.solve builds them.
        return ours.row_bounds_per_sample(ours.expand_thresholds(thresholds), TRUST) * num_samples

    full_lp = ours._levels[-1][2]
    rows = np.arange(len(non_targets), dtype=np.int32)
    per_repeat: dict[str, list[float]] = {"ours": [], "highspy_warm": [], "linprog_cold": []}
    largest_difference = 0.0
    for _ in range(repeats):
        times: dict[str, list[float]] = {name: [] for name in per_repeat}
        solver = _highspy_model(full_lp, rhs(sequence[0]))
        solver.run()
        ours.solve(sequence[0], TRUST)
        for thresholds in sequence[1:]:
            seconds, solution = _timed(lambda thresholds=thresholds: ours.solve(thresholds, TRUST))
            times["ours"].append(seconds)
            bounds = rhs(thresholds)[: len(non_targets)]

            def warm(bounds: np.ndarray = bounds, solver: Any = solver) -> float:
                solver.changeRowsBounds(len(rows), rows, np.full(len(rows), -highspy.kHighsInf), bounds)
                solver.run()
                return solver.getInfo().objective_function_value

            seconds, warm_objective = _timed(warm)
            times["highspy_warm"].append(seconds)
            seconds, _ = _timed(lambda thresholds=thresholds: cold.solve(thresholds, TRUST))
            times["linprog_cold"].append(seconds)
            largest_difference = max(largest_difference, abs(solution.objective - (-warm_objective / num_samples)))
        for name, values in times.items():
            per_repeat[name].append(statistics.median(values))
    medians = {name: statistics.median(values) for name, values in per_repeat.items()}
    return {
        "num_samples": num_samples,
        "lps_per_repeat": lps - 1,
        "seconds_per_lp_by_repeat": per_repeat,
        "seconds_per_lp_median": medians,
        "highspy_warm_over_ours": medians["highspy_warm"] / medians["ours"],
        "linprog_cold_over_ours": medians["linprog_cold"] / medians["ours"],
        "objective_ours_minus_highspy_max": largest_difference,
        "highspy": highspy.__version__ if hasattr(highspy, "__version__") else "unknown",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-search", action="store_true", help="time the LP only")
    parser.add_argument("--compare-with", type=Path, help="root of older code: interleaved A/B of the search instead")
    parser.add_argument(
        "--warm-start",
        action="store_true",
        help="ours vs HiGHS warm-started through highspy vs linprog, per LP of a GA-like sequence",
    )
    arguments = parser.parse_args()
    if arguments.compare_with is not None:
        compare(arguments.compare_with, arguments.repeats)
        return
    if arguments.warm_start:
        rows = [warm_start_comparison(size, arguments.repeats) for size in arguments.sizes]
        for row in rows:
            medians = row["seconds_per_lp_median"]
            print(
                f"n={row['num_samples']:>6}  per LP: ours {medians['ours']:.4f}s  highspy warm "
                f"{medians['highspy_warm']:.4f}s ({row['highspy_warm_over_ours']:.1f}x)  linprog cold "
                f"{medians['linprog_cold']:.3f}s ({row['linprog_cold_over_ours']:.0f}x)  "
                f"|objective diff| {row['objective_ours_minus_highspy_max']:.1e}"
            )
        path = REPOSITORY / "benchmarks" / "results" / "lp_warm_start.json"
        path.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2))
        print(f"wrote {path}")
        return

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pygad": pygad.__version__,
    }
    rows = []
    for num_samples in arguments.sizes:
        row = benchmark_size(num_samples, arguments.repeats, search=not arguments.no_search)
        rows.append(row)
        line = (
            f"n={num_samples:>6}  solve_weights {row['solve_weights_median']:.3f}s  "
            f"(plain HiGHS {row['plain_highs_median']:.3f}s, "
            f"|objective diff| {row['objective_sifting_minus_plain']:.1e})"
        )
        if "search_paper_median" in row:
            line += (
                f"  search(paper) {row['search_paper_median']:.2f}s (one process {row['search_paper_one_process_median']:.2f}s, "
                f"cpu {row['search_paper_cpu_median']:.1f}s) for {row['search_evaluations']} LPs, "
                f"({row['search_lp_solves']} solves, {row['search_dual_simplex_iterations']} iterations), "
                f"{row['search_status']}, deterministic={row['search_deterministic']}"
            )
        print(line, flush=True)

    output = REPOSITORY / "benchmarks" / "results" / "lp_search.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "num_classes": NUM_CLASSES,
        "targets": TARGETS,
        "threshold_fraction_of_mean_abs": THRESHOLD_FRACTION,
        "trust": TRUST,
        "repeats": arguments.repeats,
    }
    output.write_text(json.dumps({"machine": machine, "settings": settings, "results": rows}, indent=2) + "\n")
    print(f"wrote {output.relative_to(REPOSITORY)}")


if __name__ == "__main__":
    main()
