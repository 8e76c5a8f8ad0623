"""Seed 000's local influence measure FI: FI^util for data trimming and the FI^active building blocks.

FI perturbs a training input ``x -> x + omega``, lets the parameters follow
(``d theta / d omega = -(1/n) H^{-1} J(z)``, ``J(z) = d/dx d/dtheta L(y, x; theta)``, appendix A
eq. A.7) and measures the change of a validation objective in the Riemannian metric ``G_z`` of
the perturbation manifold:

``FI(z', z) = v^T G_z^+ v``, ``v = d/domega L(z'; theta(x + omega)) = -(1/n) J(z)^T H^{-1} g'``,

``G_z = sum_c P(c|x) a_c a_c^T``, ``a_c = -(1/n) J(z)^T H^{-1} d/dtheta log P(c|x) + d/dx log P(c|x)``.

FI^util (eq. 3.1) takes ``g'`` = the gradient of the mean validation loss. Nothing of size
``p x d`` or ``d x d`` is formed: ``q = H^{-1} g'`` is solved once, ``J^T q`` products come from a
closed form (softmax-linear scope) or ``torch.func`` (any scope), and ``G_z`` (rank < K) is
handled through an SVD of the ``K x d`` matrix ``diag(sqrt P) A`` (see ``_fi_metric``). The
``1/n`` factors of the paper are kept: they set the balance between the parameter path and the
direct input path of ``a_c``.

"x" is the input of the *scope*: the model's input (``modules=None``, the paper's tabular case)
or the input of the submodule producing the logits (``modules=["head"]``: the penultimate
features, captured by a forward hook, so any ``nn.Module`` works). ``theta`` is the weights and
biases of the Linear/Conv2d layers inside the scope.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from lightning_pareto.influence._fi_curvature import DenseInverse, EngineInverse, Preconditioner
from lightning_pareto.influence._fi_data import ScopeInputs, collect
from lightning_pareto.influence._fi_kfsvd import LowRankJacobian
from lightning_pareto.influence._fi_metric import quadratic_form, whitened_factor
from lightning_pareto.influence._fi_operator import FIOperator, JacobianProducts, make_operator
from lightning_pareto.influence._fi_scope import Scope, resolve_scope
from lightning_pareto.influence._fi_subsample import choose_subsample, forest_rank_scores

__all__ = ["MetricFactors", "fi_util", "metric_factors", "pairwise_fi", "query_gradients"]

_CURVATURES = ("exact", "kfac", "ekfac")
_APPROXIMATIONS = ("kfsvd", "subsample")
# Samples per batched step: about this many float64 entries in the per-sample (K, p) blocks.
_CHUNK_ENTRIES = 1 << 22

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MetricFactors:
    """Per-training-sample factors of the metric tensor, the building block of FI^active.

    For training sample ``j`` and any query gradient ``g`` (``d/dtheta`` of a loss at a query point),
    ``FI(query, z_j) = ||param_rows[j] @ g||^2``, so (query, training sample) pairs reduce to one
    batched matmul (:func:`pairwise_fi`).

    Attributes:
        whitened: ``W_j`` of shape ``(n, r, d)`` float64, ``r = min(K, d)``, with
            ``G_{z_j}^+ = W_j^T W_j`` (zero rows for dropped singular values).
        param_rows: ``-(1/n) W_j J_j^T H^{-1}`` of shape ``(n, r, p)`` float64, in the flat layout of
            :func:`query_gradients`; ``None`` when built with ``parameter_path=False``.
        index: ``(n,)`` int64: dataset index of each row when the loader yields indices, else
            the row's position in the loader.
        num_train: ``n``, the training-set size of the ``1/n`` factors.
    """

    whitened: torch.Tensor
    param_rows: torch.Tensor | None
    index: torch.Tensor
    num_train: int


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
    progress: Progress | None = None,
    timings: dict[str, float] | None = None,
) -> torch.Tensor:
    """FI^util of every training sample (seed 000, eq. 3.1 / Algorithm 1): large = remove first.

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
        progress: Called as ``progress(done, total)`` after each scored chunk of training samples.
        timings: If given, filled with seconds spent in ``"collect"``, ``"curvature"``, ``"scores"``
            and ``"forest"``.

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
    approximations = _check_approx(approx)
    _check_rank(rank, approximations)
    alpha = _check_alpha(alpha, approximations)
    kind = _check_common(curvature, damping, svd_tol, approximations)
    timings = {} if timings is None else timings
    scope = resolve_scope(model, modules)
    with _eval_mode(model):
        started = time.perf_counter()
        train = collect(model, scope, train_loader)
        val = collect(model, scope, val_loader)
        timings["collect"] = time.perf_counter() - started
        operator = make_operator(scope, train.sample_shape, train.linear_equivalent)
        started = time.perf_counter()
        preconditioner = _fit_preconditioner(kind, operator, model, train_loader, train, scope, damping)
        val_gradient = _summed_loss_gradient(operator, val) / len(val)
        val_query = preconditioner.apply(val_gradient[None])[0]
        timings["curvature"] = time.perf_counter() - started

        started = time.perf_counter()
        chosen = choose_subsample(len(train), alpha, seed) if "subsample" in approximations else np.arange(len(train))
        parts = []
        for x, y, jacobian, whitened in _factor_chunks(
            operator, preconditioner, train, torch.as_tensor(chosen), rank, seed, svd_tol, progress
        ):
            sensitivity = -jacobian.jt(x, y, val_query.expand(len(x), 1, -1))[:, 0] / len(train)
            parts.append(quadratic_form(whitened, sensitivity))
        values = torch.cat(parts)
        timings["scores"] = time.perf_counter() - started

    started = time.perf_counter()
    values = values.cpu()
    if not bool(torch.isfinite(values).all()):
        count = int((~torch.isfinite(values)).sum())
        warnings.warn(f"FI^util is not finite for {count} samples", RuntimeWarning, stacklevel=2)
    if "subsample" in approximations:
        labels = nn.functional.one_hot(train.y.cpu(), train.num_classes).to(torch.float64)
        features = torch.cat([train.x.cpu(), labels], dim=1)
        scores = torch.from_numpy(forest_rank_scores(features.numpy(), chosen, values.numpy(), seed))
    else:
        scores = values
    timings["forest"] = time.perf_counter() - started
    return _place_rows(scores, train.index, train_loader)


