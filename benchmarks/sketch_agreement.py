"""Scores from the sketched wide input factor against the Gram path, on the MNIST CNN of the speed case.

"Enhancing Prediction Performance through Influence Measure" (its Table 6 CNN) on MNIST-5k, after 2 and
after 8 epochs of SGD: ``category_influence`` with the 3,137-input Linear layer's ``A`` sketched
(``factors.sketched``, the engine's way) and summed whole (the Gram and randomized subspace iteration,
the way before), in one process on the same model. Prints and writes ``results/sketch_agreement.json``:
Spearman per class, the largest difference relative to the largest score, and the seconds of each.

    python benchmarks/sketch_agreement.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import influence as bench  # benchmarks/influence.py (the script's folder): the same case and loaders
import torch
from _machine import processor
from scipy.stats import spearmanr

from lightning_pareto.influence import InfluenceTimings, category_influence
from lightning_pareto.influence.kfac import factors

RESULTS = Path(__file__).parent / "results" / "sketch_agreement.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 8], help="training epochs before the comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sketched = factors.sketched
    paths = {"gram": lambda module: False, "sketch": sketched}
    result: dict = {"machine": f"{processor()} (shared), torch {torch.__version__}", "runs": {}}
    for epochs in args.epochs:
        case = argparse.Namespace(threads=2, warmup_epochs=epochs, influence_batch=256)
        model, _, train_loader, val_loader = bench._speed_case(case)
        scores, seconds, phases = {}, {}, {}
        for name, rule in paths.items():
            factors.sketched = rule
            seconds[name], phases[name] = [], []
            for _ in range(args.repeats):
                timings = InfluenceTimings()
                start = time.perf_counter()
                scores[name] = category_influence(model, train_loader, val_loader, 10, progress=False, timings=timings)
                seconds[name].append(time.perf_counter() - start)
                phases[name].append({"factors": timings.factors, "eigen": timings.eigen})
        factors.sketched = sketched
        rho = [float(spearmanr(scores["gram"][:, c], scores["sketch"][:, c])[0]) for c in range(10)]
        run = {
            "spearman_per_class": rho,
            "spearman_median": statistics.median(rho),
            "spearman_min": min(rho),
            "max_abs_difference_over_max_abs": float(
                (scores["sketch"] - scores["gram"]).abs().max() / scores["gram"].abs().max()
            ),
            "seconds_median": {name: statistics.median(values) for name, values in seconds.items()},
            "factors_eigen_seconds_median": {
                name: {phase: statistics.median(p[phase] for p in runs) for phase in ("factors", "eigen")}
                for name, runs in phases.items()
            },
        }
        result["runs"][str(epochs)] = run
        print(
            f"after {epochs} epochs: Spearman median {run['spearman_median']:.6f}, min {run['spearman_min']:.6f}, "
            f"largest difference {run['max_abs_difference_over_max_abs']:.1e} of the largest; seconds "
            f"gram {run['seconds_median']['gram']:.2f}, sketch {run['seconds_median']['sketch']:.2f}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
