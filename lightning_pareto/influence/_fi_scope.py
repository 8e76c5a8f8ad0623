"""Which part of a model FI perturbs, and the flat parameter layout it differentiates.

FI (seed 000) perturbs the input ``x`` of a *scope* module and differentiates with respect to the
parameters ``theta`` of the Linear/Conv2d layers inside that scope. The scope is either the whole
model (``x`` = the raw input) or one named submodule whose output is the model's logits (for
example ``"head"``: ``x`` = the penultimate features, ``theta`` = the last layer).

``theta`` is laid out flat, tracked layer by tracked layer in model order, each layer as the
row-major matrix ``(out_features, in_features + has_bias)`` with the bias as the last column (for
Conv2d, ``in_features = C_in/groups * kh * kw``): the layout the curvature engine's
``inverse_hvp`` uses per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

_TRACKED_TYPES = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class ParamBlock:
    """One tracked layer's slice of the flat parameter vector.

    Attributes:
        name: Qualified name of the layer in the whole model (the curvature engine's key).
        local_name: Name of the layer relative to the scope module (``""`` if it is the scope).
        module: The layer itself.
        out_features: Rows of the layer's block.
        columns: Columns of the block: ``in_features`` plus one if the layer has a bias.
        offset: Start of the block in the flat vector.
    """

    name: str
    local_name: str
    module: nn.Linear | nn.Conv2d
    out_features: int
    columns: int
    offset: int

    @property
    def size(self) -> int:
        """Number of entries of the block in the flat vector."""
        return self.out_features * self.columns

    @property
    def has_bias(self) -> bool:
        """Whether the block's last column is the bias."""
        return self.module.bias is not None


@dataclass(frozen=True)
class Scope:
    """The perturbed module of a model and the layout of its tracked parameters.

    Attributes:
        name: Qualified name of the scope module, ``""`` for the whole model.
        module: The scope module: FI perturbs its input and its output must be the logits.
        blocks: Tracked layers (Linear/Conv2d inside the scope) in model order.
    """

    name: str
    module: nn.Module
    blocks: tuple[ParamBlock, ...]

    @property
    def num_params(self) -> int:
        """Length ``p`` of the flat parameter vector."""
        return sum(block.size for block in self.blocks)

    @property
    def tracked_names(self) -> list[str]:
        """Qualified names of the tracked layers, in model order."""
        return [block.name for block in self.blocks]

    def flat_params(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The tracked parameters' current values in the flat layout.

        Args:
            dtype: Floating dtype of the result.

        Returns:
            Detached tensor of shape ``(p,)``.
        """
        parts = []
        for block in self.blocks:
            weight = block.module.weight.detach().reshape(block.out_features, -1)
            if block.has_bias:
                weight = torch.cat([weight, block.module.bias.detach()[:, None]], dim=1)
            parts.append(weight.reshape(-1).to(dtype))
        return torch.cat(parts)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat parameter vector into the scope's named weights and biases.

        Args:
            theta: Tensor of shape ``(p,)``.

        Returns:
            Mapping from parameter names relative to the scope module (``"weight"``,
            ``"0.bias"``, ...) to tensors shaped like the parameters, for
            ``torch.func.functional_call``.
        """
        params: dict[str, torch.Tensor] = {}
        for block in self.blocks:
            matrix = theta[block.offset : block.offset + block.size].reshape(block.out_features, block.columns)
            prefix = f"{block.local_name}." if block.local_name else ""
            weight_columns = block.columns - int(block.has_bias)
            params[prefix + "weight"] = matrix[:, :weight_columns].reshape(block.module.weight.shape)
            if block.has_bias:
                params[prefix + "bias"] = matrix[:, -1]
        return params

    def split(self, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split flat vectors into the curvature engine's per-layer layout.

        Args:
            vectors: Tensor of shape ``(m, p)``.

        Returns:
            Mapping from qualified layer name to a tensor of shape ``(m, out_features, columns)``.
        """
        return {
            block.name: vectors[:, block.offset : block.offset + block.size].reshape(
                -1, block.out_features, block.columns
            )
            for block in self.blocks
        }

    def join(self, blocks: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`split`: concatenate per-layer blocks into flat vectors of shape ``(m, p)``."""
        return torch.cat([blocks[block.name].reshape(blocks[block.name].shape[0], -1) for block in self.blocks], dim=1)


def resolve_scope(model: nn.Module, modules: Sequence[str] | None) -> Scope:
    """Find the perturbed module and its tracked layers.

    Args:
        model: The classifier; its output must be the logits ``(batch, K)``.
        modules: ``None`` to perturb the model's input and track every Linear/Conv2d layer, or a
            one-element list naming the submodule whose input is perturbed and whose layers are
            tracked (it must produce the model's logits, e.g. ``["head"]``).

    Returns:
        The resolved :class:`Scope`.

    Raises:
        TypeError: If ``modules`` is a string or not a sequence of strings.
        ValueError: If ``modules`` names more than one module, an unknown module, or a module
            without Linear/Conv2d layers.
    """
    if modules is None:
        name, scope_module = "", model
    else:
        if isinstance(modules, str) or not all(isinstance(item, str) for item in modules):
            raise TypeError(f"modules must be None or a list with one module name, e.g. ['head'], got {modules!r}")
        if len(modules) != 1:
            raise ValueError(
                "modules must name exactly one submodule (the one producing the logits, e.g. ['head']) "
                f"whose input FI perturbs, got {list(modules)!r}"
            )
        name = modules[0]
        try:
            scope_module = model.get_submodule(name)
        except AttributeError as error:
            known = [child for child, _ in model.named_modules() if child]
            raise ValueError(f"modules={list(modules)!r}: the model has no submodule {name!r}; known: {known}") from error
    blocks = []
    offset = 0
    for local_name, module in scope_module.named_modules():
        if not isinstance(module, _TRACKED_TYPES):
            continue
        columns = module.weight[0].numel() + int(module.bias is not None)
        qualified = ".".join(part for part in (name, local_name) if part)
        blocks.append(ParamBlock(qualified, local_name, module, module.weight.shape[0], columns, offset))
        offset += blocks[-1].size
    if not blocks:
        where = f"submodule {name!r}" if name else "model"
        raise ValueError(f"the {where} has no nn.Linear or nn.Conv2d layer for FI to differentiate; pass modules=['head'] or similar")
    return Scope(name, scope_module, tuple(blocks))
