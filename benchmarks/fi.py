"""Speed of FI^util at Adult scale: efficient exact vs the naive Algorithm 1, and the approximations.

FI^util, Algorithm 1 and the approximations are those of "Enhancing Prediction Performance through
Influence Measure" ("the paper" below).

Data: *synthetic, Adult-shaped* (no download here): n = 5,000 training rows (the paper's Adult
subsample, appendix D.1), 1,000 validation rows, d = 102 features laid out like the one-hot Adult
encoding (6 standardised numeric columns and one-hot groups of sizes 7, 16, 7, 14, 6, 5, 2, 39),
binary labels from a noisy logistic rule with ~24% positives. Model: ``LogisticRegression(102, 2)``
(softmax over two logits, p = 206 parameters), trained to convergence by L-BFGS.

Methods, all timed end to end (data pass, curvature, scores) in the same run, median of ``--repeats``:

- ``naive``: Algorithm 1 as written, batched with ``torch.func.vmap``: per-sample ``J`` (p x d) by
  ``jacrev``, dense ``pinv(H)``, per-sample ``G_z`` (d x d) and ``pinv(G_z)`` (batched).
- ``exact``: ``fi_util(curvature="exact")``.
- ``kfac``: ``fi_util(curvature="kfac")``: K-FAC curvature alone, exact ``J`` products.
- ``kfsvd``: ``fi_util(approx="kfsvd", rank=k)`` with K-FAC curvature (Algorithm 5).
- ``subsample``: ``fi_util(approx="subsample", alpha=0.2)`` (exact FI on 20%, random forest).
- ``kfsvd+subsample``: both (Algorithm 6 as the paper runs it).

Rank agreement with ``exact`` is Spearman's rho over all n samples. Run:
``python benchmarks/fi.py`` (writes ``benchmarks/results/fi.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _machine import processor
from scipy.stats import spearmanr
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, vmap
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto.data import IndexedDataset
from lightning_pareto.influence import fi_util
from lightning_pareto.nets import LogisticRegression

_GROUPS = (7, 16, 7, 14, 6, 5, 2, 39)
_NUMERIC = 6
# "Enhancing Prediction Performance through Influence Measure", appendix E.1, Table 8: whole-pipeline
# seconds, approximate (KFSVD + subsampling) vs exact.
_PAPER_TABLE_8 = {
    "MNIST": {"approx_accuracy": 93.8, "exact_accuracy": 94.0, "approx_seconds": 393, "exact_seconds": 1228},
    "CelebA": {"approx_accuracy": 80.9, "exact_accuracy": 78.1, "approx_seconds": 269, "exact_seconds": 1058},
}


def adult_shaped(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic rows with Adult's one-hot layout (102 columns) and a noisy logistic label."""
    generator = np.random.default_rng(seed)
    numeric = generator.standard_normal((n, _NUMERIC))
    blocks = [numeric]
    for size in _GROUPS:
        popularity = generator.dirichlet(np.full(size, 0.7))
        blocks.append(np.eye(size)[generator.choice(size, size=n, p=popularity)])
    x = np.concatenate(blocks, axis=1)
    rule = np.random.default_rng(12345).standard_normal(x.shape[1])  # the same rule for every split
    score = x @ rule - 1.4 + 1.0 * generator.standard_normal(n)
    y = (score > np.quantile(score, 0.76)).astype(np.int64)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def train(x: torch.Tensor, y: torch.Tensor) -> LogisticRegression:
    """Full-batch L-BFGS on the cross-entropy with a small L2 term (Table 3 uses weight decay 1e-2)."""
    torch.manual_seed(0)
    model = LogisticRegression(x.shape[1], 2)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + 1e-3 * model.head.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def naive_fi_util(model: nn.Module, x, y, xv, yv, chunk: int = 250) -> torch.Tensor:
    """Algorithm 1 as written, in float64, batched over samples with ``torch.func.vmap``."""
    model = copy.deepcopy(model).double().eval()
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x, xv = x.double(), xv.double()

    def params(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes = [shape.numel() for shape in shapes]
        return {name: part.reshape(shape) for name, part, shape in zip(names, flat.split(sizes), shapes)}

    def log_probs(flat: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(functional_call(model, params(flat), (inputs[None],))[0], dim=-1)

    def loss(flat: torch.Tensor, inputs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return -log_probs(flat, inputs).gather(0, label[None])[0]

    n = len(x)
    h = hessian(lambda flat: vmap(loss, in_dims=(None, 0, 0))(flat, x, y).mean())(theta)
    h_inv = torch.linalg.pinv(h, hermitian=True)
    g_v = grad(lambda flat: vmap(loss, in_dims=(None, 0, 0))(flat, xv, yv).mean())(theta)

    def per_sample(inputs: torch.Tensor, label: torch.Tensor):
        jac = jacrev(lambda z: grad(loss)(theta, z, label))(inputs)  # J(z): (p, d)
        d_theta_d_omega = -h_inv @ jac / n  # appendix A, eq. A.7
        a = jacrev(log_probs, argnums=0)(theta, inputs) @ d_theta_d_omega + jacrev(log_probs, argnums=1)(theta, inputs)
        probs = log_probs(theta, inputs).exp()
        return a.T @ (probs[:, None] * a), g_v @ d_theta_d_omega

    values = []
    for start in range(0, n, chunk):
        metric, v = vmap(per_sample)(x[start : start + chunk], y[start : start + chunk])
        pinv = torch.linalg.pinv(metric, hermitian=True)  # batched (chunk, d, d)
        values.append((v[:, None, :] @ pinv @ v[:, :, None]).reshape(-1))
    return torch.cat(values)


def timed(function, repeats: int) -> tuple[list[float], object]:
    """Wall-clock seconds of ``repeats`` calls and the last result."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=10, help="KFSVD rank k")
    parser.add_argument("--alpha", type=float, default=0.2, help="subsampling fraction")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for every method")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "fi.json")
    args = parser.parse_args()
    # One thread by default: multi-threaded LAPACK is erratic when other jobs share the cores
    # (benchmarks/RESULTS.md, "FI^util speed").
    torch.set_num_threads(args.threads)

    x, y = adult_shaped(args.n, seed=0)
    xv, yv = adult_shaped(args.n_val, seed=1)
    trained = train(x, y)
    train_loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=512)
    val_loader = DataLoader(IndexedDataset(TensorDataset(xv, yv)), batch_size=512)

    methods = {
        "naive": lambda: naive_fi_util(trained, x, y, xv, yv),
        "exact": lambda: fi_util(trained, train_loader, val_loader, curvature="exact"),
        "kfac": lambda: fi_util(trained, train_loader, val_loader, curvature="kfac"),
        "kfsvd": lambda: fi_util(trained, train_loader, val_loader, approx="kfsvd", rank=args.rank, curvature="kfac"),
        "subsample": lambda: fi_util(trained, train_loader, val_loader, approx="subsample", alpha=args.alpha),
        "kfsvd+subsample": lambda: fi_util(
            trained,
            train_loader,
            val_loader,
            approx=["kfsvd", "subsample"],
            rank=args.rank,
            alpha=args.alpha,
            curvature="kfac",
        ),
    }
    load_before = os.getloadavg()[0]
    results: dict[str, dict] = {}
    outputs: dict[str, torch.Tensor] = {}
    for name, function in methods.items():
        seconds, outputs[name] = timed(function, args.repeats)
        results[name] = {"median_seconds": statistics.median(seconds), "seconds": seconds}
        print(f"{name:>16}: median {statistics.median(seconds):8.3f} s  runs {[round(s, 3) for s in seconds]}")
    exact = outputs["exact"].numpy()
    for name in methods:
        results[name]["spearman_to_exact"] = float(spearmanr(outputs[name].numpy(), exact).statistic)
        results[name]["speedup_vs_naive"] = results["naive"]["median_seconds"] / results[name]["median_seconds"]
    relative = (outputs["naive"] - outputs["exact"]).abs() / outputs["naive"].abs().clamp_min(1e-300)
    summary = {
        "benchmark": "FI^util at Adult scale (synthetic, Adult-shaped data)",
        "data": {
            "n_train": args.n,
            "n_val": args.n_val,
            "d": x.shape[1],
            "num_classes": 2,
            "p": 206,
            "synthetic": True,
        },
        "model": "LogisticRegression(102, 2), L-BFGS",
        "machine": f"{processor()} shared with other jobs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "repeats": args.repeats,
        "kfsvd_rank": args.rank,
        "alpha": args.alpha,
        "naive_vs_exact_max_relative_error": float(relative.max()),
        "speedup_exact_vs_naive": results["naive"]["median_seconds"] / results["exact"]["median_seconds"],
        "methods": results,
        "paper_table_8": _PAPER_TABLE_8,
        "command": "python benchmarks/fi.py",
    }
    print(
        f"exact vs naive: {summary['speedup_exact_vs_naive']:.1f}x faster, max relative difference "
        f"{summary['naive_vs_exact_max_relative_error']:.2e}"
    )
    for name in methods:
        print(f"{name:>16}: Spearman to exact {results[name]['spearman_to_exact']:.4f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
