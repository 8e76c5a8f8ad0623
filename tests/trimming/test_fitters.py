"""The fitters: L-BFGS reaches a stationary point of the regularised loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _trimming_cases import WEIGHT_DECAY, noisy_gaussians, trained_logistic


def test_lbfgs_fit_reaches_a_stationary_point_of_the_regularised_loss() -> None:
    datamodule = noisy_gaussians()
    net = trained_logistic(datamodule).double()
    x, y = datamodule.train_arrays
    penalty = sum(p.square().sum() for p in net.parameters())
    loss = F.cross_entropy(net(x.double()), y) + 0.5 * WEIGHT_DECAY * penalty
    gradients = torch.autograd.grad(loss, list(net.parameters()))
    assert max(float(g.abs().max()) for g in gradients) < 1e-5
    assert next(trained_logistic(datamodule).parameters()).dtype == torch.float32  # cast back after the fit
