"""What the factor pass of the influence engine spends its time on, on the speed case of ``influence.py``.

The MNIST CNN of "Enhancing Prediction Performance through Influence Measure" (Table 6) after 2 epochs
of SGD on MNIST-5k (4,000 training samples, influence batches of 256, 2 threads). Timed alone,
medians of 5 (each repeat after one untimed warm-up of the same piece):

- ``training_epoch``: one training epoch at batch 64 (the unit of the engine's cost in epochs);
- ``forward_only``: a forward pass without gradients over the training set;
- ``capture``: the engine's forward/backward pass recording every tracked layer's inputs and output
  gradients (``captured_batches``), the floor of any pass of the engine;
- ``capture_and_rows``: the same with every layer's rows formed (the conv layers' unfolded patches);
- ``factor_sums``: the capture with the K-FAC factor sums (``FactorSums.add``): the factor phase less
  the copies the engine keeps for later phases;
- ``wide_input_gram``: the 3,137 x 3,137 input Gram of the 3,136-input Linear layer alone over 4,000
  rows of random data (``accumulate_gram``).

Writes ``benchmarks/results/factor_pass_parts.json``.

    python benchmarks/factor_pass_parts.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from influence import _loader, _speed_case, _train_epoch  # noqa: E402

from lightning_pareto.influence._passes import captured_batches, influence_mode  # noqa: E402
from lightning_pareto.influence.capture import tracked_modules  # noqa: E402
from lightning_pareto.influence.kfac._gram import accumulate_gram  # noqa: E402
from lightning_pareto.influence.kfac.factors import FactorSums  # noqa: E402
from lightning_pareto.nets import MnistCNN  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "factor_pass_parts.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    case = argparse.Namespace(threads=2, warmup_epochs=2, influence_batch=256)
    model, (train_x, train_y, _, _), train_loader, _ = _speed_case(case)
    tracked = tracked_modules(model, None)
    wide_rows = torch.randn(len(train_y), 3136)

    def training_epoch() -> None:
        copy = MnistCNN(num_classes=10)
        copy.load_state_dict(model.state_dict())
        optimizer = torch.optim.SGD(copy.parameters(), lr=0.05, momentum=0.9)
        _train_epoch(copy, _loader(train_x, train_y, 64, shuffle=True, seed=0), optimizer)

    def forward_only() -> None:
        with influence_mode(model), torch.no_grad():
            for x, _, _ in train_loader:
                model(x)

    def capture(rows: bool = False, sums: FactorSums | None = None) -> None:
        with influence_mode(model):
            for batch in captured_batches(model, train_loader, tracked, desc="", progress=False):
                if rows:
                    for name in tracked:
                        batch.layers[name]
                if sums is not None:
                    sums.add(batch)

    def factor_sums() -> None:
        sums = FactorSums(tracked)
        capture(sums=sums)
        sums.factors()

    def wide_input_gram() -> None:
        total = torch.zeros(3137, 3137)
        for start in range(0, len(wide_rows), 256):
            accumulate_gram(total, wide_rows[start : start + 256], ones_implied=True)

    pieces: dict[str, Callable[[], None]] = {
        "training_epoch": training_epoch,
        "forward_only": forward_only,
        "capture": capture,
        "capture_and_rows": lambda: capture(rows=True),
        "factor_sums": factor_sums,
        "wide_input_gram": wide_input_gram,
    }
    seconds: dict[str, list[float]] = {name: [] for name in pieces}
    for name, piece in pieces.items():
        piece()
        for _ in range(args.repeats):
            start = time.perf_counter()
            piece()
            seconds[name].append(time.perf_counter() - start)
    epoch = statistics.median(seconds["training_epoch"])
    summary = {
        name: {"seconds_median": statistics.median(values), "epochs": statistics.median(values) / epoch}
        for name, values in seconds.items()
    }
    for name, row in summary.items():
        print(f"{name}: {row['seconds_median']:.3f} s = {row['epochs']:.2f} epochs", flush=True)
    RESULTS.write_text(
        json.dumps(
            {"summary": summary, "seconds": seconds, "load_average": os.getloadavg(), "torch": torch.__version__},
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
