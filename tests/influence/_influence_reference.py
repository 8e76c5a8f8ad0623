"""Independent dense references and small fixtures' building blocks for the influence tests.

Everything here works on all of a model's parameters in ``named_parameters()`` order with
``torch.func`` and dense linear algebra, sharing no code with ``lightning_pareto.influence``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap
from torch.utils.data import DataLoader, TensorDataset


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run a test module on one intra-op thread: these tests are small-op bound, and on a shared
    2-core machine OpenMP's spinning threads make them tens of times slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def digits(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """sklearn's 1,797 8x8 digits, features scaled to [0, 1], in a fixed shuffled order."""
    features, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(labels))
    return torch.tensor(features[order] / 16.0, dtype=dtype), torch.tensor(labels[order], dtype=torch.int64)


def mlp(seed: int = 0) -> nn.Module:
    """64-32-10 MLP (2,410 parameters)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


class DigitsCNN(nn.Module):
    """Two Conv2d layers (integer and "same" padding) and a Linear head on 8x8 digits (1,790 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding="same")
        self.head = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x.view(-1, 1, 8, 8))), 2)
        return self.head(F.relu(self.conv2(x)).flatten(1))


def cnn(seed: int = 0) -> nn.Module:
    """A seeded ``DigitsCNN``."""
    torch.manual_seed(seed)
    return DigitsCNN()


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float = 0.01) -> nn.Module:
    """Full-batch Adam on the mean cross-entropy; deterministic."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


def train_sgd(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, seed: int = 0) -> nn.Module:
    """Mini-batch (32) SGD with momentum 0.9, seeded shuffling: a model part-way through training."""
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        for xb, yb, _ in loader(x, y, batch_size=32, shuffle=True):
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


def loader(x: Tensor, y: Tensor, batch_size: int = 64, indexed: bool = True, shuffle: bool = False) -> DataLoader:
    """A DataLoader over ``(x, y, index)`` or ``(x, y)``."""
    tensors = (x, y, torch.arange(len(y))) if indexed else (x, y)
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, generator=generator)


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def _flat(named: dict[str, Tensor], batch_dims: int) -> Tensor:
    return torch.cat([value.reshape(*value.shape[:batch_dims], -1) for value in named.values()], dim=-1)


def per_sample_grads(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy gradients over all parameters, ``(n, P)`` in float64."""
    model.eval()
    params = _params(model)

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    return _flat(vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y), 1).double()


def dense_ggn(model: nn.Module, x: Tensor) -> Tensor:
    """Mean GGN ``(1/n) sum_i J_i^T (diag p_i - p_i p_i^T) J_i`` over all parameters, float64 ``(P, P)``."""
    model.eval()
    params = _params(model)

    def logits(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = _flat(vmap(jacrev(logits), in_dims=(None, 0))(params, x), 2).double()  # (n, K, P)
    with torch.no_grad():
        probs = torch.softmax(model(x).double(), dim=1)
    hessians = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    weighted = torch.bmm(hessians, jac)  # (n, K, P)
    return jac.flatten(end_dim=1).T @ weighted.flatten(end_dim=1) / len(x)


def reference_influence(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    num_classes: int,
    damping: float,
    fisher: str,
) -> Tensor:
    """``I[i, c] = g_c^T (G + damping I)^{-1} g_i`` by ``torch.linalg.solve``, float64 ``(n, K)``."""
    train_grads = per_sample_grads(model, *train)
    val_grads = per_sample_grads(model, *val)
    if fisher == "ggn":
        curvature = dense_ggn(model, train[0])
    else:
        curvature = train_grads.T @ train_grads / len(train_grads)
    class_means = torch.stack([val_grads[val[1] == c].mean(dim=0) for c in range(num_classes)])
    damped = curvature + damping * torch.eye(curvature.shape[0], dtype=torch.float64)
    return train_grads @ torch.linalg.solve(damped, class_means.T)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two vectors."""
    return float(spearmanr(a.double().numpy(), b.double().numpy())[0])


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64."""
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def layer_gradients(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Per-sample gradients of each Linear/Conv2d as ``(n, out, in [+1 bias column])``, by torch.func."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    named = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            weight = named[f"{name}.weight"].reshape(len(x), module.weight.shape[0], -1)
            layers[name] = torch.cat([weight, named[f"{name}.bias"][:, :, None]], dim=2)
    return layers
