"""The query phase: per-class mean validation gradients, preconditioned by the damped inverse curvature.

One pass over the validation set accumulates the per-class gradient sums
``sum_{i in c} sum_t g_{i,t} a_{i,t}^T`` by per-sample contraction; one ``inverse_hvp`` of the ``K``
class queries follows. Wide Linear layers with a truncated basis may keep their validation rows
instead of the sums, where the factored form of ``_factored_queries`` is cheaper (never more numbers
than the sums would hold).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_pareto._distributed import all_reduce_sum
from lightning_pareto.influence._base import Curvature
from lightning_pareto.influence._layout import layer_shape
from lightning_pareto.influence._passes import captured_batches
from lightning_pareto.influence.kfac import eigen
from lightning_pareto.influence.kfac._factored_queries import (
    FactoredQuery,
    ValidationRows,
    concatenated,
    group_members,
    keeps_rows,
    mean_scale,
)
from lightning_pareto.influence.kfac.curvature import KroneckerCurvature

__all__ = ["mean_gradients", "precondition"]


def mean_gradients(
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
            wide = eigen.TRUNCATE_INPUTS_ABOVE
            kept = {
                name: []
                for name, module in tracked.items()
                if keep_rows and keeps_rows(module, batch.raw(name)[0], wide)
            }
        # Select each group's samples once per batch (not its T-times-longer rows per layer).
        members = group_members(groups)
        for name, module in tracked.items():
            if name in kept:
                inputs, grads = batch.raw(name)
                held = sum(part[0].shape[0] for part in kept[name]) + batch.size
                outputs, features = layer_shape(module)
                if (
                    keeps_rows(module, inputs, wide)
                    and held * (inputs[0].shape[1] + outputs) < num_groups * outputs * features
                ):
                    kept[name].append((inputs[0].contiguous(), grads[0].contiguous(), groups))
                    continue
                # Too many rows to pay (or a call the rows cannot represent): dense sums from here on.
                if kept[name]:
                    sums[name] += concatenated(kept[name], module.bias is not None).group_sums(num_groups)
                del kept[name]
            a, g = batch.layers[name]
            for group, samples in members:
                rows_a, rows_g = (
                    a.index_select(0, samples).flatten(end_dim=1),
                    g.index_select(0, samples).flatten(end_dim=1),
                )
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


def precondition(
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
