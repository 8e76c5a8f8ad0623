"""Shared cases of the trimming tests: noisy Gaussians, a logistic regression trained to convergence, a dense IV."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, hessian
from torch.utils.data import DataLoader

from lightning_pareto.data import GaussiansDataModule
from lightning_pareto.nets import LogisticRegression
from lightning_pareto.trimming import LBFGSFit

WEIGHT_DECAY = 0.01


def noisy_gaussians(seed: int = 0) -> GaussiansDataModule:
    """Two well-separated Gaussians with 10% of the 150 training labels flipped (15 samples)."""
    datamodule = GaussiansDataModule(separation=4.0, label_noise=0.1, seed=seed)
    datamodule.setup("fit")
    return datamodule


def trained_logistic(datamodule: GaussiansDataModule) -> nn.Module:
    torch.manual_seed(0)
    net = LogisticRegression(2, 2)
    LBFGSFit(weight_decay=WEIGHT_DECAY).fit(net, datamodule.train_dataset, num_classes=2, seed=0)
    return net


def train_val_loaders(datamodule: GaussiansDataModule) -> tuple[DataLoader, DataLoader]:
    return DataLoader(datamodule.train_dataset, batch_size=64), DataLoader(datamodule.val_dataset, batch_size=64)


def reference_iv(net: nn.Module, datamodule: GaussiansDataModule, damping: float) -> torch.Tensor:
    """IV_i = g_V^T (H + damping I)^{-1} g_i with the dense autograd Hessian of the mean training loss."""
    params = {name: p.detach().double() for name, p in net.named_parameters()}
    names = list(params)
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].reshape(-1) for n in names])
    reference = copy.deepcopy(net).double()

    def loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, [s.numel() for s in shapes])
        unflat = {n: piece.reshape(s) for n, piece, s in zip(names, pieces, shapes)}
        return F.cross_entropy(functional_call(reference, unflat, (x,)), y)

    x, y = (t.double() if t.is_floating_point() else t for t in datamodule.train_arrays)
    x_val, y_val = (t.double() if t.is_floating_point() else t for t in datamodule.val_arrays)
    curvature = hessian(loss)(flat, x, y) + damping * torch.eye(flat.numel(), dtype=torch.float64)
    query = torch.linalg.solve(curvature, grad(loss)(flat, x_val, y_val))
    per_sample = torch.stack([grad(loss)(flat, x[i : i + 1], y[i : i + 1]) for i in range(len(y))])
    return per_sample @ query
