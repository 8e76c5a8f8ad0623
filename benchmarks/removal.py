"""The removal check of "What Is The Performance Ceiling of My Classifier?" (section 5.1, Figures 3-4).

For each data set: train the config (``lightning-pareto fit``), compute category-wise influence at the
checkpoint, and for every class remove its top 10% beneficial (then detrimental) training samples and
retrain from the same initialisation and seed (``lightning-pareto audit --removal-check``); per-class
test-accuracy changes are averaged over the retrain seeds, each removal against the baseline of its own
seed. Reported: the two heatmaps with the cumulative influence beside them, the Spearman correlation of
the predicted effect (-cumulative influence) with the accuracy change over all K x K cells (the paper:
above 0.8 on CIFAR-10 and Emotion), and how often the targeted class moved the predicted way.

    python benchmarks/removal.py                       # digits and MNIST-5k, 3 seeds, 2 workers
    python benchmarks/removal.py --data digits --seeds 0 --workers 1

Writes ``benchmarks/results/removal_<data>.png`` / ``.json`` and ``benchmarks/results/removal.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _audit_runs import CONFIGS, audit, fit_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = "Spearman above 0.8 (CIFAR-10, Emotion; Figures 3-4 C and F)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="retrain seeds")
    parser.add_argument("--workers", type=int, default=2, help="retrains at once (one process each)")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--label_noise", type=float, default=0.0)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    # Other data sets' entries of an earlier run are kept (each entry records its own seeds).
    previous = RESULTS / "removal.json"
    summary = {
        "paper": PAPER,
        "fraction": args.fraction,
        "label_noise": args.label_noise,
        "data": json.loads(previous.read_text())["data"] if previous.is_file() else {},
    }
    for name in args.data:
        overrides = [f"--data.init_args.label_noise={args.label_noise}"]
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()
            checkpoint = fit_checkpoint(CONFIGS[name], overrides, Path(scratch) / "fit")
            output = Path(scratch) / "audit"
            result = audit(
                CONFIGS[name],
                overrides,
                checkpoint,
                output,
                [
                    "--image_shape",
                    "none",
                    "--removal-check",
                    "--removal_fraction",
                    str(args.fraction),
                    "--workers",
                    str(args.workers),
                    "--seeds",
                    *map(str, args.seeds),
                ],
            )
            shutil.copy(output / "removal.png", RESULTS / f"removal_{name}.png")
            shutil.copy(output / "removal.json", RESULTS / f"removal_{name}.json")
            detail = json.loads((output / "removal.json").read_text())
        summary["data"][name] = {
            **result["removal"],
            "seeds": args.seeds,
            "seconds": time.perf_counter() - started,
            "removed_per_class": {kind: detail[kind]["removed_counts"] for kind in ("beneficial", "detrimental")},
            "diagonal_change": {
                kind: [detail[kind]["change"][t][t] for t in range(len(detail["baseline"]))]
                for kind in ("beneficial", "detrimental")
            },
            "baseline": detail["baseline"],
        }
        (RESULTS / "removal.json").write_text(json.dumps(summary, indent=1))
        print(
            f"{name}: "
            + ", ".join(
                f"{kind} Spearman {v['spearman']:+.3f} (targeted class as predicted "
                f"{100 * v['diagonal_agreement']:.0f}%)"
                for kind, v in result["removal"].items()
            )
            + f"  [{PAPER}]",
            flush=True,
        )


if __name__ == "__main__":
    main()
