"""How much the discarded input directions of truncated layers weigh in the category-wise scores.

On the speed case of ``benchmarks/influence.py`` (the MNIST CNN of "Enhancing Prediction Performance
through Influence Measure", Table 6, on MNIST-5k, after 2 and after 6 epochs of SGD), the EKFAC
curvature at the engine's defaults truncates the input bases of three layers: the 3,137-input Linear
layer (``body.6``), conv2 (``body.2``, 289 inputs) and, early in training, the head (257 inputs). Each
keeps one isotropic block for the directions it discarded (``KroneckerFactors.residual``), and the
score phase spends most of its work on that block (the wide layer's inputs against every validation
row; conv2's whole per-sample gradients). Here the block's inverse is set to zero (its eigenvalue to
1e12, the damping left as fitted), which is what scores computed in the kept directions only would
give, and the scores are compared with the engine's (Spearman per class). Writes
``benchmarks/results/discarded_block.json``.

    python benchmarks/discarded_block.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import warnings
from pathlib import Path

import influence as bench  # benchmarks/influence.py (the script's folder): the same case and loaders
import torch
from _machine import processor
from scipy.stats import spearmanr

from lightning_pareto.influence import category_influence, fit_curvature
from lightning_pareto.influence.kfac.curvature import KroneckerCurvature

RESULTS = Path(__file__).parent / "results" / "discarded_block.json"
_DROPPED = 1e12  # the discarded block's eigenvalue: its inverse is zero to float64 precision


def _without_blocks(fitted: KroneckerCurvature, names: list[str]) -> KroneckerCurvature:
    """``fitted`` with the discarded blocks of ``names`` given no inverse, at the same damping."""
    layers = dict(fitted.layers)
    for name in names:
        residual = layers[name].residual
        layers[name] = dataclasses.replace(layers[name], residual=torch.full_like(residual, _DROPPED))
    with warnings.catch_warnings():  # the constructor raises the damping for the huge eigenvalue, and says so
        warnings.simplefilter("ignore")
        dropped = KroneckerCurvature(fitted.kind, fitted.tracked, layers, fitted.damping, fitted.fisher)
    dropped.damping = fitted.damping
    return dropped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 6], help="training epochs before the comparison")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result: dict = {"machine": f"{processor()} (shared), torch {torch.__version__}", "runs": {}}
    for epochs in args.epochs:
        case = argparse.Namespace(threads=2, warmup_epochs=epochs, influence_batch=256)
        model, _, train_loader, val_loader = bench._speed_case(case)
        fitted = fit_curvature(model, train_loader)
        reference = category_influence(model, train_loader, val_loader, 10, curvature=fitted)
        truncated = [name for name, layer in fitted.layers.items() if layer.truncated]
        run: dict = {
            "damping": fitted.damping,
            "truncated": {name: list(fitted.layers[name].eigvecs_inputs.shape) for name in truncated},
        }
        for names in [[name] for name in truncated] + [truncated]:
            scores = category_influence(model, train_loader, val_loader, 10, curvature=_without_blocks(fitted, names))
            rho = [float(spearmanr(scores[:, c], reference[:, c])[0]) for c in range(10)]
            label = "+".join(names)
            run[label] = {"spearman_median": statistics.median(rho), "spearman_min": min(rho)}
            print(
                f"after {epochs} epochs, without the block of {label}: Spearman median "
                f"{statistics.median(rho):.4f}, min {min(rho):.4f}",
                flush=True,
            )
        result["runs"][f"after_{epochs}_epochs"] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
