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


def layer_inputs(module: nn.Module, inputs: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Per-position layer inputs with a trailing one for the bias.

    Args:
        module: A supported layer.
        inputs: The layer's input: ``(batch, *, in_features)`` for Linear, ``(batch, C_in, H, W)`` for Conv2d.
        out: Optional tensor of the result's shape and dtype to write into (any strides whose last
            two axes can be merged, e.g. a slice of a contiguous buffer along the position axis).

    Returns:
        Tensor of shape ``(batch, T, in_features + has_bias)``, dtype of ``inputs``; for Conv2d
        ``T = H_out * W_out`` and ``in_features = C_in * kh * kw`` (``F.unfold`` patches). Contiguous
        for Conv2d and for a layer with bias; otherwise a view of ``inputs`` where possible. ``out``
        when given.
    """
    return _write_inputs(module, inputs, out, {})


def layer_output_grads(module: nn.Module, grads: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Per-position gradients with respect to the layer output.

    Args:
        module: A supported layer.
        grads: Gradient with respect to the layer output: ``(batch, *, out_features)`` for Linear,
            ``(batch, C_out, H_out, W_out)`` for Conv2d.
        out: Optional tensor of the result's shape and dtype to write into (see ``layer_inputs``).

    Returns:
        Tensor of shape ``(batch, T, out_features)``, positions ordered as in ``layer_inputs``:
        contiguous for Conv2d, a view of ``grads`` for Linear where possible; ``out`` when given.
    """
    return _write_output_grads(module, grads, out, {})


def _input_rows_shape(module: nn.Module, inputs: Tensor) -> tuple[int, int, int]:
    """Shape ``(batch, T, in_features + has_bias)`` of ``layer_inputs(module, inputs)``."""
    has_bias = int(module.bias is not None)
    if isinstance(module, nn.Conv2d):
        (out_h, out_w), _ = _conv_geometry(module, inputs.shape[2], inputs.shape[3])
        kh, kw = module.kernel_size
        return inputs.shape[0], out_h * out_w, inputs.shape[1] * kh * kw + has_bias
    return inputs.shape[0], _prod(inputs.shape[1:-1]), inputs.shape[-1] + has_bias


def _grad_rows_shape(module: nn.Module, grads: Tensor) -> tuple[int, int, int]:
    """Shape ``(batch, T, out_features)`` of ``layer_output_grads(module, grads)``."""
    if isinstance(module, nn.Conv2d):
        return grads.shape[0], grads.shape[2] * grads.shape[3], grads.shape[1]
    return grads.shape[0], _prod(grads.shape[1:-1]), grads.shape[-1]


def _writes(module: nn.Module, kind: str, tensor: Tensor) -> bool:
    """Whether the rows of ``kind`` ("inputs" or "grads") of ``tensor`` are a copy, not a view of it.

    A Conv2d's output gradients in channels-last memory order (those of the passes' channels-last
    batches) are their rows already: ``(batch, H W, C)`` is a view, where a copy into a kept buffer
    would be a gather as slow as the layer's per-sample gradients.
    """
    if isinstance(module, nn.Conv2d):
        return kind == "inputs" or not tensor.permute(0, 2, 3, 1).is_contiguous()
    return kind == "inputs" and module.bias is not None


def _write_inputs(module: nn.Module, inputs: Tensor, out: Tensor | None, cache: dict) -> Tensor:
    # Conv2d: ONE gather (index_select) from the flattened input, extended by a zero (padding) and a
    # one (bias) slot, writes the patches straight in their final (batch, T, features) layout; an
    # unfold -> transpose -> cat takes three passes over the (9x larger than the input) patches, two
    # of them strided. ``cache`` caches the gather index per input geometry and the staging buffer.
    shape = _input_rows_shape(module, inputs)
    batch, positions, features = shape
    if isinstance(module, nn.Conv2d):
        channels, height, width = inputs.shape[1:]
        key = ("inputs", id(module), channels, height, width, inputs.device)
        index = cache.get(key)
        if index is None:
            index = cache[key] = _patch_index(module, channels, height, width).to(inputs.device)
        size = channels * height * width + 2
        source = cache.get(("source", id(module)))
        if (
            source is None
            or source.numel() < batch * size
            or (source.dtype, source.device) != (inputs.dtype, inputs.device)
        ):
            source = cache[("source", id(module))] = inputs.new_empty(batch * size)
        source = source[: batch * size].view(batch, size)
        source[:, :-2].view(inputs.shape).copy_(inputs)
        source[:, -2] = 0
        source[:, -1] = 1
        rows = out if out is not None else inputs.new_empty(shape)
        torch.index_select(source, 1, index, out=rows.view(batch, positions * features))
        return rows
    rows = inputs.reshape(shape[0], shape[1], inputs.shape[-1])
    if module.bias is None:
        return rows if out is None else out.copy_(rows)
    result = out if out is not None else inputs.new_empty(shape)
    result[..., :-1].copy_(rows)
    result[..., -1] = 1
    return result


