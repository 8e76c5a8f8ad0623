"""Which layers the influence engine tracks, and hooks that capture their inputs and output gradients.

For a tracked layer the per-sample gradient of the loss with respect to its layout matrix (see
``_layout``) is ``sum_t g_t a_t^T``: ``a_t`` the layer input at position ``t`` with a trailing one for
the bias, ``g_t`` the gradient of that sample's loss with respect to the layer output at ``t``.
Positions are the sequence axes of a Linear layer's input ``(batch, *, in_features)``, the output
pixels of a Conv2d layer (its input is unfolded into patches, ``C_in * kh * kw`` values each), and
repeated calls of a layer within one forward. Every method in the engine works on ``(a, g)`` and never
builds ``sum_t g_t a_t^T`` for a Linear layer.

The gradients ``g`` are exact per-sample quantities when the backward pass starts from the *sum* of
per-sample losses and the model treats samples independently (eval mode: no batch statistics).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["LayerCapture", "layer_inputs", "layer_output_grads", "supports_layer", "tracked_modules"]


def supports_layer(module: nn.Module) -> bool:
    """Whether the engine can track a layer: ``nn.Linear``, or ``nn.Conv2d`` with ``groups=1`` and zero padding."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def tracked_modules(model: nn.Module, modules: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Select the layers whose parameters the influence engine differentiates.

    With ``modules=None`` every supported layer (see ``supports_layer``) is tracked, and any other
    submodule that owns parameters (BatchNorm, LayerNorm, Embedding, grouped convolutions, ...) is
    listed in one ``UserWarning``: its parameters are left out of the influence computation. With
    ``modules`` given, exactly those layers are tracked and nothing is warned about.

    Args:
        model: The classifier.
        modules: Qualified names of layers to track (as in ``model.named_modules()``), or ``None``.

    Returns:
        Qualified name -> layer, in model order.

    Raises:
        TypeError: If ``modules`` is a single string instead of a sequence of names.
        ValueError: If a name is unknown or not a supported layer, if ``modules`` is empty, or if
            the model has no supported layer.
    """
    named = dict(model.named_modules())
    if modules is not None:
        if isinstance(modules, str):
            raise TypeError(f"modules must be a sequence of layer names, got the string {modules!r}: use [{modules!r}]")
        names = list(dict.fromkeys(modules))
        if not names:
            raise ValueError("modules is empty: pass None to track every Linear/Conv2d layer, or name at least one")
        supported = [name for name, module in named.items() if supports_layer(module)]
        unknown = [name for name in names if name not in named]
        if unknown:
            raise ValueError(f"modules {unknown} are not in the model; trackable layers are {supported}")
        unsupported = [name for name in names if not supports_layer(named[name])]
        if unsupported:
            raise ValueError(
                f"modules {unsupported} are not trackable (only nn.Linear and nn.Conv2d with groups=1 and "
                f"zero padding are); trackable layers are {supported}"
            )
        order = {name: position for position, name in enumerate(named)}
        return {name: named[name] for name in sorted(names, key=order.__getitem__)}
    tracked = {name: module for name, module in named.items() if supports_layer(module)}
    untracked = [
        f"{name or '<root>'} ({type(module).__name__})"
        for name, module in named.items()
        if name not in tracked and any(True for _ in module.parameters(recurse=False))
    ]
    if not tracked:
        raise ValueError(
            f"the model has no trackable layer (nn.Linear or nn.Conv2d with groups=1 and zero padding); "
            f"layers with parameters: {untracked or 'none'}"
        )
    if untracked:
        warnings.warn(
            f"influence ignores the parameters of {len(untracked)} unsupported layer(s): {', '.join(untracked)}; "
            "only nn.Linear and nn.Conv2d (groups=1, zero padding) are tracked",
            UserWarning,
            stacklevel=2,
        )
    return tracked


def layer_inputs(module: nn.Module, inputs: Tensor) -> Tensor:
    """Per-position layer inputs with a trailing one for the bias.

    Args:
        module: A supported layer.
        inputs: The layer's input: ``(batch, *, in_features)`` for Linear, ``(batch, C_in, H, W)`` for Conv2d.

    Returns:
        Tensor of shape ``(batch, T, in_features + has_bias)``, dtype of ``inputs``; for Conv2d
        ``T = H_out * W_out`` and ``in_features = C_in * kh * kw`` (``F.unfold`` patches).
    """
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            inputs = F.pad(inputs, _same_padding(module) if module.padding == "same" else (0, 0, 0, 0))
            padding: tuple[int, ...] | int = 0
        else:
            padding = module.padding
        patches = F.unfold(inputs, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
        rows = patches.transpose(1, 2)
    else:
        rows = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])
    if module.bias is None:
        return rows
    return torch.cat([rows, rows.new_ones(*rows.shape[:2], 1)], dim=2)


def layer_output_grads(module: nn.Module, grads: Tensor) -> Tensor:
    """Per-position gradients with respect to the layer output.

    Args:
        module: A supported layer.
        grads: Gradient with respect to the layer output: ``(batch, *, out_features)`` for Linear,
            ``(batch, C_out, H_out, W_out)`` for Conv2d.

    Returns:
        Tensor of shape ``(batch, T, out_features)``, positions ordered as in ``layer_inputs``.
    """
    if isinstance(module, nn.Conv2d):
        return grads.flatten(start_dim=2).transpose(1, 2)
    return grads.reshape(grads.shape[0], -1, grads.shape[-1])


def _same_padding(module: nn.Conv2d) -> tuple[int, int, int, int]:
    # PyTorch's padding="same" puts the odd extra pixel on the right/bottom; F.pad wants (W, H) pairs.
    pads: list[int] = []
    for kernel, dilation in zip(reversed(module.kernel_size), reversed(module.dilation)):
        total = dilation * (kernel - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)  # type: ignore[return-value]


class LayerCapture:
    """Context manager that records tracked layers' inputs and output gradients for one batch at a time.

    Inside the context, every forward call of a tracked layer stores its (detached) input and, when
    the output takes part in autograd, registers a tensor hook that stores the output gradient of
    the next backward pass. Hooks are removed on exit, also when an exception is raised.

    Args:
        tracked: Qualified name -> supported layer.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> tracked = tracked_modules(model)
        >>> x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
        >>> with LayerCapture(tracked) as capture:
        ...     loss = F.cross_entropy(model(x), y, reduction="sum")
        ...     weight_grads = torch.autograd.grad(loss, [module.weight for module in tracked.values()])
        ...     a, g = capture.layer("2")
        >>> a.shape, g.shape  # (batch, positions, in + bias), (batch, positions, out)
        (torch.Size([5, 1, 5]), torch.Size([5, 1, 2]))
        >>> per_sample = torch.einsum("bto,bti->boi", g, a)  # each sample's gradient, weight | bias
        >>> torch.allclose(per_sample.sum(0)[:, :4], weight_grads[1], atol=1e-6)
        True
    """

    def __init__(self, tracked: Mapping[str, nn.Module]) -> None:
        self.tracked = dict(tracked)
        self._inputs: dict[str, list[Tensor]] = {name: [] for name in self.tracked}
        self._grads: dict[str, dict[int, Tensor]] = {name: {} for name in self.tracked}
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> LayerCapture:
        for name, module in self.tracked.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def clear(self) -> None:
        """Forget the recorded batch (call before the next forward)."""
        for name in self.tracked:
            self._inputs[name].clear()
            self._grads[name].clear()

    def layer(self, name: str) -> tuple[Tensor, Tensor]:
        """Inputs and output gradients recorded for one layer in the last forward/backward.

        Args:
            name: Qualified name of a tracked layer.

        Returns:
            ``(a, g)`` with ``a`` of shape ``(batch, T, in_features + has_bias)`` and ``g`` of shape
            ``(batch, T, out_features)``, repeated calls of the layer concatenated along ``T``.

        Raises:
            RuntimeError: If the layer was not called, or no output gradient reached it.
        """
        module = self.tracked[name]
        inputs, grads = self._inputs[name], self._grads[name]
        if not inputs:
            raise RuntimeError(f"tracked layer {name!r} was not called in the forward pass")
        if len(grads) != len(inputs):
            raise RuntimeError(
                f"no output gradient reached tracked layer {name!r}: is its output used in the loss, "
                "outside torch.no_grad()?"
            )
        a = torch.cat([layer_inputs(module, x) for x in inputs], dim=1)
        g = torch.cat([layer_output_grads(module, grads[call]) for call in range(len(inputs))], dim=1)
        return a, g

    def _forward_hook(self, name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            call = len(self._inputs[name])
            self._inputs[name].append(args[0].detach())
            if output.requires_grad:
                # A tensor hook sees the gradient of the output's value before any later in-place op.
                output.register_hook(lambda grad: self._grads[name].__setitem__(call, grad.detach()))

        return hook
