"""Inverse curvature ``H^{-1}`` applied to FI's flat parameter vectors.

``"exact"`` builds the dense Hessian of the mean training loss over the tracked parameters through
the scope's derivative operator and inverts it with the engine's one dense path (``exact.DenseInverse``):
with ``damping=None`` as a pseudo-inverse (a K-logit softmax always has the null space of adding one
vector to every class row, and every gradient FI uses is orthogonal to it, so this is the inverse on
the identifiable parameters), with ``damping`` as ``(H + damping I)^{-1}``. ``"kfac"``/``"ekfac"``
delegate to the category-wise engine's ``fit_curvature(...).inverse_hvp``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn

from lightning_pareto.influence._base import Curvature
from lightning_pareto.influence._layout import flatten_layout, unflatten_layout
from lightning_pareto.influence._passes import model_device
from lightning_pareto.influence._progress import progress_bar
from lightning_pareto.influence._timings import InfluenceTimings, timed
from lightning_pareto.influence.curvature import fit_curvature
from lightning_pareto.influence.exact import MAX_EXACT_PARAMETERS, DenseInverse
from lightning_pareto.influence.local._data import ScopeInputs, chunk_size, collect
from lightning_pareto.influence.local._operator import FIOperator, make_operator
from lightning_pareto.influence.local._scope import Scope


class Preconditioner(Protocol):
    """Applies the (damped, pseudo-) inverse curvature to flat vectors ``(m, p)`` -> ``(m, p)``."""

    def apply(self, vectors: torch.Tensor) -> torch.Tensor: ...


class EngineInverse:
    """The category-wise engine's K-FAC/EKFAC inverse, on FI's flat layout.

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

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """The engine's inverse applied to each row of ``vectors`` ``(m, p)``, in float64."""
        tracked = self.scope.tracked
        return flatten_layout(tracked, self.curvature.inverse_hvp(unflatten_layout(tracked, vectors)))


def prepare_training_set(
    kind: str,
    model: nn.Module,
    scope: Scope,
    train_loader: Iterable,
    damping: float | None,
    *,
    parameter_path: bool = True,
    progress: bool | None,
    timings: InfluenceTimings | None,
) -> tuple[ScopeInputs, FIOperator, Preconditioner | None]:
    """The training set's scope inputs, the scope's derivative operator and ``H^{-1}``; call in ``eval_mode``.

    Args:
        kind: ``"exact"``, ``"kfac"`` or ``"ekfac"``.
        model: The whole model.
        scope: The perturbed module.
        train_loader: The training loader.
        damping: As in ``fit_preconditioner``.
        parameter_path: ``False``: no curvature is fitted (``None`` in its place).
        progress: Progress bars: ``True``, ``False`` or ``None`` (only when stderr is a terminal).
        timings: Filled with the ``collect`` and curvature phases.
    """
    device = model_device(model)
    with timed(timings, "collect", device):
        train = collect(model, scope, train_loader)
    operator = make_operator(scope, train.sample_shape, train.linear_equivalent)
    if not parameter_path:
        return train, operator, None
    preconditioner = fit_preconditioner(
        kind,
        operator,
        model,
        train_loader,
        train,
        scope,
        damping,
        chunk_size=chunk_size(operator.num_params, train),
        progress=progress,
        timings=timings,
    )
    return train, operator, preconditioner


def fit_preconditioner(
    kind: str,
    operator: FIOperator,
    model: nn.Module,
    train_loader: Iterable,
    train: ScopeInputs,
    scope: Scope,
    damping: float | None,
    *,
    chunk_size: int,
    progress: bool | None,
    timings: InfluenceTimings | None,
) -> Preconditioner:
    """``H^{-1}`` of the mean training loss over the scope's tracked parameters.

    Args:
        kind: ``"exact"``, ``"kfac"`` or ``"ekfac"``.
        operator: Derivatives of the scope (the exact Hessian's source).
        model: The whole model (K-FAC/EKFAC run their passes over it).
        train_loader: The training loader (K-FAC/EKFAC).
        train: The collected training inputs and labels (exact).
        scope: The layout.
        damping: ``None``: pseudo-inverse (exact) or the engine's default damping (K-FAC/EKFAC).
        chunk_size: Samples per Hessian evaluation (exact).
        progress: Progress bars: ``True``, ``False`` or ``None`` (only when stderr is a terminal).
        timings: Filled with the ``factors`` and ``eigen`` (and for EKFAC ``correction``) phases.

    Raises:
        ValueError: If an exact Hessian would have more than ``MAX_EXACT_PARAMETERS`` rows.
    """
    if kind != "exact":
        curvature = fit_curvature(
            model,
            train_loader,
            curvature=kind,
            damping=damping,
            modules=list(scope.tracked),
            progress=progress,
            timings=timings,
        )
        return EngineInverse(curvature, scope)
    p = operator.num_params
    if p > MAX_EXACT_PARAMETERS:
        raise ValueError(
            f"curvature='exact' would build a dense {p} x {p} Hessian (more than MAX_EXACT_PARAMETERS="
            f"{MAX_EXACT_PARAMETERS}); use curvature='kfac' or 'ekfac', or restrict FI to the last layer "
            "with modules=['head']"
        )
    device = train.x.device
    with timed(timings, "factors", device):
        total = torch.zeros(p, p, dtype=torch.float64, device=device)
        starts = range(0, len(train), chunk_size)
        for start in progress_bar(starts, desc="FI: exact Hessian", enabled=progress):
            total += operator.hessian_sum(train.x[start : start + chunk_size], train.y[start : start + chunk_size])
    with timed(timings, "eigen", device):
        inverse = DenseInverse(total / len(train), damping)
    if inverse.negative_eigenvalues:
        warnings.warn(
            "the (damped) training-loss Hessian has negative eigenvalues (the model is not at a minimum); "
            "FI's parameter response assumes one: train further or pass a larger damping",
            RuntimeWarning,
            stacklevel=3,
        )
    return inverse