def metric_factors(
    model: nn.Module,
    train_loader: Iterable,
    *,
    curvature: Literal["exact", "kfac", "ekfac"] | None = None,
    damping: float | None = None,
    modules: Sequence[str] | None = None,
    approx: Literal["kfsvd"] | None = None,
    rank: int | None = None,
    seed: int = 0,
    svd_tol: float = 1e-6,
    parameter_path: bool = True,
    progress: Progress | None = None,
) -> MetricFactors:
    """Per-training-sample factors of ``G_z`` and of the parameter response, for FI^active (eq. 4.1).

    ``FI(z', z_j) = ||param_rows[j] @ g'||^2`` for the loss gradient ``g'`` of any query point
    ``z'`` (see :func:`query_gradients`, :func:`pairwise_fi`). Costs ``r`` extra ``J v`` products
    and ``r`` inverse-curvature products per training sample beyond FI^util.

    Args:
        model: As in :func:`fi_util`.
        train_loader: The training (labelled) set defining ``H``, ``n`` and the factors.
        curvature: As in :func:`fi_util`.
        damping: As in :func:`fi_util`.
        modules: As in :func:`fi_util`.
        approx: ``None`` or ``"kfsvd"`` (low-rank ``J``, Algorithm 7).
        rank: ``k`` of KFSVD (only with ``approx="kfsvd"``).
        seed: Seeds KFSVD's random start.
        svd_tol: As in :func:`fi_util`.
        parameter_path: ``False`` drops the ``-(1/n) J^T H^{-1}`` term from ``a_c`` (the fixed-model
            metric of Shu & Zhu 2019, for which ``FI`` of ``log P(y|x)`` is ``(1 - p_y) / p_y``);
            then no curvature is fitted and ``param_rows`` is ``None``.
        progress: Called as ``progress(done, total)`` after each chunk.

    Returns:
        The :class:`MetricFactors`, rows in loader order.

    Raises:
        ValueError: As :func:`fi_util`, and for ``approx="subsample"`` (subsample the query pool instead).
    """
    approximations = _check_approx(approx)
    if "subsample" in approximations:
        raise ValueError("metric_factors supports approx=None or 'kfsvd'; subsample the query pool instead")
    _check_rank(rank, approximations)
    kind = _check_common(curvature, damping, svd_tol, approximations)
    scope = resolve_scope(model, modules)
    with _eval_mode(model):
        train = collect(model, scope, train_loader)
        operator = make_operator(scope, train.sample_shape, train.linear_equivalent)
        preconditioner = None
        if parameter_path:
            preconditioner = _fit_preconditioner(kind, operator, model, train_loader, train, scope, damping)
        whitened_parts, row_parts = [], []
        for x, y, jacobian, whitened in _factor_chunks(
            operator, preconditioner, train, torch.arange(len(train)), rank, seed, svd_tol, progress
        ):
            whitened_parts.append(whitened.cpu())
            if preconditioner is not None:
                b, r, _ = whitened.shape
                # param_rows_j = -(1/n) (H^{-1} J_j W_j^T)^T, H^{-1} being symmetric.
                pushed = jacobian.jv(x, y, whitened).reshape(b * r, -1)
                row_parts.append((-preconditioner.apply(pushed) / len(train)).reshape(b, r, -1).cpu())
    index = train.index if train.index is not None else torch.arange(len(train))
    param_rows = torch.cat(row_parts) if row_parts else None
    return MetricFactors(torch.cat(whitened_parts), param_rows, index, len(train))


