"""Category-wise influence vectors (seed 003) and the influence value IV (Chhabra et al. 2024).

``I[i, c] = g_c^T (G + lambda I)^{-1} g_i`` with ``g_i`` the gradient of training sample i's
cross-entropy, ``g_c`` the gradient of the *mean* cross-entropy over the class-c validation samples
and ``G`` the damped curvature of the mean training loss (see ``curvature``), all over the tracked
layers' parameters. ``I[i, c] > 0``: up-weighting sample i lowers the class-c validation loss (the
sample helps class c). To first order, removing sample i from a training set of ``n`` changes the
class-c validation loss by ``+I[i, c] / n``.

Computed in four steps: fit the curvature (``fit_curvature``), one pass over the validation set
accumulating the per-class gradient sums ``sum_{i in c} sum_t g_{i,t} a_{i,t}^T`` by per-sample
contraction, one ``inverse_hvp`` of the ``K`` class queries, and one pass over the training set in
which ``I[i, c] = sum_layers sum_t g_{i,t}^T Q_c a_{i,t}`` is contracted from the captured layer
inputs ``a`` and output gradients ``g``: no per-sample gradient of a Linear layer is built (for
layers with positions, Conv2d, per-sample gradients are formed in bounded chunks where that is
cheaper than the contraction) and memory is bounded by the batch, not the data set. Wide Linear
layers with a truncated basis may keep their validation rows instead of the sums, where the
factored form of ``_factored_queries`` is cheaper (never more numbers than the sums would hold).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_pareto._distributed import all_reduce_sum, is_distributed, merge_rows
from lightning_pareto.influence import _kronecker
from lightning_pareto.influence._conv_grads import grouped_gradients_pay, per_sample_conv_gradients
from lightning_pareto.influence._curvature_subset import check_curvature_samples, curvature_batches
from lightning_pareto.influence._factored_queries import (
    FactoredQuery,
    ValidationRows,
    concatenated,
    group_members,
    keeps_rows,
    mean_scale,
)
from lightning_pareto.influence._layout import layer_shape
from lightning_pareto.influence._passes import captured_batches, influence_mode
from lightning_pareto.influence._timings import InfluenceTimings, timed
from lightning_pareto.influence.capture import tracked_modules
from lightning_pareto.influence.curvature import (
    Curvature,
    KroneckerCurvature,
    check_options,
    fit_tracked_curvature,
    resolve_damping,
)

__all__ = ["category_influence", "influence_value"]

# Elements of the (rows x queries x features) intermediate of the score contraction held at once.
_CHUNK_ELEMENTS = 1 << 24


def category_influence(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    num_classes: int,
    *,
    curvature: str | Curvature = "ekfac",
    damping: float | None = None,
    modules: Sequence[str] | None = None,
    fisher: str = "empirical",
    seed: int = 0,
    curvature_samples: int | None = None,
    progress: bool | None = None,
    timings: InfluenceTimings | None = None,
) -> Tensor:
    """Category-wise influence of every training sample on every class's validation loss.

    Args:
        model: A classifier returning logits ``(batch, num_classes)``; left in its training mode and
            ``requires_grad`` state, with no ``.grad`` written.
        train_loader: Yields ``(x, y, index)`` (row ``index`` of the result) or ``(x, y)`` (rows in
            loader order, so the loader must not shuffle). Iterated two or three times (curvature
            fit, scores).
        val_loader: Yields ``(x, y)`` or ``(x, y, index)``; labels in ``[0, num_classes)``.
        num_classes: Number of classes ``K``.
        curvature: ``"exact"``, ``"kfac"``, ``"ekfac"``, or a ``Curvature`` already fitted on this
            model (then ``modules`` must be ``None``, ``fisher``/``seed`` are not used and a
            ``damping`` given replaces the fitted one).
        damping: ``lambda >= 0``, or ``None`` for ``DEFAULT_DAMPING_FACTOR`` (0.1) times the largest
            eigenvalue of the curvature (see ``curvature``).
        modules: Qualified names of the layers to track (for example ``["head"]``); ``None`` tracks
            every Linear/Conv2d and warns about other parameterised layers.
        fisher: Curvature's labels: ``"empirical"``, ``"sampled"``, or ``"ggn"`` (exact only).
        seed: Seed of the label sampler for ``fisher="sampled"`` and of the ``curvature_samples`` subset.
        curvature_samples: Fit the curvature on about this many training samples (a seeded systematic
            subset, see ``fit_curvature``) instead of all of them; every sample is still scored. ``None``
            (default): all. Not used with a fitted ``Curvature``.
        progress: Progress bars: ``True``, ``False`` or ``None`` (only when stderr is a terminal).
        timings: Filled with the seconds of each phase.

    Under ``torch.distributed`` (DDP, a process group of more than one) this is a collective: every
    rank calls it with loaders over its own disjoint shard of the same data sets (indexed batches),
    the curvature and query statistics are summed over ranks and every rank returns the whole matrix,
    equal to one process's up to float summation order.

    Returns:
        float32 CPU tensor of shape ``(n, K)`` with ``n = len(train_loader.dataset)`` (without a
        ``dataset`` attribute: the number of rows seen, or the largest index + 1). Row i is dataset
        index i. Rows the loader never yielded are NaN, and any non-finite row is reported in one
        ``UserWarning`` with its count, not replaced. A class without validation samples has a zero
        column and a warning.

    Raises:
        ValueError: On a bad option, labels outside ``[0, num_classes)``, an empty loader, or an
            index outside ``[0, n)``.
        FloatingPointError: If the fitted curvature is not finite (NaN/inf in the model or the
            training data); non-finite scores alone only warn.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> train = DataLoader(TensorDataset(x[:40], y[:40], torch.arange(40)), batch_size=16)
        >>> val = DataLoader(TensorDataset(x[40:], y[40:]), batch_size=16)
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> scores = category_influence(model, train, val, num_classes=3)  # EKFAC, default damping
        >>> scores.shape, scores.dtype
        (torch.Size([40, 3]), torch.float32)
        >>> harmful_to_all = (scores < 0).all(dim=1).nonzero().squeeze(1)  # removal helps every class
    """
    _check_num_classes(num_classes)

    def class_of(labels: Tensor) -> Tensor:
        _check_labels(labels, num_classes)
        return labels

    return _influence(
        model, train_loader, val_loader, num_classes, class_of,
        curvature=curvature, damping=damping, modules=modules, fisher=fisher, seed=seed,
        curvature_samples=curvature_samples, progress=progress, timings=timings,
        group_names=[f"class {c}" for c in range(num_classes)],
    )  # fmt: skip


def influence_value(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    num_classes: int | None = None,
    *,
    curvature: str | Curvature = "ekfac",
    damping: float | None = None,
    modules: Sequence[str] | None = None,
    fisher: str = "empirical",
    seed: int = 0,
    curvature_samples: int | None = None,
    progress: bool | None = None,
    timings: InfluenceTimings | None = None,
) -> Tensor:
    """IV: influence of every training sample on the mean loss of the whole validation set.

    ``IV[i] = g_V^T (G + lambda I)^{-1} g_i`` with ``g_V`` the gradient of the mean validation
    cross-entropy, equal to ``sum_c (n_c / n_V) I[i, c]`` of ``category_influence``; positive means
    the sample lowers the validation loss. Arguments as in ``category_influence``; ``num_classes``
    only validates the labels when given.

    Returns:
        float32 CPU tensor of shape ``(n,)``, rows as in ``category_influence``.
    """

    if num_classes is not None:
        _check_num_classes(num_classes)

    def whole_set(labels: Tensor) -> Tensor:
        if num_classes is not None:
            _check_labels(labels, num_classes)
        return torch.zeros_like(labels)

    scores = _influence(
        model, train_loader, val_loader, 1, whole_set,
        curvature=curvature, damping=damping, modules=modules, fisher=fisher, seed=seed,
        curvature_samples=curvature_samples, progress=progress, timings=timings,
        group_names=["validation set"],
    )  # fmt: skip
    return scores[:, 0]


def _influence(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    num_groups: int,
    group_of: Callable[[Tensor], Tensor],
    *,
    curvature: str | Curvature,
    damping: float | None,
    modules: Sequence[str] | None,
    fisher: str,
    seed: int,
    curvature_samples: int | None,
    progress: bool | None,
    timings: InfluenceTimings | None,
    group_names: Sequence[str],
) -> Tensor:
    if isinstance(curvature, Curvature):
        if modules is not None:
            raise ValueError("modules must be None when a fitted Curvature is passed: it fixes the tracked layers")
        _check_owned(model, curvature)
        tracked = curvature.tracked
        fitted: Curvature | None = curvature.with_damping(damping) if damping is not None else curvature
    else:
        check_options(curvature, fisher)
        resolve_damping(damping, 1.0)  # validate before any pass
        check_curvature_samples(curvature_samples)
        curvature_batches(train_loader, curvature_samples, seed)  # a loader it cannot subset fails here
        tracked = tracked_modules(model, modules)
        fitted = None
    # The validation pass runs first so that bad labels fail before the training passes.
    with influence_mode(model) as device, timed(timings, "queries", device):
        # Under DDP the validation rows are sharded over ranks: only the summed dense queries are whole.
        queries, rows, counts = _mean_gradients(
            model, val_loader, tracked, num_groups, group_of, group_names, progress, keep_rows=not is_distributed()
        )
    if fitted is None:
        fitted = fit_tracked_curvature(
            model, train_loader, tracked, curvature=curvature, damping=damping, fisher=fisher, seed=seed,
            curvature_samples=curvature_samples, progress=progress, timings=timings,
        )  # fmt: skip
    with influence_mode(model) as device:
        with timed(timings, "precondition", device):
            preconditioned, factored = _precondition(fitted, queries, rows, counts)
        with timed(timings, "scores", device):
            scores = _score(model, train_loader, tracked, preconditioned, factored, progress)
    cause = non_finite_cause(scores)
    if cause:
        warnings.warn(f"{cause}; the scores are returned as they are, filter them before use", UserWarning, stacklevel=3)
    return scores


def non_finite_cause(scores: Tensor) -> str:
    """What makes an influence matrix ``(n, K)`` non-finite, in words ("" when every entry is finite).

    A column that is non-finite in every row comes from that class's validation query (a NaN/inf
    validation input, or a loss that overflows on one); other non-finite rows from training samples
    with non-finite gradients, or rows the loader never yielded.

    Example:
        >>> scores = torch.zeros(4, 3)
        >>> scores[:, 1] = float("nan")
        >>> non_finite_cause(scores)
        'influence column(s) [1] are not finite: the validation gradients of those classes are NaN/inf (a non-finite validation input, or a loss that overflows on one)'
    """
    bad = ~torch.isfinite(torch.as_tensor(scores))
    columns = [int(c) for c in torch.nonzero(bad.all(dim=0)).flatten()] if bad.shape[0] else []
    keep = [c for c in range(bad.shape[1]) if c not in columns]
    rows = int(bad[:, keep].any(dim=1).sum()) if keep else 0
    parts = []
    if columns:
        parts.append(f"influence column(s) {columns} are not finite: the validation gradients of those classes are NaN/inf "
                     "(a non-finite validation input, or a loss that overflows on one)")
    if rows:
        parts.append(f"{rows} of {bad.shape[0]} influence rows are not finite (training samples with NaN/inf gradients, "
                     "or rows the train loader never yielded)")
    return "; ".join(parts)


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


def _check_labels(labels: Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"val_loader labels must lie in [0, num_classes={num_classes}), got "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def _check_owned(model: nn.Module, curvature: Curvature) -> None:
    owned = {id(module) for module in model.modules()}
    foreign = [name for name, module in curvature.tracked.items() if id(module) not in owned]
    if foreign:
        raise ValueError(f"the Curvature was fitted on another model (layers {foreign} are not in this one)")


def _mean_gradients(
    model: nn.Module,
    loader: Iterable,
    tracked: Mapping[str, nn.Module],
    num_groups: int,
    group_of: Callable[[Tensor], Tensor],
    group_names: Sequence[str],
    progress: bool | None,
    *,
    keep_rows: bool = False,
) -> tuple[dict[str, Tensor], dict[str, ValidationRows], Tensor]:
    """Per-group mean loss gradients in the layer layout, ``(num_groups, out, in + has_bias)`` per layer.

    With ``keep_rows``, wide Linear layers (``_factored_queries.keeps_rows``) keep their validation
    rows instead, as long as they hold fewer numbers than the dense means would; the rest get means.

    Returns:
        ``(means, rows, counts)``: dense means by layer, ``ValidationRows`` by layer (the layers
        not in ``means``), and the float64 number of validation samples of each group.
    """
    sums = {name: module.weight.new_zeros(num_groups, *layer_shape(module)) for name, module in tracked.items()}
    counts = torch.zeros(num_groups, dtype=torch.float64)
    kept: dict[str, list[tuple[Tensor, Tensor, Tensor]]] | None = None
    for batch in captured_batches(model, loader, tracked, desc="influence: queries", progress=progress):
        groups = group_of(batch.labels)
        counts += torch.bincount(groups.cpu(), minlength=num_groups)
        if kept is None:
            wide = _kronecker.TRUNCATE_INPUTS_ABOVE
            kept = {
                name: [] for name, module in tracked.items() if keep_rows and keeps_rows(module, batch.raw(name)[0], wide)
            }
        # Select each group's samples once per batch (not its T-times-longer rows per layer).
        members = group_members(groups)
        for name, module in tracked.items():
            if name in kept:
                inputs, grads = batch.raw(name)
                held = sum(part[0].shape[0] for part in kept[name]) + batch.size
                outputs, features = layer_shape(module)
                if keeps_rows(module, inputs, wide) and held * (inputs[0].shape[1] + outputs) < num_groups * outputs * features:
                    kept[name].append((inputs[0].contiguous(), grads[0].contiguous(), groups))
                    continue
                # Too many rows to pay (or a call the rows cannot represent): dense sums from here on.
                if kept[name]:
                    sums[name] += concatenated(kept[name], module.bias is not None).group_sums(num_groups)
                del kept[name]
            a, g = batch.layers[name]
            for group, samples in members:
                rows_a, rows_g = a.index_select(0, samples).flatten(end_dim=1), g.index_select(0, samples).flatten(end_dim=1)
                sums[name][group].addmm_(rows_g.T, rows_a)
    kept = kept or {}
    # Under DDP each rank saw a shard of the validation set: sum the per-class statistics.
    counts = all_reduce_sum(counts)
    sums = {name: all_reduce_sum(total) for name, total in sums.items() if name not in kept}
    if int(counts.sum()) == 0:
        raise ValueError("val_loader yielded no samples")
    empty = [group_names[group] for group in range(num_groups) if counts[group] == 0]
    if empty:
        warnings.warn(
            f"no validation samples for {', '.join(empty)}: their influence column is zero", UserWarning, stacklevel=4
        )
    means = {name: total * mean_scale(counts, total)[:, None, None] for name, total in sums.items()}
    rows = {name: concatenated(parts, tracked[name].bias is not None) for name, parts in kept.items()}
    return means, rows, counts


def _precondition(
    curvature: Curvature, means: Mapping[str, Tensor], rows: Mapping[str, ValidationRows], counts: Tensor
) -> tuple[dict[str, Tensor], dict[str, FactoredQuery]]:
    """``inverse_hvp`` of the queries: dense, or factored (``_factored_queries``) where a truncated basis makes that cheaper."""
    dense, factored = dict(means), {}
    layers = curvature.layers if isinstance(curvature, KroneckerCurvature) else {}
    for name, layer_rows in rows.items():
        layer = layers.get(name)
        if layer is not None and layer.truncated:
            cost, dense_cost = FactoredQuery.cost(layer_rows, layer.eigvecs_inputs.shape[1], counts.shape[0])
            if cost < dense_cost:
                factored[name] = FactoredQuery.build(layer_rows, counts, layer, curvature.damping)
                continue
        dense[name] = layer_rows.group_sums(counts.shape[0]) * mean_scale(counts, layer_rows.grads)[:, None, None]
    if not factored:
        return curvature.inverse_hvp(dense), factored
    return {name: layers[name].inverse(query, curvature.damping) for name, query in dense.items()}, factored


def _score(
    model: nn.Module,
    loader: Iterable,
    tracked: Mapping[str, nn.Module],
    queries: Mapping[str, Tensor],
    factored: Mapping[str, FactoredQuery],
    progress: bool | None,
) -> Tensor:
    """Scores ``sum_layers sum_t g_t^T Q_k a_t`` of every training sample against the K queries.

    ``queries`` holds the dense preconditioned queries, ``factored`` those of the other layers.
    """
    queries = dict(queries)
    rows: list[tuple[Tensor | None, Tensor]] = []
    for batch in captured_batches(model, loader, tracked, desc="influence: scores", progress=progress):
        total = None
        for name, module in tracked.items():
            inputs, grads = batch.raw(name)
            if name in factored and name not in queries and not keeps_rows(module, inputs, 0):
                # A training call the factored form cannot take (e.g. with positions): dense from here on.
                queries[name] = factored[name].dense()
            if name in factored and name not in queries:
                layer_scores = factored[name].scores(inputs[0], grads[0])
            elif grouped_gradients_pay(module, inputs):
                layer_scores = _per_sample_scores(module, inputs, grads, queries[name].to(inputs[0].dtype))
            else:
                a, g = batch.layers[name]
                layer_scores = _contract(a, g, queries[name].to(a.dtype))
            total = layer_scores if total is None else total + layer_scores
        rows.append((batch.index, total.float().cpu()))
    width = next(iter(queries.values())).shape[0] if queries else next(iter(factored.values())).kept.shape[0]
    return _assemble(loader, rows, width=width)


def _per_sample_scores(module: nn.Module, inputs: list[Tensor], grads: list[Tensor], query: Tensor) -> Tensor:
    """``_contract`` of a narrow Conv2d from its feature maps: per-sample gradients (``_conv_grads``) times the queries."""
    return _gradient_scores(
        lambda start, stop: per_sample_conv_gradients(module, inputs, grads, start, stop), inputs[0].shape[0], query
    )


def _gradient_scores(per_sample: Callable[[int, int], Tensor], batch: int, query: Tensor) -> Tensor:
    """Inner products of per-sample gradients ``per_sample(start, stop)`` ``(b, o, i)`` with ``query`` ``(K, o, i)``, chunked."""
    num_queries, outputs, inputs = query.shape
    flat_queries = query.reshape(num_queries, outputs * inputs).T
    chunk = max(1, _CHUNK_ELEMENTS // (outputs * inputs))
    return torch.cat([
        per_sample(start, min(start + chunk, batch)).flatten(1) @ flat_queries for start in range(0, batch, chunk)
    ])  # fmt: skip


def _contract(a: Tensor, g: Tensor, query: Tensor) -> Tensor:
    """``sum_t g[b, t]^T query[k] a[b, t]`` for a ``(b, T, i)``, g ``(b, T, o)``, query ``(K, o, i)`` -> ``(b, K)``.

    Picks the cheaper of two exact orders, chunked over rows to bound memory:

    - ``T * K > T + K`` (positions, as in Conv2d): form each sample's gradient ``g^T a`` ``(o, i)``
      and take its inner products with the K queries: ``(T + K) o i`` multiply-adds per sample,
      against ``T K o i`` for the contraction.
    - otherwise (``T = 1``, a Linear layer): never form the gradient; contract the larger feature
      axis with the queries in one matmul and the smaller one with a batched dot product,
      ``K o i`` per sample.
    """
    batch, positions, inputs = a.shape
    num_queries, outputs = query.shape[:2]
    if positions * num_queries > positions + num_queries:
        return _gradient_scores(lambda start, stop: g[start:stop].transpose(1, 2) @ a[start:stop], batch, query)
    rows_a, rows_g = a.flatten(end_dim=1), g.flatten(end_dim=1)
    if outputs <= inputs:
        big, small, weights = rows_a, rows_g, query.reshape(num_queries * outputs, inputs).T
    else:
        big, small, weights = rows_g, rows_a, query.transpose(1, 2).reshape(num_queries * inputs, outputs).T
    width = small.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // (num_queries * width))
    parts = [
        torch.bmm((big[start : start + chunk] @ weights).view(-1, num_queries, width), small[start : start + chunk, :, None])
        for start in range(0, big.shape[0], chunk)
    ]
    return torch.cat(parts).view(batch, positions, num_queries).sum(dim=1)


def _assemble(loader: Iterable, rows: list[tuple[Tensor | None, Tensor]], width: int) -> Tensor:
    """Place batch scores ``(b, width)`` at their dataset indices (or in loader order); unseen rows are NaN.

    Under DDP every rank scored a shard of the data set by index; the rows are joined so that every
    rank returns the whole matrix.
    """
    distributed = is_distributed()
    indexed = [index is not None for index, _ in rows]
    if any(indexed) and not all(indexed):
        raise ValueError("train_loader mixes (x, y) and (x, y, index) batches")
    dataset = getattr(loader, "dataset", None)
    if distributed and (not all(indexed) or dataset is None):
        raise ValueError(
            "under torch.distributed the train_loader must yield (x, y, index) batches and have a .dataset, so "
            "that each rank's rows can be joined; wrap the dataset in lightning_pareto.IndexedDataset"
        )
    if not rows and not distributed:
        raise ValueError("train_loader yielded no samples")
    seen = sum(scores.shape[0] for _, scores in rows)
    if rows and all(indexed):
        index = torch.cat([index for index, _ in rows])
        size = len(dataset) if dataset is not None else int(index.max()) + 1
        if int(index.min()) < 0 or int(index.max()) >= size:
            raise ValueError(
                f"train_loader indices must lie in [0, len(train_loader.dataset)={size}), got "
                f"[{int(index.min())}, {int(index.max())}]"
            )
    else:
        size = len(dataset) if dataset is not None else seen
        index = torch.arange(seen)
        if seen > size:
            raise ValueError(f"train_loader yielded {seen} samples, more than len(train_loader.dataset)={size}")
    scores = torch.full((size, width), float("nan"))
    filled = torch.zeros(size, dtype=torch.bool)
    if rows:
        scores[index] = torch.cat([batch_scores for _, batch_scores in rows])
        filled[index] = True
    return merge_rows(scores, filled) if distributed else scores
