"""Cost of one Pareto-LP-GA intervention against one training epoch, at CIFAR-10 scale.

A synthetic CIFAR-sized set (``--n`` = 50,000 training and ``--val`` = 5,000 validation images,
3x32x32 uint8, 10 classes: faint per-class smooth colour prototypes in strong pixel noise, 5% of the
training labels flipped so that some samples hurt every class) and ``lightning_pareto.nets.SmallCNN`` (two
conv blocks, 16 and 32 channels, Linear head). After ``--warmup-epochs`` of SGD, each repeat times,
in the same run and alternately (so that they see the same machine load):

- ``epoch_s``: one training epoch (plain PyTorch loop, batch ``--batch-size``, SGD with momentum;
  a copy of the model is trained so the scored model stays fixed);
- ``influence_s``: EKFAC category-wise influence of the whole training set (``category_influence``,
  default damping, empirical Fisher, batches of ``--influence-batch``);
- ``search_s``: the LP + GA weight search with predicted fitness and the GA settings of "What Is
  The Performance Ceiling of My Classifier?" (``search_weights(..., preset="paper")``: 20 generations
  of 24, 6 elites) for the two classes with the lowest validation accuracy, with its default two LP
  worker processes (the epoch uses both cores too); ``search_one_process_seconds`` times the same
  search with ``workers=1``;
- ``influence_subset_s``: the influence with the curvature options given by ``--curvature-samples``
  (default ``none``: every sample in every curvature pass, the reference), and the Spearman
  correlation between the default's scores and these, per class. The default itself fits the K-FAC
  factors on 10,000 samples and the EKFAC correction on 2,000 (``curvature_samples="auto"``,
  ``correction_samples="auto"``); every sample is scored either way.
- ``peak_rss_mib``: the process's peak resident memory (data, model and every pass included).

Medians over ``--repeats`` are reported; the targets are ``influence_s <= 5 * epoch_s`` and
``search_s <= 0.25 * epoch_s``. Results go to ``benchmarks/results/pareto_step.json`` (and, with
``--json``, one JSON line on stdout; progress goes to stderr).

    python benchmarks/pareto_step.py --json                  # CPU, 2 threads, n = 50,000
    python benchmarks/pareto_step.py --device cuda --json    # on a GPU
    python benchmarks/pareto_step.py --n 5000 --val 1000 --repeats 1 --output /tmp/small.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor, nn

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from _machine import processor  # noqa: E402

from lightning_pareto.influence import InfluenceTimings, category_influence  # noqa: E402
from lightning_pareto.nets import SmallCNN  # noqa: E402
from lightning_pareto.pareto import search_weights  # noqa: E402

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
LABEL_NOISE = 0.05
# Faint prototypes in strong noise: SmallCNN reaches about 65-75% validation accuracy in two epochs.
PROTOTYPE_WEIGHT, PIXEL_NOISE = 0.1, 90.0
# Pixel statistics of the generated images, used to standardise them like CIFAR-10's loaders do.
PIXEL_MEAN, PIXEL_STD = 127.5, 80.0


class ImageBatches:
    """Batches ``(x, y, index)`` of a uint8 image tensor, standardised to float32 on the fly.

    Args:
        images: uint8 tensor of shape ``(n, 3, 32, 32)`` on the device batches are wanted on.
        labels: int64 tensor of shape ``(n,)`` on the same device.
        batch_size: Samples per batch (the last one may be smaller).
        shuffle_seed: Seed of a fresh permutation per iteration, or ``None`` for dataset order.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle_seed: int | None = None) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle_seed = batch_size, shuffle_seed

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def dataset(self) -> Tensor:
        """A sized stand-in for a DataLoader's dataset: the engine reads ``n`` from it."""
        return self.labels

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        count = len(self.labels)
        device = self.labels.device
        if self.shuffle_seed is None:
            order = torch.arange(count, device=device)
        else:
            order = torch.randperm(count, generator=torch.Generator().manual_seed(self.shuffle_seed)).to(device)
        for start in range(0, count, self.batch_size):
            index = order[start : start + self.batch_size]
            x = (self.images[index].float() - PIXEL_MEAN) / PIXEL_STD
            yield x, self.labels[index], index