def query_gradients(
    model: nn.Module,
    loader: Iterable,
    *,
    modules: Sequence[str] | None = None,
    labels: Literal["predicted", "observed"] = "predicted",
) -> torch.Tensor:
    """Loss gradients of query points in FI's flat parameter layout (the ``g'`` of FI^active).

    Args:
        model: As in :func:`fi_util`.
        loader: Query points; batches ``x``, ``(x, y)`` or ``(x, y, index)``.
        modules: The same scope as the :class:`MetricFactors` they are paired with.
        labels: ``"predicted"``: the loss at the model's predicted label (Algorithm 2, for
            unlabelled points; ``y`` is ignored); ``"observed"``: at the loader's labels.

    Returns:
        Float64 tensor ``(m, p)``, rows in loader order.

    Raises:
        ValueError: On an unknown ``labels`` or, with ``"observed"``, batches without labels.
    """
    if labels not in ("predicted", "observed"):
        raise ValueError(f"labels must be 'predicted' or 'observed', got {labels!r}")
    scope = resolve_scope(model, modules)
    with _eval_mode(model):
        queries = collect(model, scope, loader, need_labels=labels == "observed")
        operator = make_operator(scope, queries.sample_shape, queries.linear_equivalent)
        chunk = _chunk_size(operator.num_params, queries)
        parts = []
        for start in range(0, len(queries), chunk):
            x = queries.x[start : start + chunk]
            y = operator.probs(x).argmax(-1) if labels == "predicted" else queries.y[start : start + chunk]
            parts.append(operator.loss_grads(x, y).cpu())
    return torch.cat(parts)


def pairwise_fi(factors: MetricFactors, gradients: torch.Tensor, *, chunk_size: int = 1024) -> torch.Tensor:
    """``FI(z'_u, z_j)`` for every query ``u`` and training sample ``j`` (Algorithm 2's inner loop).

    Args:
        factors: From :func:`metric_factors` with ``parameter_path=True``.
        gradients: Query gradients ``(m, p)`` from :func:`query_gradients` (same model and scope).
        chunk_size: Queries per matmul (bounds memory at ``n * r * chunk_size`` entries).

    Returns:
        Float64 tensor ``(m, n)``; column ``j`` is training row ``j`` of ``factors`` (dataset index
        ``factors.index[j]``).

    Raises:
        ValueError: If the factors have no parameter rows or the widths differ.
    """
    if factors.param_rows is None:
        raise ValueError("pairwise_fi needs metric_factors(..., parameter_path=True)")
    n, r, p = factors.param_rows.shape
    if gradients.ndim != 2 or gradients.shape[1] != p:
        raise ValueError(f"gradients must have shape (m, {p}) in the factors' layout, got {tuple(gradients.shape)}")
    rows = factors.param_rows.reshape(n * r, p)
    parts = []
    for start in range(0, len(gradients), chunk_size):
        projected = rows @ gradients[start : start + chunk_size].to(rows).T
        parts.append(projected.reshape(n, r, -1).square().sum(1).T)
    return torch.cat(parts) if parts else torch.empty(0, n, dtype=rows.dtype)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


