"""The per-layer matrix layout every curvature and query in the influence engine uses.

A tracked layer's parameters are one matrix of shape ``(out_features, in_features + has_bias)``:
the weight flattened to ``(out_features, in_features)`` (for Conv2d ``in_features = C_in * kh * kw``,
the order ``F.unfold`` produces) with the bias appended as the last column. A set of ``K`` vectors
over the tracked parameters is a ``dict`` from the layer's qualified name to a tensor of shape
``(K, out_features, in_features + has_bias)``, in the order of ``tracked`` (model order). The flat
form ``(K, P)`` concatenates the row-major flattened matrices in that order.

These helpers convert between that layout, parameter-shaped tensors (``"name.weight"`` /
``"name.bias"`` keys, as ``torch.func`` returns them) and the flat form.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """The layout matrix shape of a tracked layer.

    Args:
        module: A tracked ``nn.Linear`` or ``nn.Conv2d``.

    Returns:
        ``(out_features, in_features + has_bias)``; for Conv2d ``in_features = C_in * kh * kw``.
    """
    weight = module.weight
    return weight.shape[0], weight[0].numel() + (module.bias is not None)


def tracked_parameter_count(tracked: Mapping[str, nn.Module]) -> int:
    """Number of tracked parameters ``P``: the sum of ``out * (in + has_bias)`` over layers."""
    return sum(rows * cols for rows, cols in map(layer_shape, tracked.values()))


def weight_bias_to_matrix(module: nn.Module, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Join weight- and bias-shaped tensors into the layout matrix.

    Args:
        module: The tracked layer the tensors belong to.
        weight: Tensor of shape ``(*batch, *module.weight.shape)``.
        bias: Tensor of shape ``(*batch, out_features)``, or ``None`` for a layer without bias.

    Returns:
        Tensor of shape ``(*batch, out_features, in_features + has_bias)``, dtype of ``weight``.

    Raises:
        ValueError: If ``bias`` is missing or present against the layer's own bias.
    """
    if (bias is None) != (module.bias is None):
        raise ValueError(f"bias must be given exactly when the layer has one ({type(module).__name__})")
    batch = weight.shape[: weight.dim() - module.weight.dim()]
    matrix = weight.reshape(*batch, module.weight.shape[0], -1)
    if bias is None:
        return matrix
    return torch.cat([matrix, bias.unsqueeze(-1).to(matrix.dtype)], dim=-1)


def matrix_to_weight_bias(module: nn.Module, matrix: Tensor) -> tuple[Tensor, Tensor | None]:
    """Split a layout matrix back into weight- and bias-shaped tensors.

    Args:
        module: The tracked layer.
        matrix: Tensor of shape ``(*batch, out_features, in_features + has_bias)``.

    Returns:
        ``(weight, bias)`` of shapes ``(*batch, *module.weight.shape)`` and ``(*batch, out_features)``
        (``bias`` is ``None`` for a layer without bias).
    """
    batch = matrix.shape[:-2]
    in_features = module.weight[0].numel()
    weight = matrix[..., :in_features].reshape(*batch, *module.weight.shape)
    bias = matrix[..., in_features] if module.bias is not None else None
    return weight, bias


def parameter_name(layer: str, parameter: str) -> str:
    """Qualified parameter name as in ``model.named_parameters()``: ``"<layer>.<parameter>"``, or
    ``"<parameter>"`` when the tracked layer is the model itself (``layer == ""``)."""
    return f"{layer}.{parameter}" if layer else parameter


def layout_from_named(tracked: Mapping[str, nn.Module], named: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Layout matrices from parameter-shaped tensors keyed by qualified parameter name.

    Args:
        tracked: Qualified layer name -> tracked layer, in model order.
        named: ``parameter_name(layer, "weight")`` (and ``"bias"``) -> tensor of shape ``(*batch, *param.shape)``,
            for example the output of ``torch.func.grad`` over ``model.named_parameters()``.
            Extra keys are ignored.

    Returns:
        Layer name -> tensor of shape ``(*batch, out_features, in_features + has_bias)``.
    """
    return {
        name: weight_bias_to_matrix(
            module,
            named[parameter_name(name, "weight")],
            named[parameter_name(name, "bias")] if module.bias is not None else None,
        )
        for name, module in tracked.items()
    }


def layout_to_named(tracked: Mapping[str, nn.Module], layout: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Parameter-shaped tensors keyed by qualified parameter name, the inverse of ``layout_from_named``.

    Args:
        tracked: Qualified layer name -> tracked layer, in model order.
        layout: Layer name -> tensor of shape ``(*batch, out_features, in_features + has_bias)``.

    Returns:
        ``"<layer>.weight"`` / ``"<layer>.bias"`` -> tensor of shape ``(*batch, *param.shape)``.
    """
    named: dict[str, Tensor] = {}
    for name, module in tracked.items():
        weight, bias = matrix_to_weight_bias(module, layout[name])
        named[parameter_name(name, "weight")] = weight
        if bias is not None:
            named[parameter_name(name, "bias")] = bias
    return named


def layout_from_grads(tracked: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """The tracked layers' accumulated ``.grad`` in the layout, one vector (``K = 1``).

    Args:
        tracked: Qualified layer name -> tracked layer.

    Returns:
        Layer name -> tensor of shape ``(1, out_features, in_features + has_bias)``.

    Raises:
        ValueError: If a tracked parameter has no ``.grad``.
    """
    layout = {}
    for name, module in tracked.items():
        params = {"weight": module.weight, "bias": module.bias}
        missing = [key for key, param in params.items() if param is not None and param.grad is None]
        if missing:
            raise ValueError(f"layer {name!r} has no .grad on {missing}: run backward() first")
        bias = module.bias.grad.unsqueeze(0) if module.bias is not None else None
        layout[name] = weight_bias_to_matrix(module, module.weight.grad.unsqueeze(0), bias)
    return layout


def flatten_layout(tracked: Mapping[str, nn.Module], layout: Mapping[str, Tensor]) -> Tensor:
    """Concatenate layout matrices into flat vectors.

    Args:
        tracked: Qualified layer name -> tracked layer, in model order (sets the order of the blocks).
        layout: Layer name -> tensor of shape ``(K, out_features, in_features + has_bias)``.

    Returns:
        Tensor of shape ``(K, P)``: each layer's matrix flattened row-major, layers in ``tracked`` order.
    """
    return torch.cat([layout[name].flatten(start_dim=-2) for name in tracked], dim=-1)


def unflatten_layout(tracked: Mapping[str, nn.Module], flat: Tensor) -> dict[str, Tensor]:
    """Split flat vectors into layout matrices, the inverse of ``flatten_layout``.

    Args:
        tracked: Qualified layer name -> tracked layer, in model order.
        flat: Tensor of shape ``(*batch, P)``.

    Returns:
        Layer name -> tensor view of shape ``(*batch, out_features, in_features + has_bias)``.

    Raises:
        ValueError: If the last dimension of ``flat`` is not ``P``.
    """
    shapes = [layer_shape(module) for module in tracked.values()]
    sizes = [rows * cols for rows, cols in shapes]
    if flat.shape[-1] != sum(sizes):
        raise ValueError(f"flat has {flat.shape[-1]} entries per vector, the tracked layers have {sum(sizes)}")
    blocks = flat.split(sizes, dim=-1)
    return {name: block.reshape(*flat.shape[:-1], *shape) for name, block, shape in zip(tracked, blocks, shapes)}
