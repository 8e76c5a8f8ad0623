"""Which part of a model FI perturbs, and the flat parameter vector it differentiates.

FI ("Enhancing Prediction Performance through Influence Measure") perturbs the input ``x`` of a *scope* module and differentiates with respect to the
parameters ``theta`` of the tracked layers (Linear, Conv2d: ``capture.supports_layer``) inside that
scope. The scope is either the whole model (``x`` = the raw input) or one named submodule whose
output is the model's logits (for example ``"head"``: ``x`` = the penultimate features, ``theta``
= the last layer). ``theta`` uses the engine's flat layout (``_layout``): each tracked layer's
``(out_features, in_features + has_bias)`` matrix flattened row-major, layers in model order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lightning_pareto.influence._layout import (
    flatten_layout,
    matrix_to_weight_bias,
    tracked_parameter_count,
    unflatten_layout,
    weight_bias_to_matrix,
)
from lightning_pareto.influence.capture import supports_layer, tracked_modules


@dataclass(frozen=True)
class Scope:
    """The perturbed module of a model and its tracked layers.

    Attributes:
        name: Qualified name of the scope module, ``""`` for the whole model.
        module: The scope module: FI perturbs its input and its output must be the logits.
        tracked: Qualified layer name -> tracked layer inside the scope, in model order (the keys
            the curvature engine uses).
    """

    name: str
    module: nn.Module
    tracked: dict[str, nn.Module]

    @property
    def num_params(self) -> int:
        """Length ``p`` of the flat parameter vector."""
        return tracked_parameter_count(self.tracked)

    def _local(self, qualified: str) -> str:
        """A tracked layer's name relative to the scope module (``""`` for the scope itself)."""
        return qualified[len(self.name) :].lstrip(".") if self.name else qualified

    def flat_params(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The tracked parameters' current values as a detached flat vector ``(p,)`` of ``dtype``."""
        layout = {
            name: weight_bias_to_matrix(
                module, module.weight.detach()[None], None if module.bias is None else module.bias.detach()[None]
            )
            for name, module in self.tracked.items()
        }
        return flatten_layout(self.tracked, layout)[0].to(dtype)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector ``(p,)`` into weights and biases keyed by name relative to the scope.

        Args:
            theta: Flat parameter vector.

        Returns:
            ``"weight"``, ``"0.bias"``, ... -> parameter-shaped tensors, for ``torch.func.functional_call``.
        """
        params: dict[str, torch.Tensor] = {}
        for name, matrix in unflatten_layout(self.tracked, theta).items():
            weight, bias = matrix_to_weight_bias(self.tracked[name], matrix)
            prefix = f"{self._local(name)}." if self._local(name) else ""
            params[prefix + "weight"] = weight
            if bias is not None:
                params[prefix + "bias"] = bias
        return params


def resolve_scope(model: nn.Module, modules: Sequence[str] | None) -> Scope:
    """Find the perturbed module and its tracked layers.

    Args:
        model: The classifier; its output must be the logits ``(batch, K)``.
        modules: ``None`` to perturb the model's input and track every supported layer, or a
            one-element list naming the submodule whose input is perturbed and whose layers are
            tracked (it must produce the model's logits, e.g. ``["head"]``).

    Returns:
        The resolved :class:`Scope`.

    Raises:
        TypeError: If ``modules`` is a string or not a sequence of strings.
        ValueError: If ``modules`` names more than one module, an unknown module, or a module
            without supported layers.
    """
    if modules is None:
        return Scope("", model, tracked_modules(model, None))
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
    inside = [
        ".".join(part for part in (name, local) if part)
        for local, layer in scope_module.named_modules()
        if supports_layer(layer)
    ]
    if not inside:
        raise ValueError(
            f"modules={list(modules)!r}: {name!r} contains no nn.Linear or nn.Conv2d layer for FI to differentiate"
        )
    return Scope(name, scope_module, tracked_modules(model, inside))
