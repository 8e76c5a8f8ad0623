"""Inverse curvature ``H^{-1}`` applied to flat parameter vectors, for FI.

``"exact"`` builds the dense Hessian of the mean training loss over the tracked parameters and
inverts it through an eigendecomposition in float64: with ``damping=None`` as a pseudo-inverse
(eigenvalues with ``|lambda| <= p * eps * max |lambda|`` dropped; a K-logit softmax always has the
null space of adding one vector to every class row, and every gradient FI uses is orthogonal to
it, so this is the inverse on the identifiable parameters), with ``damping`` as
``(H + damping I)^{-1}``. ``"kfac"``/``"ekfac"`` delegate to the curvature engine's
``fit_curvature(...).inverse_hvp``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn

from lightning_pareto.influence._fi_data import ScopeInputs
from lightning_pareto.influence._fi_operator import FIOperator
from lightning_pareto.influence._fi_scope import Scope
from lightning_pareto.influence._layout import flatten_layout, unflatten_layout
from lightning_pareto.influence.curvature import MAX_EXACT_PARAMETERS, Curvature, fit_curvature


class Preconditioner(Protocol):
    """Applies the (damped, pseudo-) inverse curvature to flat vectors ``(m, p)`` -> ``(m, p)``."""

    def apply(self, vectors: torch.Tensor) -> torch.Tensor: ...


class DenseInverse:
    """Exact inverse of the dense Hessian of the mean training loss.

    Args:
        hessian: Mean Hessian ``(p, p)``, float64.
        damping: ``None`` for the pseudo-inverse, else a non-negative value added to the diagonal.
    """

    def __init__(self, hessian: torch.Tensor, damping: float | None) -> None:
        hessian = 0.5 * (hessian + hessian.T)
        eigenvalues, self.eigenvectors = torch.linalg.eigh(hessian)
        scale = eigenvalues.abs().max().clamp_min(torch.finfo(hessian.dtype).tiny)
        tolerance = hessian.shape[0] * torch.finfo(hessian.dtype).eps * scale
        shifted = eigenvalues + (damping or 0.0)
        if bool((shifted < -tolerance).any()):
            warnings.warn(
                "the (damped) training-loss Hessian has negative eigenvalues (the model is not at a minimum); "
                "FI's parameter response assumes one: train further or pass a larger damping",
                RuntimeWarning,
                stacklevel=3,
            )
        self.inverse_eigenvalues = torch.where(shifted.abs() > tolerance, 1.0 / shifted, torch.zeros_like(shifted))

    @classmethod
    def fit(cls, operator: FIOperator, train: ScopeInputs, damping: float | None, chunk_size: int) -> DenseInverse:
        """Accumulate the mean Hessian over the training inputs and invert it.

        Args:
            operator: Derivatives of the scope.
            train: Training inputs and labels.
            damping: See the class.
            chunk_size: Samples per Hessian evaluation.

        Returns:
            The fitted inverse.

        Raises:
            ValueError: If ``p`` exceeds the engine's ``MAX_EXACT_PARAMETERS``.
        """
        p = operator.num_params
        if p > MAX_EXACT_PARAMETERS:
            raise ValueError(
                f"curvature='exact' would build a dense {p} x {p} Hessian (more than MAX_EXACT_PARAMETERS="
                f"{MAX_EXACT_PARAMETERS}); use curvature='kfac' or 'ekfac', or restrict FI to the last layer "
                "with modules=['head']"
            )
        total = torch.zeros(p, p, dtype=torch.float64, device=train.x.device)
        for start in range(0, len(train), chunk_size):
            total += operator.hessian_sum(train.x[start : start + chunk_size], train.y[start : start + chunk_size])
        return cls(total / len(train), damping)

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H^{-1}`` (or ``H^+``) applied to each row of ``vectors`` ``(m, p)``."""
        rotated = vectors @ self.eigenvectors
        return (rotated * self.inverse_eigenvalues) @ self.eigenvectors.T


class EngineInverse:
    """The curvature engine's K-FAC/EKFAC inverse, on FI's flat layout.

    Args:
        curvature: A fitted engine curvature.
        scope: The layout; its tracked layers must match ``curvature.tracked``.

    Raises:
        ValueError: If the engine tracks different layers.
    """

    def __init__(self, curvature: Curvature, scope: Scope) -> None:
        if list(curvature.tracked) != list(scope.tracked):
            raise ValueError(f"the curvature engine tracked {list(curvature.tracked)}, FI needs {list(scope.tracked)}")
        self.curvature = curvature
        self.scope = scope

    @classmethod
    def fit(
        cls, kind: str, model: nn.Module, train_loader: Iterable, scope: Scope, damping: float | None
    ) -> EngineInverse:
        """Fit K-FAC or EKFAC on the training loader for the scope's tracked layers.

        Args:
            kind: ``"kfac"`` or ``"ekfac"``.
            model: The whole model.
            train_loader: The training loader.
            scope: The layout.
            damping: Passed to the engine (``None``: its default).

        Returns:
            The wrapped inverse.
        """
        curvature = fit_curvature(model, train_loader, curvature=kind, damping=damping, modules=list(scope.tracked))
        return cls(curvature, scope)

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """The engine's inverse applied to each row of ``vectors`` ``(m, p)``, in float64."""
        tracked = self.scope.tracked
        return flatten_layout(tracked, self.curvature.inverse_hvp(unflatten_layout(tracked, vectors)))
