"""How well ``lightning-pareto audit`` finds flipped labels, against the highest-training-loss baseline.

For each data set, label-noise level and data seed: train the config (``lightning-pareto fit``, the
datamodule's ``label_noise`` flips that share of training labels, ``flipped_indices`` records which),
audit the checkpoint, and compare the suspects with the known flips: precision, recall, and the
loss baseline's precision and recall when it flags as many samples (the highest training loss at the
same checkpoint). On clean data (noise 0) every suspect is a false alarm: the count is reported. Also
recorded: how often a flip's likely label (the class it hurts most) is its true label, how many flips
hurt their own (wrong) label, help it most, or help their true class most, and the audit's wall time
(config parse + influence + CSVs, no thumbnails).

    python benchmarks/audit_flips.py                          # digits and MNIST-5k, noise 0 / 0.1 / 0.2, 3 seeds
    python benchmarks/audit_flips.py --data digits --noise 0.2 --seeds 0

The rule without its floor (``min_harm=0``), as compared in RESULTS.md, with
``OUT=benchmarks/results/audit_flips_no_floor.json``::

    python benchmarks/audit_flips.py --min_harm 0 --noise 0 0.2 --seeds 0 --output $OUT

Writes ``benchmarks/results/audit_flips.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _audit_runs import CONFIGS, audit, fit_checkpoint  # noqa: E402

from lightning_pareto.cli import build_cli  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _true_labels(config: str, overrides: list[str]) -> tuple[list[int], list[int]]:
    """The clean training labels and flipped indices the datamodule of this config produces."""
    program, sys.argv[1:] = sys.argv[1:], []
    try:
        datamodule = build_cli(["--config", config, *overrides], run=False).datamodule
    finally:
        sys.argv[1:] = program
    datamodule.setup("fit")
    return datamodule.clean_train_targets.tolist(), datamodule.flipped_indices.tolist()


def _flip_signature(samples_csv: Path, clean: list[int], flipped: list[int], names: list[str]) -> dict[str, float]:
    """What the influence of the flipped samples looks like: how many hurt their own (wrong) label, how many help
    their wrong label or their true class most, and how often a flipped suspect's likely label is its true one."""
    with samples_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    number = {name: c for c, name in enumerate(names)}
    own_negative = helps_label_most = helps_true_most = 0
    for i in flipped:
        influence = [float(rows[i][f"influence_{name}"]) for name in names]
        own_negative += influence[number[rows[i]["label"]]] < 0
        most = max(range(len(names)), key=influence.__getitem__)
        helps_label_most += most == number[rows[i]["label"]]
        helps_true_most += most == clean[i]
    hits = [rows[i]["likely_label"] == names[clean[i]] for i in flipped if rows[i]["suspect"] == "1"]
    return {
        "likely_label_accuracy": sum(hits) / len(hits) if hits else float("nan"),
        "flips_hurting_own_label": own_negative,
        "flips_helping_own_label_most": helps_label_most,
        "flips_helping_true_class_most": helps_true_most,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data seeds (split and flips)")
    parser.add_argument("--output", default=str(RESULTS / "audit_flips.json"))
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --output, do the others")
    parser.add_argument("--min_harm", type=float, default=None, help="the suspect rule's floor (default: audit's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    output_path = Path(args.output)
    runs = json.loads(output_path.read_text())["runs"] if args.resume and output_path.is_file() else []
    for name in args.data:
        for noise in args.noise:
            for seed in args.seeds:
                if any((r["data"], r["noise"], r["seed"]) == (name, noise, seed) for r in runs):
                    continue
                overrides = [f"--data.init_args.label_noise={noise}", f"--data.init_args.seed={seed}"]
                with tempfile.TemporaryDirectory() as scratch:
                    checkpoint = fit_checkpoint(CONFIGS[name], overrides, Path(scratch) / "fit")
                    output = Path(scratch) / "audit"
                    rule = [] if args.min_harm is None else ["--min_harm", str(args.min_harm)]
                    summary = audit(CONFIGS[name], overrides, checkpoint, output, ["--image_shape", "none", *rule])
                    clean, flipped = _true_labels(CONFIGS[name], overrides)
                    signature = _flip_signature(output / "samples.csv", clean, flipped, summary["classes"])
                run = {
                    "data": name,
                    "noise": noise,
                    "seed": seed,
                    "suspects": summary["suspects"],
                    "train_size": len(clean),
                    "audit_seconds": summary["audit_seconds"],
                    **signature,
                    **summary.get("flip_detection", {}),
                }
                runs.append(run)
                print(json.dumps(run), flush=True)
                output_path.write_text(json.dumps({"runs": runs}, indent=1))  # kept if the run is cut short
    table = []
    for name in args.data:
        for noise in args.noise:
            group = [r for r in runs if r["data"] == name and r["noise"] == noise and r["seed"] in args.seeds]
            median = {
                key: statistics.median(r[key] for r in group)
                for key in (
                    "suspects",
                    "audit_seconds",
                    *(
                        (
                            "precision",
                            "recall",
                            "loss_precision",
                            "loss_recall",
                            "likely_label_accuracy",
                            "flips_hurting_own_label",
                            "flips_helping_own_label_most",
                            "flips_helping_true_class_most",
                        )
                        if noise > 0
                        else ()
                    ),
                )
            }
            table.append({"data": name, "noise": noise, "seeds": len(group), **median})
            print(
                f"{name} noise {noise}: "
                + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in median.items())
            )
    output_path.write_text(json.dumps({"medians": table, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
