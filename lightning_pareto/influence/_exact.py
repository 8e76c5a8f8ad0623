"""The dense mean GGN / Fisher over the tracked parameters, built with ``torch.func``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from lightning_pareto._distributed import all_reduce_sum
from lightning_pareto.influence._layout import flatten_layout, layout_from_named, layout_to_named, unflatten_layout
from lightning_pareto.influence._passes import fisher_labels, model_device, unpack
from lightning_pareto.influence._progress import progress_bar


def dense_curvature(
    model: nn.Module,
    loader: Iterable,
    tracked: Mapping[str, nn.Module],
    *,
    fisher: str,
    seed: int,
    progress: bool | None,
) -> Tensor:
    """Mean per-sample GGN or Fisher of the cross-entropy over the tracked parameters.

    With ``J_i`` the ``(K, P)`` Jacobian of sample i's logits with respect to the tracked parameters
    (flat layout, see ``_layout``) and ``p_i`` its softmax, the per-sample matrix is
    ``J_i^T M_i J_i`` with ``M_i = diag(p_i) - p_i p_i^T`` for ``"ggn"`` and ``M_i = r_i r_i^T``,
    ``r_i = p_i - onehot(label_i)``, for ``"empirical"`` (observed labels) and ``"sampled"`` (labels
    drawn from ``p_i``): ``J_i^T r_i`` is the per-sample loss gradient. Call inside ``influence_mode``.

    Args:
        model: The classifier, in ``influence_mode``.
        loader: Yields ``(x, y)`` or ``(x, y, index)``.
        tracked: Qualified name -> tracked layer.
        fisher: ``"ggn"``, ``"empirical"`` or ``"sampled"``.
        seed: Seed of the label sampler for ``"sampled"``.
        progress: See ``progress_bar``.

    Returns:
        float64 tensor of shape ``(P, P)``: the mean over the loader's samples.

    Raises:
        ValueError: If the loader yields no samples.
    """
    device = model_device(model)
    constants = {name: param.detach() for name, param in model.named_parameters()}
    constants.update(dict(model.named_buffers()))
    flat_params = flatten_layout(tracked, {k: v.unsqueeze(0) for k, v in layout_from_named(tracked, constants).items()})[0]
    generator = torch.Generator().manual_seed(seed) if fisher == "sampled" else None

    def sample_logits(flat: Tensor, x: Tensor) -> Tensor:
        named = layout_to_named(tracked, unflatten_layout(tracked, flat))
        return functional_call(model, {**constants, **named}, (x.unsqueeze(0),)).squeeze(0)

    jacobian = vmap(jacrev(sample_logits), in_dims=(None, 0))
    total = torch.zeros(flat_params.numel(), flat_params.numel(), dtype=torch.float64, device=device)
    count = 0
    for batch in progress_bar(loader, desc="influence: exact curvature", enabled=progress):
        x, y, _ = unpack(batch)
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            logits = model(x)
        jac = jacobian(flat_params, x).double()  # (b, K, P)
        probs = torch.softmax(logits.double(), dim=-1)
        if fisher == "ggn":
            scaled = (probs.sqrt().unsqueeze(-1) * jac).flatten(end_dim=1)
            total.addmm_(scaled.T, scaled)
            mean_direction = torch.einsum("bk,bkp->bp", probs, jac)
            total.addmm_(mean_direction.T, mean_direction, alpha=-1.0)
        else:
            labels = fisher_labels(logits, y, fisher, generator)
            residual = probs - torch.nn.functional.one_hot(labels, probs.shape[1]).double()
            grads = torch.einsum("bk,bkp->bp", residual, jac)
            total.addmm_(grads.T, grads)
        count += y.shape[0]
    # Under DDP each rank saw a shard: sum so every rank holds the whole set's matrix.
    count = int(all_reduce_sum(torch.tensor(count, dtype=torch.float64)))
    if count == 0:
        raise ValueError("train_loader yielded no samples")
    return all_reduce_sum(total) / count
