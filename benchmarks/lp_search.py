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
        seconds, plain = _timed(lambda: plain_lp.solve(thresholds, TRUST))
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
            ) if results[0].weights is not None and one_process_results[0].weights is not None else None,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-search", action="store_true", help="time the LP only")
    parser.add_argument("--compare-with", type=Path, help="root of older code: interleaved A/B of the search instead")
    arguments = parser.parse_args()
    if arguments.compare_with is not None:
        compare(arguments.compare_with, arguments.repeats)
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
