"""FI^active: how much the labelled set bends a pool point's prediction.

Eq. 4.1 and Algorithms 2, 7 and 8 of "Enhancing Prediction Performance through Influence Measure".

For an unlabelled point ``x_u`` with predicted label ``y_u`` and every labelled sample ``z_j``,
``FI(z_u, z_j) = v^T G_{z_j}^+ v`` with ``v = -(1/n) J(z_j)^T H^{-1} g_u`` (``g_u`` the loss gradient
at ``(x_u, y_u)``); FI^active aggregates these over ``j``, by default the paper's mean of the values
between the 10th and 90th percentiles.

Nothing is evaluated pair by pair. Per labelled sample the ``r x p`` factor
``R_j = -(1/n) W_j J_j^T H^{-1}`` (``G_{z_j}^+ = W_j^T W_j``) is built once per call
(:func:`~lightning_pareto.influence.local.metric.metric_factors`), so ``FI(z_u, z_j) = ||R_j g_u||^2`` and a
chunk of pool points against all labelled samples is one matmul
(:func:`~lightning_pareto.influence.local.metric.pairwise_fi`), aggregated before the next chunk: memory is
bounded by ``chunk_size * n * r`` entries, never ``|U| * n * d``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn

from lightning_pareto.influence._passes import model_device
from lightning_pareto.influence._progress import progress_bar
from lightning_pareto.influence._timings import InfluenceTimings, timed
from lightning_pareto.influence.batches import unpack_batch
from lightning_pareto.influence.local._options import check_alpha, check_approx, check_quantile_range
from lightning_pareto.influence.local.metric import metric_factors, pairwise_fi, query_gradients
from lightning_pareto.influence.local.subsample import choose_subsample, forest_rank_scores

__all__ = ["fi_active", "trimmed_mean"]


def trimmed_mean(values: torch.Tensor, quantile_range: tuple[float, float] = (0.1, 0.9)) -> torch.Tensor:
    """Mean of each row's entries between two of its quantiles (both ends included).

    The aggregation ``g`` of eq. 4.1: with ``(0.1, 0.9)`` the mean of the middle 80% of the
    FI values; ``(0.0, 1.0)`` is the plain mean. Quantiles interpolate linearly, as ``numpy.percentile``.

    Args:
        values: Float tensor ``(m, n)``, ``n >= 1``.
        quantile_range: ``(low, high)`` with ``0 <= low <= high <= 1``.

    Returns:
        Tensor ``(m,)`` of the dtype of ``values``.
    """
    low, high = torch.quantile(values, torch.tensor(quantile_range, dtype=values.dtype, device=values.device), dim=1)
    # A quantile that falls on a sample can come out a rounding error away from it; keep that sample.
    # The slack is relative to each quantile itself, as FI values span many decades.
    inside = (values >= (low - 1e-9 * low.abs())[:, None]) & (values <= (high + 1e-9 * high.abs())[:, None])
    return (values * inside).sum(1) / inside.sum(1)


def fi_active(
    model: nn.Module,
    labeled_loader: Iterable,
    pool_loader: Iterable,
    *,
    curvature: Literal["exact", "kfac", "ekfac"] | None = None,
    damping: float | None = None,
    modules: Sequence[str] | None = None,
    approx: str | Sequence[str] | None = None,
    rank: int | None = None,
    alpha: float | None = None,
    quantile_range: tuple[float, float] = (0.1, 0.9),
    seed: int = 0,
    svd_tol: float = 1e-6,
    chunk_size: int = 256,
    progress: bool | None = None,
    timings: InfluenceTimings | None = None,
) -> torch.Tensor:
    """FI^active of every pool point (eq. 4.1): large = label first.

    Args:
        model: Classifier whose output is logits ``(batch, K)``, trained on the labelled set with
            cross-entropy; evaluated in eval mode (its mode is restored afterwards).
        labeled_loader: The labelled set, batches ``(x, y)`` or ``(x, y, index)``; it defines
            ``H``, ``n`` and the metric tensors.
        pool_loader: The unlabelled pool, batches ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, index)``;
            labels are ignored (each point is scored at its predicted label, Algorithm 2). Rows of
            the result follow loader order, which must not shuffle.
        curvature: ``H`` over the tracked parameters, as in
            :func:`~lightning_pareto.influence.local.util.fi_util`: ``"exact"``, ``"kfac"`` or ``"ekfac"``;
            ``None``: ``"kfac"`` with ``"kfsvd"`` in ``approx`` (Algorithm 7), else ``"exact"``.
        damping: Added to the curvature's diagonal (``None``: pseudo-inverse for ``"exact"``, the
            engine's default otherwise).
        modules: ``None`` to perturb the model's input, or ``[name]`` of the submodule producing the
            logits (e.g. ``["head"]``; ``["net.head"]`` for a ``ClassifierModule``) to work on the
            last layer and its penultimate features, as the paper does for networks.
        approx: ``None`` (exact), ``"kfsvd"`` (rank-``rank`` Jacobians of the labelled samples,
            Algorithm 7), ``"subsample"`` (FI on a fraction ``alpha`` of the pool, a random forest
            from the pool inputs to FI rank for the rest, Algorithm 8), or both as a list.
        rank: ``k`` of KFSVD, an int ``>= 1``; only with ``"kfsvd"``.
        alpha: Fraction of the pool in ``(0, 1]`` scored with FI under ``"subsample"`` (default 0.2).
        quantile_range: ``(low, high)`` quantiles of the aggregation (:func:`trimmed_mean`); the
            paper's ``(0.1, 0.9)`` by default, ``(0.0, 1.0)`` for the plain mean.
        seed: Seeds the subsample, the forest and KFSVD's random start.
        svd_tol: Relative singular-value cut-off of ``G_z^+``, as in ``fi_util``.
        chunk_size: Pool points per batched product (memory ``chunk_size * n * r`` float64 entries).
        progress: Progress bars: ``True``, ``False`` or ``None`` (only when stderr is a terminal).
        timings: Filled with the seconds of the ``collect``, curvature (``factors``, ``eigen``,
            ``correction``) and ``metric`` phases of the labelled samples' factors, ``queries`` (pool
            gradients), ``pairs`` (products and aggregation) and ``forest``.

    Returns:
        Float64 tensor ``(|U|,)`` in pool-loader order. Without ``"subsample"``: FI^active values
        (``>= 0``). With it: rank scores in ``[0, 1]`` (scored points: their rank quantile; others:
        the forest's prediction); only the order is meaningful.

    Raises:
        ValueError: On a bad ``quantile_range``, ``chunk_size``, ``approx``, ``rank``, ``alpha`` or
            any argument :func:`~lightning_pareto.influence.local.metric.metric_factors` rejects, or an
            empty pool.
        TypeError: On arguments of the wrong type.
    """
    check_quantile_range(quantile_range)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    names = check_approx(approx)
    alpha = check_alpha(alpha, names)
    device = model_device(model)
    factors = metric_factors(
        model,
        labeled_loader,
        curvature=curvature,
        damping=damping,
        modules=modules,
        approx="kfsvd" if "kfsvd" in names else None,
        rank=rank,
        seed=seed,
        svd_tol=svd_tol,
        progress=progress,
        timings=timings,
    )
    with timed(timings, "queries", device):
        gradients = query_gradients(model, pool_loader, modules=modules, labels="predicted")
    with timed(timings, "pairs", device):
        chosen = choose_subsample(len(gradients), alpha, seed) if "subsample" in names else None
        scored = gradients if chosen is None else gradients[torch.from_numpy(chosen)]
        values = torch.empty(len(scored), dtype=torch.float64)
        for start in progress_bar(range(0, len(scored), chunk_size), desc="FI^active: pairs", enabled=progress):
            pairs = pairwise_fi(factors, scored[start : start + chunk_size], chunk_size=chunk_size)
            values[start : start + len(pairs)] = trimmed_mean(pairs, quantile_range)
    if chosen is not None:
        with timed(timings, "forest", torch.device("cpu")):
            inputs = _pool_inputs(pool_loader)
            values = torch.from_numpy(forest_rank_scores(inputs.numpy(), chosen, values.numpy(), seed))
    return values


def _pool_inputs(loader: Iterable) -> torch.Tensor:
    """The pool's raw inputs flattened to ``(|U|, features)`` float64: the forest's covariates (Algorithm 8)."""
    inputs = [unpack_batch(batch, labels=False)[0] for batch in loader]
    return torch.cat([x.reshape(len(x), -1).to(torch.float64).cpu() for x in inputs])