def _factor_chunks(
    operator: FIOperator,
    preconditioner: Preconditioner | None,
    train: ScopeInputs,
    rows: torch.Tensor,
    rank: int | None,
    seed: int,
    svd_tol: float,
    progress: Progress | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, JacobianProducts, torch.Tensor]]:
    """Chunks of the given training rows with their ``J`` products (exact or KFSVD) and ``W`` factors."""
    generator = torch.Generator().manual_seed(seed)
    chunk = _chunk_size(operator.num_params, train)
    rows = rows.to(train.x.device)
    for start in range(0, len(rows), chunk):
        x, y = train.x[rows[start : start + chunk]], train.y[rows[start : start + chunk]]
        jacobian = LowRankJacobian.fit(operator, x, y, rank, generator) if rank is not None else operator
        yield x, y, jacobian, whitened_factor(operator, jacobian, preconditioner, x, y, len(train), svd_tol)
        if progress is not None:
            progress(min(start + chunk, len(rows)), len(rows))


def _fit_preconditioner(
    kind: str,
    operator: FIOperator,
    model: nn.Module,
    train_loader: Iterable,
    train: ScopeInputs,
    scope: Scope,
    damping: float | None,
) -> Preconditioner:
    if kind == "exact":
        return DenseInverse.fit(operator, train, damping, _chunk_size(operator.num_params, train))
    return EngineInverse.fit(kind, model, train_loader, scope, damping)


def _summed_loss_gradient(operator: FIOperator, data: ScopeInputs) -> torch.Tensor:
    chunk = _chunk_size(operator.num_params, data)
    starts = range(0, len(data), chunk)
    return sum(operator.loss_grads(data.x[s : s + chunk], data.y[s : s + chunk]).sum(0) for s in starts)


def _chunk_size(num_params: int, data: ScopeInputs) -> int:
    width = data.num_classes * max(num_params, data.x.shape[1])
    return max(1, min(1024, _CHUNK_ENTRIES // width))


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


def _check_approx(approx: str | Sequence[str] | None) -> frozenset[str]:
    if approx is None:
        return frozenset()
    names = [approx] if isinstance(approx, str) else list(approx)
    unknown = [name for name in names if name not in _APPROXIMATIONS]
    if unknown or not all(isinstance(name, str) for name in names):
        raise ValueError(f"approx must be None, 'kfsvd', 'subsample' or a list of them, got {approx!r}")
    return frozenset(names)


def _check_rank(rank: int | None, approximations: frozenset[str]) -> None:
    if "kfsvd" not in approximations:
        if rank is not None:
            raise ValueError("rank is the truncated-SVD rank of approx='kfsvd'; pass approx='kfsvd' or drop rank")
        return
    if rank is None:
        raise ValueError("approx='kfsvd' needs rank=k, an int >= 1 (the truncated-SVD rank of J)")
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int >= 1, got {rank!r}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")


def _check_alpha(alpha: float | None, approximations: frozenset[str]) -> float:
    if "subsample" not in approximations:
        if alpha is not None:
            raise ValueError(
                "alpha is the subsampling fraction of approx='subsample'; pass approx='subsample' or drop alpha"
            )
        return 1.0
    alpha = 0.2 if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number in (0, 1], got {alpha!r}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    return float(alpha)


def _check_common(curvature: str | None, damping: float | None, svd_tol: float, approximations: frozenset[str]) -> str:
    if curvature is None:
        curvature = "kfac" if "kfsvd" in approximations else "exact"
    if curvature not in _CURVATURES:
        raise ValueError(f"curvature must be one of {_CURVATURES}, got {curvature!r}")
    valid_number = isinstance(damping, (int, float)) and not isinstance(damping, bool)
    if damping is not None and not (valid_number and math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be None or a finite number >= 0, got {damping!r}")
    if not (isinstance(svd_tol, (int, float)) and 0.0 <= svd_tol < 1.0):
        raise ValueError(f"svd_tol must lie in [0, 1), got {svd_tol!r}")
    return curvature