def _write_output_grads(module: nn.Module, grads: Tensor, out: Tensor | None, cache: dict) -> Tensor:
    shape = _grad_rows_shape(module, grads)
    batch, positions, channels = shape
    if isinstance(module, nn.Conv2d):
        channels_last = grads.permute(0, 2, 3, 1)
        if channels_last.is_contiguous():  # channels-last gradients: their rows as they lie
            rows = channels_last.reshape(shape)
            return rows if out is None else out.copy_(rows)
        # (batch, C, T) -> (batch, T, C) as a gather: on CPU faster than a strided copy_.
        key = ("grads", channels, positions, grads.device)
        index = cache.get(key)
        if index is None:
            index = cache[key] = (
                (torch.arange(channels) * positions + torch.arange(positions)[:, None]).reshape(-1).to(grads.device)
            )
        rows = out if out is not None else grads.new_empty(shape)
        flat = grads.reshape(batch, channels * positions)
        torch.index_select(flat, 1, index, out=rows.view(batch, positions * channels))
        return rows
    rows = grads.reshape(shape)
    return rows if out is None else out.copy_(rows)


def _conv_geometry(module: nn.Conv2d, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Output size ``(H_out, W_out)`` and top/left padding ``(pad_h, pad_w)`` of a Conv2d on ``H x W`` inputs."""
    if isinstance(module.padding, str):
        if module.padding == "same":
            left, right, top, bottom = _same_padding(module)
        else:
            left = right = top = bottom = 0
    else:
        top = bottom = module.padding[0]
        left = right = module.padding[1]
    sizes = []
    for size, before, after, kernel, stride, dilation in zip(
        (height, width), (top, left), (bottom, right), module.kernel_size, module.stride, module.dilation
    ):
        sizes.append((size + before + after - dilation * (kernel - 1) - 1) // stride + 1)
    return (sizes[0], sizes[1]), (top, left)


def _patch_index(module: nn.Conv2d, channels: int, height: int, width: int) -> Tensor:
    """Gather index of the patches: flat ``(T * (C_in kh kw + has_bias),)`` into ``[input | 0 | 1]``.

    Row ``t = i * W_out + j`` holds the input at ``(c, i * sh + p * dh - pad_h, j * sw + q * dw - pad_w)``
    for ``(c, p, q)`` in ``F.unfold`` order, the zero slot ``C H W`` where that falls in the padding, and
    the one slot ``C H W + 1`` last when the layer has a bias.
    """
    (out_h, out_w), (pad_h, pad_w) = _conv_geometry(module, height, width)
    kh, kw = module.kernel_size
    (sh, sw), (dh, dw) = module.stride, module.dilation
    rows = (torch.arange(out_h) * sh - pad_h).view(out_h, 1, 1, 1, 1) + (torch.arange(kh) * dh).view(1, 1, 1, kh, 1)
    cols = (torch.arange(out_w) * sw - pad_w).view(1, out_w, 1, 1, 1) + (torch.arange(kw) * dw).view(1, 1, 1, 1, kw)
    flat = torch.arange(channels).view(1, 1, channels, 1, 1) * (height * width) + rows * width + cols
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    index = torch.where(inside, flat, channels * height * width).reshape(out_h * out_w, channels * kh * kw)
    if module.bias is not None:
        index = torch.cat([index, index.new_full((out_h * out_w, 1), channels * height * width + 1)], dim=1)
    return index.reshape(-1)


def _prod(sizes: Sequence[int]) -> int:
    result = 1
    for size in sizes:
        result *= size
    return result


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
        reuse_buffers: Write each layer's ``(a, g)`` into buffers kept between batches instead of
            fresh tensors: ``layer(name)`` then overwrites the tensors it returned for ``name`` before.
            On CPU this saves the page faults of fresh allocations of the (large) Conv2d patches.
        probe: Add a zero scalar that requires grad (``probes()``) to every tracked output, so that
            ``torch.autograd.grad(loss, capture.probes())`` reaches every tracked output while no
            parameter requires grad: backward then computes only the gradients flowing between
            tracked layers, no weight or bias gradient, and nothing below the first tracked layer.

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

    def __init__(self, tracked: Mapping[str, nn.Module], *, reuse_buffers: bool = False, probe: bool = False) -> None:
        self.tracked = dict(tracked)
        self.reuse_buffers = reuse_buffers
        self.probe = probe
        self._probes: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._inputs: dict[str, list[Tensor]] = {name: [] for name in self.tracked}
        self._grads: dict[str, dict[int, Tensor]] = {name: {} for name in self.tracked}
        self._handles: list[RemovableHandle] = []
        self._buffers: dict[tuple[str, str], Tensor] = {}
        self._cache: dict = {}  # gather indices and staging buffers of _write_inputs/_write_output_grads

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
        self._buffers.clear()
        self._cache.clear()
        self._probes.clear()

    def probes(self) -> list[Tensor]:
        """The zero scalars added to tracked outputs (``probe=True``), one per device and dtype seen."""
        return list(self._probes.values())

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
            ``(batch, T, out_features)``, repeated calls of the layer concatenated along ``T``; see
            ``layer_inputs`` and ``layer_output_grads``. With ``reuse_buffers`` they are valid until
            the next ``layer(name)`` call.

        Raises:
            RuntimeError: If the layer was not called, or no output gradient reached it.
        """
        return self.rows(name, *self.raw(name))

    def rows(self, name: str, inputs: Sequence[Tensor], grads: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``layer(name)`` of tensors from ``raw(name)``, also after the capture moved on or closed.

        Args:
            name: Qualified name of a tracked layer.
            inputs: Its inputs, one per call.
            grads: Its output gradients, one per call.

        Returns:
            ``(a, g)`` as from ``layer``.
        """
        a = self._rows(name, "inputs", list(inputs), _write_inputs, _input_rows_shape)
        g = self._rows(name, "grads", list(grads), _write_output_grads, _grad_rows_shape)
        return a, g

    def raw(self, name: str) -> tuple[list[Tensor], list[Tensor]]:
        """The tensors recorded for one layer, as the layer saw them: one input and one output gradient per call.

        Args:
            name: Qualified name of a tracked layer.

        Returns:
            ``(inputs, grads)``, lists in call order: the detached layer inputs (``(batch, C_in, H, W)``
            for Conv2d) and the gradients with respect to the outputs (``(batch, C_out, H_out, W_out)``).

        Raises:
            RuntimeError: If the layer was not called, or no output gradient reached it.
        """
        inputs, grads = self._inputs[name], self._grads[name]
        if not inputs:
            raise RuntimeError(f"tracked layer {name!r} was not called in the forward pass")
        if len(grads) != len(inputs):
            raise RuntimeError(
                f"no output gradient reached tracked layer {name!r}: is its output used in the loss, "
                "outside torch.no_grad()?"
            )
        return list(inputs), [grads[call] for call in range(len(inputs))]

    def _rows(
        self,
        name: str,
        kind: str,
        tensors: list[Tensor],
        write: Callable[[nn.Module, Tensor, Tensor | None, dict], Tensor],
        shape_of: Callable[[nn.Module, Tensor], tuple[int, int, int]],
    ) -> Tensor:
        """The rows of every call of a layer, written in place along ``T`` (no ``torch.cat`` copy)."""
        module = self.tracked[name]
        if len(tensors) == 1 and not (self.reuse_buffers and _writes(module, kind, tensors[0])):
            return write(module, tensors[0], None, self._cache)
        shapes = [shape_of(module, tensor) for tensor in tensors]
        batch, width = shapes[0][0], shapes[0][2]
        rows = self._buffer(name, kind, (batch, sum(shape[1] for shape in shapes), width), tensors[0])
        start = 0
        for tensor, shape in zip(tensors, shapes):
            write(module, tensor, rows[:, start : start + shape[1]], self._cache)
            start += shape[1]
        return rows

    def _buffer(self, name: str, kind: str, shape: tuple[int, int, int], like: Tensor) -> Tensor:
        """A contiguous tensor of ``shape``: fresh, or with ``reuse_buffers`` the layer's kept buffer."""
        if not self.reuse_buffers:
            return like.new_empty(shape)
        numel = shape[0] * shape[1] * shape[2]
        flat = self._buffers.get((name, kind))
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype or flat.device != like.device:
            flat = self._buffers[(name, kind)] = like.new_empty(numel)
        return flat[:numel].view(shape)

    def _forward_hook(self, name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor | None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            call = len(self._inputs[name])
            self._inputs[name].append(args[0].detach())
            replaced = None
            if self.probe:
                key = (output.device, output.dtype)
                if key not in self._probes:
                    self._probes[key] = torch.zeros((), device=output.device, dtype=output.dtype, requires_grad=True)
                output = replaced = output + self._probes[key]
            if output.requires_grad:
                # A tensor hook sees the gradient of the output's value before any later in-place op.
                output.register_hook(lambda grad: self._grads[name].__setitem__(call, grad.detach()))
            return replaced

        return hook
