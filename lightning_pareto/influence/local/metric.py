"""The FI^active building blocks: per-sample metric-tensor factors, query gradients and pairwise FI.

For training sample ``j`` the factors of ``G_{z_j}^+`` and of the parameter response are built once
(``metric_factors``), so FI of any query point against every training sample is one matmul
(``pairwise_fi``) with the query's loss gradient (``query_gradients``). See ``util`` for the measure
and ``_whitening`` for the factors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lightning_pareto._modes import eval_mode
from lightning_pareto.influence._passes import model_device
from lightning_pareto.influence._timings import InfluenceTimings, timed
from lightning_pareto.influence.local._data import chunk_size, collect
from lightning_pareto.influence.local._operator import make_operator
from lightning_pareto.influence.local._options import check_approx, check_curvature, check_rank
from lightning_pareto.influence.local._preconditioner import prepare_training_set
from lightning_pareto.influence.local._scope import resolve_scope
from lightning_pareto.influence.local._whitening import factor_chunks

__all__ = ["MetricFactors", "metric_factors", "pairwise_fi", "query_gradients"]


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
    progress: bool | None = None,
    timings: InfluenceTimings | None = None,
) -> MetricFactors:
    """Per-training-sample factors of ``G_z`` and of the parameter response, for FI^active (eq. 4.1).

    ``FI(z', z_j) = ||param_rows[j] @ g'||^2`` for the loss gradient ``g'`` of any query point
    ``z'`` (see :func:`query_gradients`, :func:`pairwise_fi`). Costs ``r`` extra ``J v`` products
    and ``r`` inverse-curvature products per training sample beyond FI^util.

    Args:
        model: As in :func:`~lightning_pareto.influence.local.util.fi_util`.
        train_loader: The training (labelled) set defining ``H``, ``n`` and the factors.
        curvature: As in :func:`~lightning_pareto.influence.local.util.fi_util`.
        damping: As in :func:`~lightning_pareto.influence.local.util.fi_util`.
        modules: As in :func:`~lightning_pareto.influence.local.util.fi_util`.
        approx: ``None`` or ``"kfsvd"`` (low-rank ``J``, Algorithm 7).
        rank: ``k`` of KFSVD (only with ``approx="kfsvd"``).
        seed: Seeds KFSVD's random start.
        svd_tol: As in :func:`~lightning_pareto.influence.local.util.fi_util`.
        parameter_path: ``False`` drops the ``-(1/n) J^T H^{-1}`` term from ``a_c`` (the fixed-model
            metric of Shu & Zhu 2019, for which ``FI`` of ``log P(y|x)`` is ``(1 - p_y) / p_y``);
            then no curvature is fitted and ``param_rows`` is ``None``.
        progress: Progress bars: ``True``, ``False`` or ``None`` (only when stderr is a terminal).
        timings: Filled with the seconds of the ``collect``, curvature (``factors``, ``eigen``,
            ``correction``) and ``metric`` phases.

    Returns:
        The :class:`MetricFactors`, rows in loader order.

    Raises:
        ValueError: As :func:`~lightning_pareto.influence.local.util.fi_util`, and for ``approx="subsample"`` (subsample the query pool instead).
    """
    approximations = check_approx(approx)
    if "subsample" in approximations:
        raise ValueError("metric_factors supports approx=None or 'kfsvd'; subsample the query pool instead")
    check_rank(rank, approximations)
    kind = check_curvature(curvature, damping, svd_tol, approximations)
    scope = resolve_scope(model, modules)
    device = model_device(model)
    with eval_mode(model):
        train, operator, preconditioner = prepare_training_set(
            kind,
            model,
            scope,
            train_loader,
            damping,
            parameter_path=parameter_path,
            progress=progress,
            timings=timings,
        )
        with timed(timings, "metric", device):
            whitened_parts, row_parts = [], []
            for x, y, jacobian, whitened in factor_chunks(
                operator,
                preconditioner,
                train,
                torch.arange(len(train)),
                rank,
                seed,
                svd_tol,
                progress,
                "FI: metric factors",
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
        model: As in :func:`~lightning_pareto.influence.local.util.fi_util`.
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
    with eval_mode(model):
        queries = collect(model, scope, loader, need_labels=labels == "observed")
        operator = make_operator(scope, queries.sample_shape, queries.linear_equivalent)
        chunk = chunk_size(operator.num_params, queries)
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
