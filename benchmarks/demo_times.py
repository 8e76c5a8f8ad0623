"""Wall-clock time of the commands the configs and the README promise, as a user runs them.

Each command runs as a fresh process (imports included, progress bar off) ``--repeats`` times, in a
scratch folder; the median and the range are printed and saved. The configs' runtime comments quote
these numbers. Run ``python benchmarks/demo_times.py`` (writes ``benchmarks/results/demo_times.json``);
``--only cc_fit di_fit`` picks commands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "demo_times.json"
QUIET = ["--trainer.enable_progress_bar=false"]
COMMANDS = {
    "cc_fit": ["fit", "--config", "configs/digits_course_correction.yaml", *QUIET],
    "di_fit": ["fit", "--config", "configs/digits_direct_improvement.yaml", *QUIET],
    "di_compare": ["compare", "--config", "configs/digits_direct_improvement.yaml", *QUIET],
    "active_digits": ["active", "--config", "configs/active_digits.yaml", "--output_dir", "{scratch}/active"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=sorted(COMMANDS), default=list(COMMANDS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.only:
            argv = [word.format(scratch=scratch) for word in COMMANDS[name]]
            argv = [str(ROOT / word) if word.startswith("configs/") else word for word in argv]
            for _ in range(args.repeats):
                start = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "lightning_pareto", *argv],
                    cwd=scratch,
                    env=environment,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                times.setdefault(name, []).append(time.perf_counter() - start)
                print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    summary = {
        name: {
            "median_s": statistics.median(values),
            "min_s": min(values),
            "max_s": max(values),
            "runs_s": values,
            "command": "lightning-pareto " + " ".join(COMMANDS[name]),
        }
        for name, values in times.items()
    }
    result = {
        "benchmark": "demo_times",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg()},
        "commands": summary,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    for name, row in summary.items():
        print(
            f"{name:<14} median {row['median_s']:6.1f} s  ({row['min_s']:.1f}-{row['max_s']:.1f} s, "
            f"{len(row['runs_s'])} runs)"
        )
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
