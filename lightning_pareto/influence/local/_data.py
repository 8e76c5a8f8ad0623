"""Collect the scope's inputs (the vectors FI perturbs), labels and dataset indices from a loader."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lightning_pareto.influence.batches import unpack_batch
from lightning_pareto.influence.local._scope import Scope

# Samples per batched step: about this many float64 entries in the per-sample (K, p) blocks.
_CHUNK_ENTRIES = 1 << 22


@dataclass(frozen=True)
class ScopeInputs:
    """Everything FI needs from one data set, in loader order.

    Rows are in dataset-index order when the loader yields indices, else in loader order.

    Attributes:
        x: Scope inputs flattened to ``(n, d)``, float64, on the model's device.
        y: Labels ``(n,)`` int64 (all ``-1`` when the loader yields inputs only).
        index: Dataset indices ``(n,)`` int64 when the loader yields ``(x, y, index)``, else ``None``.
        sample_shape: Shape of one scope input before flattening.
        num_classes: Number of logits ``K``.
        linear_equivalent: Whether the scope acts as its single Linear layer applied to the
            flattened input (checked on every batch), so the closed-form softmax-linear maths applies.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor | None
    sample_shape: torch.Size
    num_classes: int
    linear_equivalent: bool

    def __len__(self) -> int:
        return self.x.shape[0]


def collect(model: nn.Module, scope: Scope, loader: Iterable, *, need_labels: bool = True) -> ScopeInputs:
    """Run the model over a loader and record the scope's inputs.

    The model must already be in eval mode. Forward hooks capture the scope's input and output
    (and those of its Linear layer when it has exactly one tracked Linear), so any ``nn.Module``
    works without a ``features()`` method.

    Args:
        model: The classifier; its output must be logits of shape ``(batch, K)``, ``K >= 2``.
        scope: The perturbed module, from :func:`resolve_scope`.
        loader: Iterable of batches ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, index)`` (see ``unpack_batch``).
        need_labels: Raise if a batch has no labels.

    Returns:
        The collected :class:`ScopeInputs`.

    Raises:
        ValueError: On an empty loader, missing labels, logits of the wrong shape, a scope whose
            output is not the model's output, or indices mixed with index-less batches.
    """
    device = next(model.parameters()).device
    layers = list(scope.tracked.values())
    single_linear = layers[0] if len(layers) == 1 and isinstance(layers[0], nn.Linear) else None
    captured: dict[str, list[torch.Tensor]] = {"scope_in": [], "scope_out": [], "linear_in": [], "linear_out": []}

    def record(prefix: str):
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured[f"{prefix}_in"].append(args[0].detach() if args else None)
            captured[f"{prefix}_out"].append(output.detach() if isinstance(output, torch.Tensor) else None)

        return hook

    handles = [scope.module.register_forward_hook(record("scope"))]
    if single_linear is not None:
        handles.append(single_linear.register_forward_hook(record("linear")))
    xs, ys, indices = [], [], []
    sample_shape = None
    num_classes = None
    linear_equivalent = single_linear is not None
    try:
        with torch.no_grad():
            for batch in loader:
                x, y, index = unpack_batch(batch, labels=False)
                y = None if y is None else torch.as_tensor(y)
                index = None if index is None else torch.as_tensor(index)
                if y is None and need_labels:
                    raise ValueError("the training and validation loaders must yield labels: (x, y) or (x, y, index)")
                for values in captured.values():
                    values.clear()
                logits = model(x.to(device))
                if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
                    raise ValueError("FI needs a model whose output is logits of shape (batch, K) with K >= 2")
                if len(captured["scope_in"]) != 1 or captured["scope_in"][0] is None:
                    raise ValueError(
                        f"module {scope.name!r} must be called exactly once per forward, with a tensor input"
                    )
                scope_in, scope_out = captured["scope_in"][0], captured["scope_out"][0]
                if scope_out is None or scope_out.shape != logits.shape or not torch.equal(scope_out, logits):
                    raise ValueError(
                        f"modules=[{scope.name!r}]: that module's output is not the model's logits; name the module "
                        "that produces the logits (usually 'head')"
                    )
                if linear_equivalent:
                    linear_in, linear_out = captured["linear_in"], captured["linear_out"]
                    linear_equivalent = (
                        len(linear_in) == 1
                        and linear_in[0] is not None
                        and linear_in[0].reshape(len(x), -1).shape == scope_in.reshape(len(x), -1).shape
                        and torch.equal(linear_in[0].reshape(len(x), -1), scope_in.reshape(len(x), -1))
                        and torch.equal(linear_out[0], logits)
                    )
                if y is not None and need_labels and len(y) and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
                    k = logits.shape[1]
                    raise ValueError(f"labels must lie in [0, {k}) for a model with {k} logits")
                sample_shape = scope_in.shape[1:] if sample_shape is None else sample_shape
                num_classes = logits.shape[1]
                xs.append(scope_in.reshape(len(scope_in), -1).to(torch.float64))
                ys.append(torch.full((len(x),), -1, device=device) if y is None else y.to(device, torch.int64))
                indices.append(index)
    finally:
        for handle in handles:
            handle.remove()
    if not xs:
        raise ValueError("the loader yielded no batches")
    if any(index is None for index in indices) and not all(index is None for index in indices):
        raise ValueError("either every batch carries sample indices or none does")
    x, y = torch.cat(xs), torch.cat(ys)
    index = None
    if indices[0] is not None:
        # Dataset-index order makes every result independent of loader shuffling.
        index, order = torch.sort(torch.cat([i.reshape(-1).to(torch.int64).cpu() for i in indices]))
        x, y = x[order.to(x.device)], y[order.to(y.device)]
    return ScopeInputs(x, y, index, torch.Size(sample_shape), num_classes, linear_equivalent)


def chunk_size(num_params: int, data: ScopeInputs) -> int:
    """Samples per batched step: about ``_CHUNK_ENTRIES`` float64 entries in the per-sample ``(K, max(p, d))`` blocks, at most 1024."""
    width = data.num_classes * max(num_params, data.x.shape[1])
    return max(1, min(1024, _CHUNK_ENTRIES // width))