def synthetic_cifar(num_train: int, num_val: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class-structured 3x32x32 uint8 images: smooth per-class colour prototypes plus pixel noise.

    Returns:
        ``(train_images, train_labels, val_images, val_labels)``; uint8 images of shape
        ``(count, 3, 32, 32)`` and int64 labels, with ``LABEL_NOISE`` of the training labels flipped.
    """
    generator = torch.Generator().manual_seed(seed)
    # Prototypes: low-frequency patterns (8x8 noise upsampled), two per class so classes are not blobs.
    coarse = torch.rand(NUM_CLASSES, 2, 3, 8, 8, generator=generator)
    prototypes = F.interpolate(coarse.view(-1, 3, 8, 8), size=IMAGE_SHAPE[1:], mode="bilinear", align_corners=False)
    prototypes = prototypes.view(NUM_CLASSES, 2, *IMAGE_SHAPE) * 255.0

    def draw(count: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
        mode = torch.randint(0, 2, (count,), generator=generator)
        images = torch.empty(count, *IMAGE_SHAPE, dtype=torch.uint8)
        for start in range(0, count, 5000):  # chunks keep the float32 intermediate small
            stop = min(start + 5000, count)
            noise = PIXEL_NOISE * torch.randn(stop - start, *IMAGE_SHAPE, generator=generator)
            mixed = PROTOTYPE_WEIGHT * prototypes[labels[start:stop], mode[start:stop]]
            mixed += (1.0 - PROTOTYPE_WEIGHT) * 127.5 + noise
            images[start:stop] = mixed.round().clamp(0, 255).to(torch.uint8)
        return images, labels

    train_images, train_labels = draw(num_train)
    val_images, val_labels = draw(num_val)
    flipped = torch.randperm(num_train, generator=generator)[: int(LABEL_NOISE * num_train)]
    shift = torch.randint(1, NUM_CLASSES, (len(flipped),), generator=generator)
    train_labels[flipped] = (train_labels[flipped] + shift) % NUM_CLASSES
    return train_images, train_labels, val_images, val_labels


def train_epoch(model: nn.Module, batches: ImageBatches, optimizer: torch.optim.Optimizer) -> None:
    """One epoch of mean cross-entropy SGD."""
    model.train()
    for x, y, _ in batches:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def per_class_accuracy(model: nn.Module, batches: ImageBatches) -> np.ndarray:
    """Validation accuracy of every class, float64 array of shape ``(NUM_CLASSES,)``."""
    correct, total = torch.zeros(NUM_CLASSES), torch.zeros(NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        for x, y, _ in batches:
            hit = (model(x).argmax(1) == y).float().cpu()
            correct.index_add_(0, y.cpu(), hit)
            total.index_add_(0, y.cpu(), torch.ones_like(hit))
    return (correct / total.clamp_min(1)).numpy().astype(np.float64)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains the warm-up epochs, then times epoch, influence and search ``args.repeats`` times."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch.cuda.is_available() is False on this machine.")
    torch.manual_seed(0)
    train_images, train_labels, val_images, val_labels = (
        tensor.to(device) for tensor in synthetic_cifar(args.n, args.val, seed=0)
    )
    model = SmallCNN(3, NUM_CLASSES, 32).to(device)

    def optimizer_of(net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)

    optimizer = optimizer_of(model)
    for epoch in range(args.warmup_epochs):
        train_epoch(model, ImageBatches(train_images, train_labels, args.batch_size, shuffle_seed=epoch), optimizer)
    val_batches = ImageBatches(val_images, val_labels, args.influence_batch)
    accuracy = per_class_accuracy(model, val_batches)
    targets = [int(c) for c in np.argsort(accuracy, kind="stable")[:2]]
    _log(f"after {args.warmup_epochs} warm-up epochs: val accuracy {accuracy.mean():.3f}, targets {targets}")

    epoch_seconds, influence_seconds, search_seconds, phases, searches = [], [], [], [], []
    search_one_process_seconds: list[float] = []
    subset_seconds: list[float] = []
    subset_spearman: list[list[float]] = []
    for repeat in range(args.repeats):
        copy = SmallCNN(3, NUM_CLASSES, 32).to(device)
        copy.load_state_dict(model.state_dict())
        copy_optimizer = optimizer_of(copy)
        copy_optimizer.load_state_dict(optimizer.state_dict())
        epoch_batches = ImageBatches(train_images, train_labels, args.batch_size, shuffle_seed=100 + repeat)
        _synchronize(device)
        start = time.perf_counter()
        train_epoch(copy, epoch_batches, copy_optimizer)
        _synchronize(device)
        epoch_seconds.append(time.perf_counter() - start)

        def timed_influence(**options: Any) -> tuple[float, Tensor]:
            start = time.perf_counter()
            scores = category_influence(
                model,
                ImageBatches(train_images, train_labels, args.influence_batch),
                val_batches,
                NUM_CLASSES,
                curvature="ekfac",
                matmul_precision=args.matmul_precision,
                progress=False,
                **options,
            )
            _synchronize(device)
            return time.perf_counter() - start, scores

        timings = InfluenceTimings()
        seconds, influence = timed_influence(timings=timings)
        influence_seconds.append(seconds)
        phases.append({key: value for key, value in vars(timings).items() if isinstance(value, float)})

        if args.curvature_samples != "skip":
            samples = None if args.curvature_samples == "none" else int(args.curvature_samples)
            seconds, subset_influence = timed_influence(
                curvature_samples=samples, correction_samples=None if samples is None else "auto"
            )
            subset_seconds.append(seconds)
            subset_spearman.append(
                [float(spearmanr(subset_influence[:, c], influence[:, c])[0]) for c in range(NUM_CLASSES)]
            )

        start = time.perf_counter()
        result = search_weights(influence, targets, preset="paper", seed=repeat, progress=False)
        search_seconds.append(time.perf_counter() - start)
        # The same search with every LP in this process (the default uses two worker processes here).
        start = time.perf_counter()
        single = search_weights(influence, targets, preset="paper", seed=repeat, progress=False, workers=1)
        search_one_process_seconds.append(time.perf_counter() - start)
        searches.append(
            {
                "fitness_one_process": single.fitness,
                "status": result.status,
                "evaluations": result.evaluations,
                "generations": result.generations,
                "fitness": result.fitness,
                "predicted_gain_targets": [float(result.predicted_gain[t]) for t in targets],
            }
        )
        if subset_seconds:
            _log(
                f"repeat {repeat}: influence with curvature_samples={args.curvature_samples} "
                f"{subset_seconds[-1]:.1f} s ({subset_seconds[-1] / epoch_seconds[-1]:.2f} epochs)"
            )
        _log(
            f"repeat {repeat}: epoch {epoch_seconds[-1]:.1f} s, influence {influence_seconds[-1]:.1f} s "
            f"({influence_seconds[-1] / epoch_seconds[-1]:.2f} epochs), search {search_seconds[-1]:.1f} s "
            f"({search_seconds[-1] / epoch_seconds[-1]:.3f} epochs; {result.evaluations} LPs, {result.status})"
        )

    epoch_s = statistics.median(epoch_seconds)
    influence_s = statistics.median(influence_seconds)
    search_s = statistics.median(search_seconds)
    return {
        "n": args.n,
        "epoch_s": epoch_s,
        "influence_s": influence_s,
        "search_s": search_s,
        "influence_in_epochs": influence_s / epoch_s,
        "search_in_epochs": search_s / epoch_s,
        "targets_met": {
            "influence_s <= 5 epoch_s": influence_s <= 5 * epoch_s,
            "search_s <= 0.25 epoch_s": search_s <= 0.25 * epoch_s,
        },
        "curvature_samples": args.curvature_samples,
        "influence_subset_s": statistics.median(subset_seconds) if subset_seconds else None,
        "influence_subset_in_epochs": statistics.median(subset_seconds) / epoch_s if subset_seconds else None,
        "influence_subset_seconds": subset_seconds,
        # Spearman between the scores with the curvature on the subset and on every sample, per class.
        "influence_subset_spearman_median": float(np.median(subset_spearman)) if subset_spearman else None,
        "influence_subset_spearman_min": float(np.min(subset_spearman)) if subset_spearman else None,
        "epoch_seconds": epoch_seconds,
        "influence_seconds": influence_seconds,
        "search_seconds": search_seconds,
        "search_one_process_seconds": search_one_process_seconds,
        "search_one_process_in_epochs": statistics.median(search_one_process_seconds) / epoch_s,
        "intervention_in_epochs": (influence_s + search_s) / epoch_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "influence_phase_seconds": phases,
        "searches": searches,
        "settings": {
            "val": args.val,
            "model": "SmallCNN(3, 10, 32), channels (16, 32)",
            "parameters": sum(p.numel() for p in model.parameters()),
            "batch_size": args.batch_size,
            "influence_batch": args.influence_batch,
            "matmul_precision": args.matmul_precision,
            "warmup_epochs": args.warmup_epochs,
            "lr": args.lr,
            "label_noise": LABEL_NOISE,
            "val_accuracy_per_class": accuracy.tolist(),
            "targets": targets,
            "repeats": args.repeats,
        },
        "machine": {
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "processor": processor(),
            "load_average_at_end": os.getloadavg(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
    }


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="training images")
    parser.add_argument("--val", type=int, default=5_000, help="validation images")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--influence-batch",
        type=int,
        default=256,
        help="batch of the influence passes: 256, the callbacks' influence_batch_size default (at n = 5,000 "
        "on 2 CPU cores, 512 made the influence about 12%% slower: a batch's conv patches no longer fit the cache)",
    )
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--curvature-samples",
        default="none",
        help="also time the influence with the curvature on this many samples ('none', the default: every "
        "sample in every curvature pass, the reference the default's scores are compared with; 'skip': not run)",
    )
    parser.add_argument(
        "--matmul-precision",
        default="medium",
        choices=["highest", "high", "medium"],
        help="matmul_precision of the influence passes ('medium', the callbacks' default: float32 products in "
        "bfloat16 where the hardware has it fast)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line on stdout")
    parser.add_argument("--output", type=Path, default=REPOSITORY / "benchmarks" / "results" / "pareto_step.json")
    args = parser.parse_args()
    result = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    _log(f"wrote {args.output}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
