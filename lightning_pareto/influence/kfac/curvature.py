"""The K-FAC/EKFAC curvature: one Kronecker-factored block per tracked layer, held in its eigenbasis."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_pareto.influence._base import SINGULAR_RATIO, Curvature, check_layers, more_damping, resolve_damping

__all__ = ["KroneckerCurvature", "KroneckerFactors"]


@dataclass(frozen=True)
class KroneckerFactors:
    """One layer's K-FAC/EKFAC curvature in its Kronecker eigenbasis (all float64).

    The layer's block of the curvature is ``(U_G (x) U_A) diag(vec(eigenvalues)) (U_G (x) U_A)^T``
    acting on row-major vectorised layout matrices ``(out_features, in_features + has_bias)``.

    With a truncated input basis (``k < in + has_bias`` columns in ``U_A``) the block is
    ``(U_G (x) U_A) diag(vec(eigenvalues)) (U_G (x) U_A)^T`` plus
    ``(U_G (x) P) diag(residual (x) 1) (U_G (x) P)^T`` with ``P = I - U_A U_A^T``.

    Attributes:
        eigvecs_inputs: ``U_A``, shape ``(in + has_bias, k)``: the (leading) eigenvectors of ``A``;
            ``k = in + has_bias`` unless truncated.
        eigvecs_grads: ``U_G``, shape ``(out, out)``: eigenvectors of ``G``.
        eigenvalues: Shape ``(out, k)``: ``outer(eig(G), eig(A))`` for K-FAC, the corrected second
            moments for EKFAC.
        residual: ``None``, or for a truncated basis shape ``(out,)``: the eigenvalue of the
            discarded input directions for each output eigendirection.
    """

    eigvecs_inputs: Tensor
    eigvecs_grads: Tensor
    eigenvalues: Tensor
    residual: Tensor | None = None

    @property
    def truncated(self) -> bool:
        """Whether the input eigenbasis is truncated."""
        return self.residual is not None

    def inverse(self, vectors: Tensor, damping: float) -> Tensor:
        """``(block + damping I)^{-1}`` applied to ``vectors`` of shape ``(K, out, in + has_bias)``.

        The rotations run in the dtype of ``vectors`` (the float64 bases cast to it).
        """
        rotate_g, rotate_a = self.eigvecs_grads.to(vectors.dtype), self.eigvecs_inputs.to(vectors.dtype)
        rotated = rotate_g.T @ vectors
        inner = rotated @ rotate_a
        scaled = inner / (self.eigenvalues + damping).to(vectors.dtype)
        if self.residual is None:
            return rotate_g @ (scaled @ rotate_a.T)
        # P x / (r + damping) + U_A (scaled) with P = I - U_A U_A^T, in one product with U_A^T.
        outside_scale = 1.0 / (self.residual + damping).to(vectors.dtype)[:, None]
        solved = rotated * outside_scale + (scaled - inner * outside_scale) @ rotate_a.T
        return rotate_g @ solved

    def split_inverse(self, projected: Tensor, damping: float) -> tuple[Tensor, Tensor]:
        """``inverse`` of a truncated basis as ``(W, M)`` with ``inverse(V) = W V + M U_A^T``.

        ``W = U_G diag(1 / (residual + damping)) U_G^T`` and ``M = U_G (S - D U_G^T V U_A)`` with
        ``S`` the kept directions' scaled coordinates, from ``projected = V U_A`` alone, so no
        ``(K, out, in)`` array is rotated (``_factored_queries`` keeps ``V`` as validation rows).

        Args:
            projected: ``V U_A``, shape ``(K, out, k)``.
            damping: ``lambda``.

        Returns:
            ``W`` of shape ``(out, out)`` and ``M`` of shape ``(K, out, k)``, in the dtype of ``projected``.

        Raises:
            ValueError: If the basis is not truncated.
        """
        if self.residual is None:
            raise ValueError("split_inverse needs a truncated input basis")
        rotate_g = self.eigvecs_grads.to(projected.dtype)
        outside_scale = 1.0 / (self.residual + damping).to(projected.dtype)
        inner = rotate_g.T @ projected
        scaled = inner / (self.eigenvalues + damping).to(projected.dtype)
        return (rotate_g * outside_scale) @ rotate_g.T, rotate_g @ (scaled - inner * outside_scale[:, None])


class KroneckerCurvature(Curvature):
    """K-FAC or EKFAC: a block-diagonal curvature, one Kronecker-factored block per tracked layer.

    Args:
        kind: ``"kfac"`` or ``"ekfac"``.
        tracked: Qualified layer name -> tracked layer, in model order.
        layers: Layer name -> ``KroneckerFactors`` (float64, on the model's device).
        damping: ``lambda >= 0`` added to every eigenvalue, or ``None`` for the default.
        fisher: ``"empirical"`` or ``"sampled"``.
    """

    def __init__(
        self,
        kind: str,
        tracked: Mapping[str, nn.Module],
        layers: Mapping[str, KroneckerFactors],
        damping: float | None,
        fisher: str,
    ) -> None:
        self.kind = kind
        self.tracked = dict(tracked)
        self.layers = dict(layers)
        self.fisher = fisher
        eigenvalues = torch.cat(
            [
                torch.cat(
                    [
                        layer.eigenvalues.flatten(),
                        layer.residual if layer.residual is not None else layer.eigenvalues[:0, 0],
                    ]
                )
                for layer in self.layers.values()
            ]
        )
        self.largest_eigenvalue = float(eigenvalues.max())
        resolved = resolve_damping(damping, self.largest_eigenvalue)
        smallest, largest = float(eigenvalues.min()) + resolved, float(eigenvalues.max()) + resolved
        if smallest <= SINGULAR_RATIO * max(largest, 0.0):
            resolved = more_damping(resolved, self.largest_eigenvalue, f"{kind} curvature has a zero damped eigenvalue")
        self.damping = resolved

    def inverse_hvp(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Apply ``(G + damping I)^{-1}`` block-wise: rotate into the eigenbasis, divide, rotate back.

        See ``Curvature.inverse_hvp``. The rotations run in the dtype of ``grads`` (the float64
        eigenbases cast to it): float32 vectors get float32 matmuls, float64 vectors float64 ones.
        """
        check_layers(self.tracked, grads)
        return {name: layer.inverse(grads[name], self.damping) for name, layer in self.layers.items()}

    def with_damping(self, damping: float | None) -> KroneckerCurvature:
        """See ``Curvature.with_damping``."""
        return KroneckerCurvature(self.kind, self.tracked, self.layers, damping, self.fisher)
