"""Why K-FAC factors gathered during training disagree with factors of the final model: dropout or drift.

Issue #20 asked for factors accumulated during the training epoch before an intervention
(``FactorAccumulator``), chosen by their agreement with a factor pass on the final model. On the
speed case of ``benchmarks/influence.py`` (the MNIST CNN of "Enhancing Prediction Performance through
Influence Measure", Table 6, on MNIST-5k, 4,000 train / 1,000 validation, SGD lr 0.05 momentum 0.9,
batch 64, 2 threads), with dropout 0.25 (the paper's) and 0, one epoch of training, then the second
epoch trained with accumulators attached. EKFAC scores (correction on every sample, default
damping) from each set of factors are compared with all-samples EKFAC on the final model (Spearman
per class, median over the 10 classes):

- ``whole_last_epoch``: factors from every step of the last epoch (the model moves, dropout on);
- ``last_quarter``: from its last quarter of steps only (less movement, fewer samples);
- ``frozen_train_mode``: the final model, no optimizer step, training mode (dropout only);
- ``frozen_eval_mode``: the final model, no step, eval mode: checks the accumulator itself (1.0);
- ``frozen_eval_half`` / ``frozen_eval_quarter``: the same from every 2nd / 4th batch only (the
  eigenbases from a subset; the correction, so the eigenvalues, still from every sample): would a
  factor pass over fewer samples do?

Writes ``benchmarks/results/factor_drift.json``.

    python benchmarks/factor_drift.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))

from influence import _loader, _mnist5k, _train_epoch  # noqa: E402

from lightning_pareto.influence import category_influence  # noqa: E402
from lightning_pareto.influence.kfac.accumulator import FactorAccumulator  # noqa: E402
from lightning_pareto.nets import MnistCNN  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "factor_drift.json"


def _median_spearman(scores: Tensor, reference: Tensor) -> float:
    return statistics.median(float(spearmanr(scores[:, c], reference[:, c])[0]) for c in range(reference.shape[1]))


def _steps(model: nn.Module, loader, optimizer: torch.optim.Optimizer | None) -> None:
    for x, y, _ in loader:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if optimizer is not None:
            optimizer.step()
    model.zero_grad()


def main() -> None:
    torch.set_num_threads(2)
    train_x, train_y, val_x, val_y = _mnist5k()
    train_loader, val_loader = _loader(train_x, train_y, 256), _loader(val_x, val_y, 256)
    results: dict[str, dict[str, float]] = {}
    for dropout in (0.25, 0.0):
        torch.manual_seed(0)
        model = MnistCNN(num_classes=10, dropout=dropout)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        _train_epoch(model, _loader(train_x, train_y, 64, shuffle=True, seed=0), optimizer)
        whole, last_quarter = FactorAccumulator(model), FactorAccumulator(model)
        batches = list(_loader(train_x, train_y, 64, shuffle=True, seed=1))
        model.train()
        with whole:
            quarter = int(0.75 * len(batches))
            _steps(model, batches[:quarter], optimizer)
            with last_quarter:
                _steps(model, batches[quarter:], optimizer)
        frozen_train, frozen_eval = FactorAccumulator(model), FactorAccumulator(model)
        with frozen_train:
            _steps(model, _loader(train_x, train_y, 64), None)
        frozen_half, frozen_quarter = FactorAccumulator(model), FactorAccumulator(model)
        model.eval()
        with frozen_eval:
            _steps(model, _loader(train_x, train_y, 64), None)
        ordered = list(_loader(train_x, train_y, 64))
        with frozen_half:
            _steps(model, ordered[::2], None)
        with frozen_quarter:
            _steps(model, ordered[::4], None)
        model.train()
        reference = category_influence(model, train_loader, val_loader, 10, correction_samples=None)
        row = {}
        for name, accumulator in [
            ("whole_last_epoch", whole),
            ("last_quarter", last_quarter),
            ("frozen_train_mode", frozen_train),
            ("frozen_eval_mode", frozen_eval),
            ("frozen_eval_half", frozen_half),
            ("frozen_eval_quarter", frozen_quarter),
        ]:
            fitted = accumulator.curvature(train_loader, correction_samples=None, progress=False)
            scores = category_influence(model, train_loader, val_loader, 10, curvature=fitted)
            row[name] = _median_spearman(scores, reference)
        results[f"dropout_{dropout}"] = row
        print(f"dropout {dropout}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    RESULTS.write_text(json.dumps({"spearman_median_over_classes": results, "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
