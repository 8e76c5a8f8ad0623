"""Per-sample gradients of a Conv2d as the weight gradient of a convolution grouped over the batch.

Sample ``b``'s gradient ``sum_t g_{b,t} p_{b,t}^T`` is the weight gradient of the same convolution
applied to that sample alone, so a convolution with the batch folded into its channels (``groups =
batch``) yields all of them in one oneDNN/cuDNN call, without writing the ``kh kw`` times larger
patches. On CPU that is faster only for narrow layers with enough input channels for oneDNN's
vector blocks (``python benchmarks/conv_routes.py``; the table is in ``benchmarks/RESULTS.md``): the
bounds ``_GROUPED_MIN_IN_CHANNELS`` and ``_GROUPED_MAX_CHANNEL_PRODUCT`` separate the convolutions
where it won from those where the patches did.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_pareto.influence.kfac._conv_gram import symmetric_padding

__all__ = ["grouped_gradients_pay", "per_sample_conv_gradients"]

# The grouped weight gradient beats patches + batched matmul on CPU from this many input channels
# (below, e.g. an image's 1 or 3, it ran 2-3x slower than the patches) up to this C_in * C_out.
_GROUPED_MIN_IN_CHANNELS, _GROUPED_MAX_CHANNEL_PRODUCT = 8, 512


def grouped_gradients_pay(module: nn.Module, inputs: Sequence[Tensor]) -> bool:
    """Whether ``per_sample_conv_gradients`` is the faster route for this layer (a narrow Conv2d on CPU).

    Args:
        module: A tracked layer.
        inputs: Its inputs, one per call, as recorded.
    """
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and module.in_channels >= _GROUPED_MIN_IN_CHANNELS
        and module.in_channels * module.out_channels <= _GROUPED_MAX_CHANNEL_PRODUCT
        and symmetric_padding(module) is not None
        and all(x.dim() == 4 and x.device.type == "cpu" for x in inputs)
    )


def per_sample_conv_gradients(
    module: nn.Conv2d, inputs: Sequence[Tensor], grads: Sequence[Tensor], start: int, stop: int
) -> Tensor:
    """Per-sample loss gradients of a Conv2d's weight and bias, in the layer layout, summed over calls.

    Args:
        module: A Conv2d with ``groups=1`` and zero padding.
        inputs: Its inputs ``(batch, C_in, H, W)``, one per call.
        grads: The gradients with respect to its outputs ``(batch, C_out, H_out, W_out)``, one per call.
        start: First sample of the slice.
        stop: End of the slice.

    Returns:
        Tensor of shape ``(stop - start, C_out, C_in kh kw + has_bias)`` in the inputs' dtype, columns
        in ``F.unfold`` order with the bias last: ``sum_t g_t a_t^T`` for each sample.
    """
    count, outputs = stop - start, module.out_channels
    features = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    has_bias = module.bias is not None
    total = inputs[0].new_zeros(count, outputs, features + has_bias)
    for x, g in zip(inputs, grads):
        x, g = x[start:stop], g[start:stop]
        total[:, :, :features] += torch.ops.aten.convolution_backward(
            g.reshape(1, count * outputs, *g.shape[2:]),
            x.reshape(1, count * x.shape[1], *x.shape[2:]),
            x.new_empty(count * outputs, *module.weight.shape[1:]),  # only its shape is read
            None,
            module.stride,
            symmetric_padding(module),
            module.dilation,
            False,
            [0, 0],
            count,
            [False, True, False],
        )[1].view(count, outputs, features)
        if has_bias:
            total[:, :, -1] += g.sum(dim=(2, 3))
    return total
