"""Time of the influence engine's Conv2d routes against the unfolded-patch routes, per layer and batch.

For the conv layers of SmallCNN (``benchmarks/pareto_step.py``, 3x32x32) and the MNIST CNN
(``benchmarks/influence.py``), at one batch of random inputs and output gradients:

- ``factors``: the K-FAC statistics ``sum p p^T`` and ``sum g g^T`` of a batch, from unfolded patches
  (``layer_inputs`` + ``accumulate_gram``) against feature-map correlations (``conv_input_gram`` +
  ``conv_output_gram``; stride-1 layers only);
- ``per_sample``: per-sample gradients ``sum_t g_t p_t^T``, from unfolded patches + ``bmm`` (the rows as
  the passes' ``LayerCapture`` writes them, into kept buffers) against one grouped weight gradient
  (``per_sample_conv_gradients``), and which route the engine picks.

Inputs and output gradients are channels-last, as the passes record them (their batches are).

Routes take turns in every repeat; medians in milliseconds are printed and written to
``benchmarks/results/conv_routes.json``.

    python benchmarks/conv_routes.py                   # batch 256, 2 threads, 15 repeats
    python benchmarks/conv_routes.py --repeats 25      # the run in results/conv_routes.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from lightning_pareto.influence.capture import LayerCapture, layer_inputs, layer_output_grads  # noqa: E402
from lightning_pareto.influence.kfac._conv_grads import grouped_gradients_pay, per_sample_conv_gradients  # noqa: E402
from lightning_pareto.influence.kfac._conv_gram import conv_input_gram, conv_output_gram, supports_shifted_gram  # noqa: E402
from lightning_pareto.influence.kfac._gram import accumulate_gram  # noqa: E402

# name -> (layer, input height = width)
LAYERS: dict[str, tuple[nn.Conv2d, int]] = {
    "SmallCNN conv1 (3->16, 32x32)": (nn.Conv2d(3, 16, 3, padding=1), 32),
    "SmallCNN conv2 (16->32, 16x16)": (nn.Conv2d(16, 32, 3, padding=1), 16),
    "MnistCNN conv1 (1->32, stride 2, 28x28)": (nn.Conv2d(1, 32, 3, stride=2, padding=1), 28),
    "MnistCNN conv2 (32->64, stride 2, 14x14)": (nn.Conv2d(32, 64, 3, stride=2, padding=1), 14),
    "8->16, 32x32 (the fewest input channels the grouped route takes)": (nn.Conv2d(8, 16, 3, padding=1), 32),
}


def _median_ms(functions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each function in ms, the functions taking turns in every repeat."""
    for function in functions.values():  # warm-up: allocations, oneDNN primitive caches
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def benchmark_layer(layer: nn.Conv2d, size: int, batch: int, repeats: int) -> dict[str, Any]:
    """Factor and per-sample-gradient timings of one layer on random inputs and output gradients."""
    generator = torch.Generator().manual_seed(0)
    channels_last = torch.channels_last
    inputs = torch.randn(batch, layer.in_channels, size, size, generator=generator).relu()
    inputs = inputs.contiguous(memory_format=channels_last)
    with torch.no_grad():
        grads = torch.randn(layer(inputs).shape, generator=generator).contiguous(memory_format=channels_last)
    capture = LayerCapture({"layer": layer}, reuse_buffers=True)
    rows_a, rows_g = layer_inputs(layer, inputs), layer_output_grads(layer, grads)
    width_a, width_g = rows_a.shape[2], rows_g.shape[2]
    total_a, total_g = torch.zeros(width_a, width_a), torch.zeros(width_g, width_g)
    buffer_a, buffer_g = torch.empty_like(rows_a), torch.empty_like(rows_g)

    def patch_factors() -> None:
        a, g = layer_inputs(layer, inputs, out=buffer_a), layer_output_grads(layer, grads, out=buffer_g)
        accumulate_gram(total_a, a.flatten(end_dim=1), ones_last=True)
        accumulate_gram(total_g, g.flatten(end_dim=1))

    def correlation_factors() -> None:
        total_a.add_(conv_input_gram(layer, inputs))
        total_g.add_(conv_output_gram(grads))

    def patch_per_sample() -> Tensor:
        a, g = capture.rows("layer", [inputs], [grads])
        return g.transpose(1, 2) @ a

    def grouped_per_sample() -> Tensor:
        return per_sample_conv_gradients(layer, [inputs], [grads], 0, batch)

    factors = {"patches": patch_factors}
    if supports_shifted_gram(layer, inputs):
        factors["correlations"] = correlation_factors
    difference = (patch_per_sample() - grouped_per_sample()).abs().max() / patch_per_sample().abs().max()
    return {
        "factors_ms": _median_ms(factors, repeats),
        "per_sample_ms": _median_ms({"patches + bmm": patch_per_sample, "grouped": grouped_per_sample}, repeats),
        "per_sample_route_taken": "grouped" if grouped_gradients_pay(layer, [inputs]) else "patches + bmm",
        "per_sample_max_relative_difference": float(difference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", type=Path, default=REPOSITORY / "benchmarks" / "results" / "conv_routes.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name, (layer, size) in LAYERS.items():
        row = benchmark_layer(layer, size, args.batch, args.repeats)
        results[name] = row
        factors = ", ".join(f"{route} {ms:.1f}" for route, ms in row["factors_ms"].items())
        per_sample = ", ".join(f"{route} {ms:.1f}" for route, ms in row["per_sample_ms"].items())
        print(
            f"{name}: factors [{factors}] ms; per-sample [{per_sample}] ms, engine takes {row['per_sample_route_taken']}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    settings = {"batch": args.batch, "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__}
    args.output.write_text(json.dumps({"settings": settings, "layers": results}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
