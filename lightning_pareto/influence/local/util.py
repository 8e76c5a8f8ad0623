"""FI^util for data trimming: the local influence measure of "Enhancing Prediction Performance through Influence Measure".

FI perturbs a training input ``x -> x + omega``, lets the parameters follow
(``d theta / d omega = -(1/n) H^{-1} J(z)``, ``J(z) = d/dx d/dtheta L(y, x; theta)``, appendix A
eq. A.7) and measures the change of a validation objective in the Riemannian metric ``G_z`` of
the perturbation manifold:

``FI(z', z) = v^T G_z^+ v``, ``v = d/domega L(z'; theta(x + omega)) = -(1/n) J(z)^T H^{-1} g'``,

``G_z = sum_c P(c|x) a_c a_c^T``, ``a_c = -(1/n) J(z)^T H^{-1} d/dtheta log P(c|x) + d/dx log P(c|x)``.

FI^util (eq. 3.1) takes ``g'`` = the gradient of the mean validation loss. Nothing of size
``p x d`` or ``d x d`` is formed: ``q = H^{-1} g'`` is solved once, ``J^T q`` products come from a
closed form (softmax-linear scope) or ``torch.func`` (any scope), and ``G_z`` (rank < K) is
handled through an SVD of the ``K x d`` matrix ``diag(sqrt P) A`` (see ``_whitening``). The
``1/n`` factors of the paper are kept: they set the balance between the parameter path and the
direct input path of ``a_c``.

"x" is the input of the *scope*: the model's input (``modules=None``, the paper's tabular case)
or the input of the submodule producing the logits (``modules=["head"]``: the penultimate
features, captured by a forward hook, so any ``nn.Module`` works). ``theta`` is the weights and
biases of the Linear/Conv2d layers inside the scope.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from lightning_pareto._modes import eval_mode
from lightning_pareto.influence._passes import model_device
from lightning_pareto.influence._timings import InfluenceTimings, timed
from lightning_pareto.influence.local._data import ScopeInputs, chunk_size, collect
from lightning_pareto.influence.local._operator import FIOperator
from lightning_pareto.influence.local._options import check_alpha, check_approx, check_curvature, check_rank
from lightning_pareto.influence.local._preconditioner import prepare_training_set
from lightning_pareto.influence.local._scope import resolve_scope
from lightning_pareto.influence.local._whitening import factor_chunks, quadratic_form
from lightning_pareto.influence.local.subsample import choose_subsample, forest_rank_scores

__all__ = ["fi_util"]


def fi_util(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    curvature: Literal["exact", "kfac", "ekfac"] | None = None,
    damping: float | None = None,
    modules: Sequence[str] | None = None,
    approx: str | Sequence[str] | None = None,
    rank: int | None = None,
    alpha: float | None = None,
    seed: int = 0,
    svd_tol: float = 1e-6,
    progress: bool | None = None,
    timings: InfluenceTimings | None = None,
) -> torch.Tensor:
    """FI^util of every training sample (eq. 3.1 / Algorithm 1 of "Enhancing Prediction Performance through Influence Measure"): large = remove first.

    Args:
        model: Classifier whose output is logits ``(batch, K)``, ``K >= 2``, trained with
            cross-entropy. It is evaluated in eval mode (its mode is restored afterwards).
        train_loader: Training data, batches ``(x, y, index)`` or ``(x, y)``; with ``(x, y)`` the
            rows of the result follow loader order, which must then not shuffle.
        val_loader: Validation data; its mean cross-entropy is the objective whose sensitivity is measured.
        curvature: ``H`` of the mean training loss over the tracked parameters: ``"exact"`` (dense
            Hessian, equal to the GGN for a softmax-linear scope; pseudo-inverse when
            ``damping`` is ``None``), ``"kfac"`` or ``"ekfac"`` (the curvature engine). ``None``:
            ``"kfac"`` with ``approx`` containing ``"kfsvd"`` (Algorithm 5), else ``"exact"``.
        damping: Added to the curvature's diagonal; ``None``: pseudo-inverse for ``"exact"``,
            the engine's default for K-FAC/EKFAC.
        modules: ``None`` to perturb the model's input, or ``[name]`` of the submodule producing
            the logits (e.g. ``["head"]``) to perturb its input (the penultimate features) and
            differentiate its parameters only.
        approx: ``None`` (exact), ``"kfsvd"`` (rank-``rank`` truncated SVD of each ``J(z)`` by
            subspace iteration, Algorithm 5), ``"subsample"`` (FI on a fraction ``alpha``, a random
            forest from ``[x, one-hot y]`` to FI rank for the rest, Algorithm 6), or both as a list.
        rank: ``k`` of KFSVD, an int ``>= 1`` (clipped to ``min(p, d)``, which is exact); only with ``"kfsvd"``.
        alpha: Fraction in ``(0, 1]`` scored exactly with ``"subsample"`` (default 0.2).
        seed: Seeds the subsample, the forest and KFSVD's random start.
        svd_tol: Singular values of ``diag(sqrt P) A`` at or below ``svd_tol`` times the largest
            are treated as zero in ``G_z^+``.
        progress: Progress bars: ``True``, ``False`` or ``None`` (only when stderr is a terminal).
        timings: Filled with the seconds of the ``collect``, curvature (``factors``, ``eigen``,
            ``correction``), ``queries``, ``precondition``, ``scores`` and ``forest`` phases.

    Returns:
        Float64 tensor of shape ``(len(train_loader.dataset),)`` when batches carry indices (row
        ``i`` = dataset index ``i``, NaN for indices the loader never yielded), else ``(n,)`` in
        loader order. Exact and KFSVD results are FI values (``>= 0``); with ``"subsample"`` they
        are rank scores in ``[0, 1]`` (computed samples: their FI rank quantile; others: the
        forest's prediction); only the order is meaningful.

    Raises:
        ValueError: On an unknown ``curvature`` or ``approx``, ``rank < 1``, ``alpha`` outside
            ``(0, 1]``, ``svd_tol`` outside ``[0, 1)``, negative ``damping``, a bad ``modules``
            name, or loaders without labels.
        TypeError: On arguments of the wrong type.
    """
    approximations = check_approx(approx)
    check_rank(rank, approximations)
    alpha = check_alpha(alpha, approximations)
    kind = check_curvature(curvature, damping, svd_tol, approximations)
    scope = resolve_scope(model, modules)
    device = model_device(model)
    with eval_mode(model):
        train, operator, preconditioner = prepare_training_set(
            kind, model, scope, train_loader, damping, progress=progress, timings=timings
        )
        with timed(timings, "collect", device):
            val = collect(model, scope, val_loader)
        with timed(timings, "queries", device):
            val_gradient = _summed_loss_gradient(operator, val) / len(val)
        with timed(timings, "precondition", device):
            val_query = preconditioner.apply(val_gradient[None])[0]
        with timed(timings, "scores", device):
            chosen = (
                choose_subsample(len(train), alpha, seed) if "subsample" in approximations else np.arange(len(train))
            )
            parts = []
            for x, y, jacobian, whitened in factor_chunks(
                operator,
                preconditioner,
                train,
                torch.as_tensor(chosen),
                rank,
                seed,
                svd_tol,
                progress,
                "FI^util: scores",
            ):
                sensitivity = -jacobian.jt(x, y, val_query.expand(len(x), 1, -1))[:, 0] / len(train)
                parts.append(quadratic_form(whitened, sensitivity))
            values = torch.cat(parts).cpu()
    if not bool(torch.isfinite(values).all()):
        count = int((~torch.isfinite(values)).sum())
        warnings.warn(f"FI^util is not finite for {count} samples", RuntimeWarning, stacklevel=2)
    if "subsample" in approximations:
        with timed(timings, "forest", torch.device("cpu")):
            labels = nn.functional.one_hot(train.y.cpu(), train.num_classes).to(torch.float64)
            features = torch.cat([train.x.cpu(), labels], dim=1)
            values = torch.from_numpy(forest_rank_scores(features.numpy(), chosen, values.numpy(), seed))
    return _place_rows(values, train.index, train_loader)


def _summed_loss_gradient(operator: FIOperator, data: ScopeInputs) -> torch.Tensor:
    chunk = chunk_size(operator.num_params, data)
    starts = range(0, len(data), chunk)
    return sum(operator.loss_grads(data.x[s : s + chunk], data.y[s : s + chunk]).sum(0) for s in starts)


def _place_rows(values: torch.Tensor, index: torch.Tensor | None, loader: Iterable) -> torch.Tensor:
    if index is None:
        return values
    if len(torch.unique(index)) != len(index) or int(index.min()) < 0:
        raise ValueError("the training loader yielded repeated or negative sample indices; iterate each sample once")
    dataset = getattr(loader, "dataset", None)
    size = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else int(index.max()) + 1
    if int(index.max()) >= size:
        raise ValueError(f"sample index {int(index.max())} is out of range for a dataset of {size} samples")
    placed = torch.full((size,), math.nan, dtype=values.dtype)
    placed[index] = values
    return placed
