"""The derivatives FI needs of one model, as batched products (never a per-sample ``J`` matrix).

For a sample ``(x, y)`` with ``x`` flattened to ``d`` entries, ``theta`` the flat tracked
parameters (``p`` entries, see ``_scope``) and ``L = -log softmax(f(x; theta))[y]``, write
``J(z) = d/dx d/dtheta L`` (``p x d``). Every FI quantity is built from these batched products.
All tensors are float64; ``b`` is the batch size, ``m`` a number of vectors per sample.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from lightning_pareto.influence.local._functional import FunctionalOperator
from lightning_pareto.influence.local._linear import SoftmaxLinearOperator
from lightning_pareto.influence.local._scope import Scope


class JacobianProducts(Protocol):
    """Products with each sample's ``J(z)``: an operator's exact ones or a low-rank approximation's."""

    def jt(self, x: torch.Tensor, y: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``J(z_i)^T q`` for each sample's queries: ``queries`` ``(b, m, p)`` -> ``(b, m, d)``."""
        ...

    def jv(self, x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """``J(z_i) v`` for each sample's directions: ``directions`` ``(b, m, d)`` -> ``(b, m, p)``."""
        ...


class FIOperator(JacobianProducts, Protocol):
    """Batched first and mixed second derivatives of the cross-entropy loss."""

    num_params: int

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(b, K)`` for inputs ``x`` of shape ``(b, d)``."""
        ...

    def log_prob_grads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Probabilities and both gradients of every class's log-probability.

        Args:
            x: Inputs ``(b, d)``.

        Returns:
            ``(probs, d_theta, d_x)``: ``probs`` ``(b, K)``; ``d_theta[i, c]`` ``(b, K, p)`` the
            gradient of ``log P(c | x_i)`` in ``theta``; ``d_x[i, c]`` ``(b, K, d)`` its gradient in ``x``.
        """
        ...

    def loss_grads(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients ``d/dtheta L(y_i, x_i)`` of shape ``(b, p)``."""
        ...

    def hessian_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of the per-sample Hessians ``d^2/dtheta^2 L``, shape ``(p, p)``."""
        ...


def make_operator(scope: Scope, sample_shape: torch.Size, linear_equivalent: bool) -> FIOperator:
    """The closed-form operator when the scope is one softmax-linear layer, else the functional one.

    Args:
        scope: The perturbed module.
        sample_shape: Shape of one scope input.
        linear_equivalent: Whether the scope acts as its single Linear on the flattened input
            (see ``ScopeInputs.linear_equivalent``).

    Returns:
        A :class:`SoftmaxLinearOperator` or a :class:`FunctionalOperator`.
    """
    layers = list(scope.tracked.values())
    if linear_equivalent and len(layers) == 1 and isinstance(layers[0], nn.Linear):
        return SoftmaxLinearOperator(layers[0])
    return FunctionalOperator(scope, sample_shape)
