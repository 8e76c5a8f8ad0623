"""Closed-form FI derivatives for a softmax-linear scope: ``logits = W x + b``.

With ``x~ = [x; 1]`` (no 1 without bias), ``P = softmax(W x + b)``, ``r = P - e_y`` and
``C = diag(P) - P P^T``, the flat parameter block is ``(K, d + 1)`` and:

- ``d/dtheta L = r x~^T``, ``d/dtheta log P(c) = (e_c - P) x~^T``, ``d/dx log P(c) = W^T (e_c - P)``;
- ``d^2/dtheta^2 L = C (x) x~ x~^T`` (for this model the Hessian equals the GGN);
- ``J^T Q = Q[:, :d]^T r + W^T C Q x~`` (the ``x``-gradient of ``<Q, r x~^T>``);
- ``J v = (C W v) x~^T + r [v; 0]^T``.

Each product costs ``O(K d)`` per sample and vector.
"""

from __future__ import annotations

import torch
from torch import nn


class SoftmaxLinearOperator:
    """:class:`~lightning_pareto.influence.local._operator.FIOperator` for one ``nn.Linear`` on the logits.

    Args:
        linear: The layer; its current weights are copied to float64.
    """

    def __init__(self, linear: nn.Linear) -> None:
        self.weight = linear.weight.detach().to(torch.float64)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.float64)
        self.num_classes, self.in_features = self.weight.shape
        self.columns = self.in_features + int(self.bias is not None)
        self.num_params = self.num_classes * self.columns

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return x
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)

    def _residual(self, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return probs - nn.functional.one_hot(y, self.num_classes).to(probs.dtype)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(b, K)``."""
        return torch.softmax(nn.functional.linear(x, self.weight, self.bias), dim=-1)

    def log_prob_grads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Probabilities ``(b, K)``, ``d/dtheta log P(c)`` ``(b, K, p)`` and ``d/dx log P(c)`` ``(b, K, d)``."""
        probs = self.probs(x)
        # E[i, c] = e_c - P_i: the logit-gradient of log P(c | x_i).
        centred = torch.eye(self.num_classes, dtype=x.dtype, device=x.device) - probs[:, None, :]
        d_theta = centred[..., None] * self._augment(x)[:, None, None, :]
        return probs, d_theta.reshape(len(x), self.num_classes, -1), centred @ self.weight

    def loss_grads(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss gradients ``(b, p)``."""
        residual = self._residual(self.probs(x), y)
        return (residual[:, :, None] * self._augment(x)[:, None, :]).reshape(len(x), -1)

    def hessian_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed Hessian ``sum_i C_i (x) x~_i x~_i^T`` in the ``(k, l)`` row-major layout, ``(p, p)``."""
        probs = self.probs(x)
        x_aug = self._augment(x)
        covariance = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
        k, cols = self.num_classes, self.columns
        # sum_i C_i[k, k'] x~_i[l] x~_i[l'] as one matmul over the batch.
        left = (covariance[:, :, :, None] * x_aug[:, None, None, :]).reshape(len(x), -1)
        summed = (left.T @ x_aug).reshape(k, k, cols, cols)
        return summed.permute(0, 2, 1, 3).reshape(self.num_params, self.num_params)

    def jt(self, x: torch.Tensor, y: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``J^T q`` per sample: ``(b, m, p)`` -> ``(b, m, d)``."""
        probs = self.probs(x)
        residual = self._residual(probs, y)
        q = queries.reshape(len(x), -1, self.num_classes, self.columns)
        q_x = torch.einsum("bmkl,bl->bmk", q, self._augment(x))
        # C u = P * u - P (P . u), applied without forming C.
        c_q_x = probs[:, None, :] * (q_x - (q_x * probs[:, None, :]).sum(-1, keepdim=True))
        return c_q_x @ self.weight + torch.einsum("bmkj,bk->bmj", q[..., : self.in_features], residual)

    def jv(self, x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """``J v`` per sample: ``(b, m, d)`` -> ``(b, m, p)``."""
        probs = self.probs(x)
        residual = self._residual(probs, y)
        w_v = directions @ self.weight.T
        c_w_v = probs[:, None, :] * (w_v - (w_v * probs[:, None, :]).sum(-1, keepdim=True))
        out = c_w_v[..., None] * self._augment(x)[:, None, None, :]
        out[..., : self.in_features] += residual[:, None, :, None] * directions[:, :, None, :]
        return out.reshape(len(x), directions.shape[1], -1)
