"""FI derivatives of any scope module through ``torch.func`` (vmap over samples and vectors).

``J^T q`` is a reverse-mode product of the parameter gradient taken in ``x`` (``vjp``) and ``J v``
a forward-mode one (``jvp``); neither materialises the ``p x d`` matrix ``J``.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, hessian, jacrev, jvp, vjp, vmap

from lightning_pareto.influence.local._scope import Scope


class FunctionalOperator:
    """:class:`~lightning_pareto.influence.local._operator.FIOperator` for an arbitrary scope module.

    Parameters outside the tracked Linear/Conv2d layers and buffers are held fixed. The scope
    must be in eval mode (no dropout, BatchNorm on running statistics).

    Args:
        scope: The perturbed module and its tracked-parameter layout.
        sample_shape: Shape of one scope input (the flat ``d`` entries are reshaped to it).
    """

    def __init__(self, scope: Scope, sample_shape: torch.Size) -> None:
        self.scope = scope
        self.sample_shape = sample_shape
        self.theta = scope.flat_params(torch.float64)
        self.num_params = self.theta.numel()
        tracked = set(scope.unflatten(self.theta))
        module = scope.module
        self.constants = {
            name: value.detach().to(torch.float64) if value.is_floating_point() else value
            for name, value in [*module.named_parameters(), *module.named_buffers()]
            if name not in tracked
        }

    def _log_probs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        state = {**self.constants, **self.scope.unflatten(theta)}
        logits = functional_call(self.scope.module, state, (x.reshape(1, *self.sample_shape),))
        return torch.log_softmax(logits.reshape(-1), dim=-1)

    def _loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self._log_probs(theta, x).gather(0, y.reshape(1))[0]

    def _loss_grad(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return grad(self._loss)(theta, x, y)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(b, K)``."""
        return vmap(self._log_probs, in_dims=(None, 0))(self.theta, x).exp()

    def log_prob_grads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Probabilities ``(b, K)``, ``d/dtheta log P(c)`` ``(b, K, p)`` and ``d/dx log P(c)`` ``(b, K, d)``."""
        d_theta, d_x = vmap(jacrev(self._log_probs, argnums=(0, 1)), in_dims=(None, 0))(self.theta, x)
        return self.probs(x), d_theta, d_x

    def loss_grads(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss gradients ``(b, p)``."""
        return vmap(self._loss_grad, in_dims=(None, 0, 0))(self.theta, x, y)

    def hessian_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed Hessian ``(p, p)``: one forward-over-reverse pass of the batch's summed loss."""

        def summed_loss(theta: torch.Tensor) -> torch.Tensor:
            return vmap(self._loss, in_dims=(None, 0, 0))(theta, x, y).sum()

        return hessian(summed_loss)(self.theta)

    def jt(self, x: torch.Tensor, y: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``J^T q`` per sample: ``(b, m, p)`` -> ``(b, m, d)``."""

        def one_sample(x_i: torch.Tensor, y_i: torch.Tensor, q_i: torch.Tensor) -> torch.Tensor:
            _, pullback = vjp(lambda inputs: self._loss_grad(self.theta, inputs, y_i), x_i)
            return vmap(pullback)(q_i)[0]

        return vmap(one_sample)(x, y, queries)

    def jv(self, x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """``J v`` per sample: ``(b, m, d)`` -> ``(b, m, p)``."""

        def one_sample(x_i: torch.Tensor, y_i: torch.Tensor, v_i: torch.Tensor) -> torch.Tensor:
            def push(v: torch.Tensor) -> torch.Tensor:
                return jvp(lambda inputs: self._loss_grad(self.theta, inputs, y_i), (x_i,), (v,))[1]

            return vmap(push)(v_i)

        return vmap(one_sample)(x, y, directions)
