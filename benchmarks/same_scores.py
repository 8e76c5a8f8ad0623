"""Do two code trees give the same influence scores? Small fixed cases through both engines, side by side.

Cases (CPU, one thread): a 64-32-10 MLP and a two-conv CNN trained on 1,200 sklearn digits, scored on
300 validation digits with category-wise EKFAC, K-FAC and IV, the MLP's head with the exact curvature;
FI^util of a softmax regression on 300 digits (exact, exact damped, K-FAC). Each tree runs in its own
process; the largest absolute difference of each score matrix over its largest entry is printed and
written to ``benchmarks/results/same_scores.json``. The EKFAC correction runs on every sample where
the tree has ``correction_samples``, so that both trees compute the same quantity.

Usage::

    git archive e9a7687 | tar -x -C /tmp/influence_before
    python benchmarks/same_scores.py --before /tmp/influence_before
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "same_scores.json"

_CASES = """
import inspect, sys
sys.path.insert(0, ROOT)
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_pareto
assert lightning_pareto.__file__.startswith(ROOT), lightning_pareto.__file__
from lightning_pareto.influence import category_influence, fi_util, influence_value

torch.set_num_threads(1)
torch.manual_seed(0)
x, y = load_digits(return_X_y=True)
x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
cnn = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                    nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 10))
for model in (mlp, cnn):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[:1200]), y[:1200]).backward()
        optimizer.step()
train = DataLoader(TensorDataset(x[:1200], y[:1200], torch.arange(1200)), batch_size=128)
val = DataLoader(TensorDataset(x[1200:1500], y[1200:1500]), batch_size=128)
every = {"correction_samples": None} if "correction_samples" in inspect.signature(category_influence).parameters else {}
out = {}
for name, model in (("mlp", mlp), ("cnn", cnn)):
    out[name + "_ekfac"] = category_influence(model, train, val, 10, **every)
    out[name + "_kfac"] = category_influence(model, train, val, 10, curvature="kfac")
    out[name + "_iv"] = influence_value(model, train, val, 10, **every)
out["mlp_head_exact"] = category_influence(mlp, train, val, 10, curvature="exact", modules=["2"])
head = nn.Linear(64, 10).double()
small = DataLoader(TensorDataset(x[:300].double(), y[:300], torch.arange(300)), batch_size=64)
small_val = DataLoader(TensorDataset(x[1200:1300].double(), y[1200:1300]), batch_size=64)
optimizer = torch.optim.LBFGS(head.parameters(), max_iter=50)

def closure():
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(head(x[:300].double()), y[:300]) + 1e-3 * head.weight.square().sum()
    loss.backward()
    return loss

optimizer.step(closure)
out["fi_exact"] = fi_util(head, small, small_val)
out["fi_exact_damped"] = fi_util(head, small, small_val, damping=0.01)
out["fi_kfac"] = fi_util(head, small, small_val, curvature="kfac")
torch.save(out, OUT)
"""


def scores(root: Path, out: Path) -> dict[str, torch.Tensor]:
    """Run the cases with the package under ``root``; the score tensors by case."""
    script = f"ROOT = {str(root.resolve())!r}\nOUT = {str(out)!r}\n" + _CASES
    subprocess.run([sys.executable, "-c", script], check=True)
    return torch.load(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="root of the other code tree")
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        before = scores(args.before, Path(folder) / "before.pt")
        after = scores(args.after, Path(folder) / "after.pt")
    differences = {case: float((after[case] - before[case]).abs().max() / before[case].abs().max()) for case in before}
    for case, difference in differences.items():
        print(f"{case:>16}: max |after - before| / max |before| = {difference:.1e}")
    result = {"before": str(args.before), "after": str(args.after), "max_abs_difference_over_max_abs": differences}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
