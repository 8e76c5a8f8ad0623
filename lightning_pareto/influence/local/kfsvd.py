"""Rank-k approximation of each sample's ``J(z) = d/dx d/dtheta L`` (the "SVD" half of KFSVD).

Algorithm 5 of "Enhancing Prediction Performance through Influence Measure" replaces ``J`` (``p x d``) by a truncated SVD found by power iteration.
Here block subspace iteration runs on the operator's ``J v`` / ``J^T q`` products, batched over
samples, so ``J`` is never formed: after ``_SUBSPACE_ITERATIONS`` rounds, ``V`` (``d x k``) has
orthonormal columns spanning the dominant right singular space and ``J ~= (J V) V^T``, a rank-k
matrix whose products cost ``O((p + d) k)``. With ``k = min(p, d)`` the approximation is exact.
"""

from __future__ import annotations

import torch

from lightning_pareto.influence.local._operator import FIOperator

# Power-iteration rounds; each costs k J-products and k J^T-products per sample.
_SUBSPACE_ITERATIONS = 2


class LowRankJacobian:
    """Per-sample rank-k factors ``J_i ~= Y_i^T V_i^T`` with ``Y_i = (J_i V_i)^T``.

    Use :meth:`fit`. Exposes the same ``jt``/``jv`` products as an operator, for the batch it was
    fitted on (the ``x``/``y`` arguments are accepted for interface compatibility and ignored).

    Attributes:
        right: ``V`` of shape ``(b, d, k)`` with orthonormal columns.
        image: ``J V`` transposed, shape ``(b, k, p)``.
    """

    def __init__(self, right: torch.Tensor, image: torch.Tensor) -> None:
        self.right = right
        self.image = image

    @classmethod
    def fit(
        cls, operator: FIOperator, x: torch.Tensor, y: torch.Tensor, rank: int, generator: torch.Generator
    ) -> LowRankJacobian:
        """Run block subspace iteration for a batch of samples.

        Args:
            operator: Exact ``J`` products.
            x: Inputs ``(b, d)``.
            y: Labels ``(b,)``.
            rank: Target rank ``k``; clipped to ``min(p, d)``.
            generator: Seeds the random start (CPU generator).

        Returns:
            The fitted factors.
        """
        d = x.shape[1]
        rank = min(rank, d, operator.num_params)
        start = torch.randn(d, rank, generator=generator, dtype=x.dtype).to(x.device)
        right = torch.linalg.qr(start).Q.expand(len(x), d, rank)
        for _ in range(_SUBSPACE_ITERATIONS):
            left = torch.linalg.qr(operator.jv(x, y, right.transpose(1, 2)).transpose(1, 2)).Q
            right = torch.linalg.qr(operator.jt(x, y, left.transpose(1, 2)).transpose(1, 2)).Q
        return cls(right, operator.jv(x, y, right.transpose(1, 2)))

    def jt(self, x: torch.Tensor, y: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``J^T q ~= V (J V)^T q``: ``(b, m, p)`` -> ``(b, m, d)``."""
        return queries @ self.image.transpose(1, 2) @ self.right.transpose(1, 2)

    def jv(self, x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """``J v ~= (J V) V^T v``: ``(b, m, d)`` -> ``(b, m, p)``."""
        return directions @ self.right @ self.image
