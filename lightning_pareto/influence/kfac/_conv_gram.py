"""K-FAC covariances of a stride-1 Conv2d from its input feature map, without unfolding patches.

The input factor of a convolution sums the outer products of its patches,
``sum_t p_t p_t^T`` with ``p_t[c, u, v] = x[c, i + u - pad_h, j + v - pad_w]`` at output position
``t = (i, j)``. With stride and dilation 1, entry ``((c, u, v), (c', u', v'))`` is a correlation of the
input with itself at the offset ``delta = (u' - u, v' - v)``, taken over the input pixels ``s`` that the
patch element ``(u, v)`` visits:

    sum_{s in R_u x C_v} x[c, s] x[c', s + delta].

Over the whole image these correlations, for all ``(2 kh - 1) (2 kw - 1)`` offsets at once, are the
weight gradient of a ``(2 kh - 1) x (2 kw - 1)`` convolution whose output gradient is the input itself
(``torch.nn.grad.conv2d_weight``, one oneDNN/cuDNN call). The pixels a patch element never visits are
a few border rows and columns (one each side for a 3x3 kernel with padding 1); their correlations are
the same call on those strips, subtracted by inclusion-exclusion. For SmallCNN's 16-channel 3x3 conv
over 16x16 inputs that is ``25 C^2 HW`` multiply-adds per sample instead of the patches' ``(9 C)^2 HW``,
and no ``9x`` larger patch tensor is written (timings: ``python benchmarks/conv_routes.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["conv_input_gram", "conv_output_gram", "supports_shifted_gram", "symmetric_padding"]


def supports_shifted_gram(module: nn.Module, inputs: Tensor) -> bool:
    """Whether ``conv_input_gram`` applies: a Conv2d with stride 1, dilation 1, groups 1 and symmetric zero padding.

    Args:
        module: A tracked layer.
        inputs: Its input in one call.

    Returns:
        ``True`` for such a Conv2d on a ``(batch, C, H, W)`` input large enough that its border strips
        (see the module docstring) do not overlap; ``False`` otherwise (the caller unfolds patches).
    """
    if not isinstance(module, nn.Conv2d) or module.groups != 1 or module.padding_mode != "zeros":
        return False
    if tuple(module.stride) != (1, 1) or tuple(module.dilation) != (1, 1) or inputs.dim() != 4:
        return False
    padding = symmetric_padding(module)
    if padding is None:
        return False
    for size, kernel, pad in zip(inputs.shape[2:], module.kernel_size, padding):
        border = max(0, kernel - 1 - pad)
        if size + 2 * pad - kernel + 1 < 1 or 2 * border > size:
            return False
    return True


def symmetric_padding(module: nn.Conv2d) -> tuple[int, int] | None:
    """``(pad_h, pad_w)``, each applied on both sides; ``None`` for a one-sided "same" (odd total padding)."""
    if module.padding == "valid":
        return 0, 0
    if module.padding == "same":
        totals = [dilation * (kernel - 1) for kernel, dilation in zip(module.kernel_size, module.dilation)]
        if any(total % 2 for total in totals):
            return None
        return totals[0] // 2, totals[1] // 2
    return module.padding[0], module.padding[1]


def conv_input_gram(module: nn.Conv2d, inputs: Tensor) -> Tensor:
    """``sum_{b, t} p_{b,t} p_{b,t}^T`` of a batch's patches, with the bias slot's constant one last.

    Args:
        module: A Conv2d for which ``supports_shifted_gram`` holds.
        inputs: Its input, shape ``(batch, C, H, W)``.

    Returns:
        Symmetric tensor of shape ``(C kh kw + has_bias, C kh kw + has_bias)`` in the dtype of
        ``inputs``, features in ``F.unfold`` order ``(c, u, v)``; the bias row holds the patch sums and,
        last, the number of positions ``batch * H_out * W_out``.
    """
    batch, channels, height, width = inputs.shape
    (kh, kw), (ph, pw) = module.kernel_size, symmetric_padding(module)
    out_h, out_w = height + 2 * ph - kh + 1, width + 2 * pw - kw + 1
    inputs = inputs.contiguous()
    # Every term is a correlation of a region of the input with the input around it.
    padded = F.pad(inputs, (kw - 1, kw - 1, kh - 1, kh - 1))

    def correlation(rows: slice, cols: slice) -> Tensor:
        """``[c, c', a, b] = sum_{s in region} x[c, s] x[c', s + (a - kh + 1, b - kw + 1)]``."""
        centers = inputs[:, :, rows, cols]
        window = padded[:, :, rows.start : rows.stop + 2 * kh - 2, cols.start : cols.stop + 2 * kw - 2]
        return torch.nn.grad.conv2d_weight(window, (channels, channels, 2 * kh - 1, 2 * kw - 1), centers)

    # Pixels that patch element u never visits: rows [0, top_u) and [bottom_u, H) (columns alike).
    top = [max(0, u - ph) for u in range(kh)]
    bottom = [min(height, u - ph + out_h) for u in range(kh)]
    left = [max(0, v - pw) for v in range(kw)]
    right = [min(width, v - pw + out_w) for v in range(kw)]
    skipped_rows = [[*range(top[u]), *range(bottom[u], height)] for u in range(kh)]
    skipped_cols = [[*range(left[v]), *range(right[v], width)] for v in range(kw)]

    full = correlation(slice(0, height), slice(0, width))
    row_terms = {
        r: correlation(slice(r, r + 1), slice(0, width)) for r in sorted({r for rs in skipped_rows for r in rs})
    }
    col_terms = {
        q: correlation(slice(0, height), slice(q, q + 1)) for q in sorted({q for qs in skipped_cols for q in qs})
    }
    corner_terms = {(r, q): correlation(slice(r, r + 1), slice(q, q + 1)) for r in row_terms for q in col_terms}
    sums = inputs.sum(dim=0)  # (C, H, W): the bias column's region sums, by the same inclusion-exclusion
    full_sum = sums.sum(dim=(1, 2))

    zero = full.new_zeros(())
    # visited[u][v]: (C, C, 2kh-1, 2kw-1) correlations over the pixels patch element (u, v) visits.
    visited = full.new_empty(kh, kw, *full.shape)
    visited_sums = full.new_empty(kh, kw, channels)
    for u in range(kh):
        rows_out = sum((row_terms[r] for r in skipped_rows[u]), zero)
        rows_sum = sums[:, skipped_rows[u], :].sum(dim=(1, 2))
        for v in range(kw):
            cols_out = sum((col_terms[q] for q in skipped_cols[v]), zero)
            corners = sum((corner_terms[(r, q)] for r in skipped_rows[u] for q in skipped_cols[v]), zero)
            visited[u, v] = full - rows_out - cols_out + corners
            cols_sum = sums[:, :, skipped_cols[v]].sum(dim=(1, 2))
            corner_sum = sums[:, skipped_rows[u]][:, :, skipped_cols[v]].sum(dim=(1, 2))
            visited_sums[u, v] = full_sum - rows_sum - cols_sum + corner_sum

    # gram[(c, u, v), (c', u', v')] = visited[u, v, c, c', u' - u + kh - 1, v' - v + kw - 1]
    device = inputs.device
    u = torch.arange(kh, device=device).view(kh, 1, 1, 1)
    v = torch.arange(kw, device=device).view(1, kw, 1, 1)
    u2 = torch.arange(kh, device=device).view(1, 1, kh, 1)
    v2 = torch.arange(kw, device=device).view(1, 1, 1, kw)
    by_offset = visited.permute(0, 1, 4, 5, 2, 3)  # (kh, kw, 2kh-1, 2kw-1, C, C)
    blocks = by_offset[u, v, u2 - u + kh - 1, v2 - v + kw - 1]  # (kh, kw, kh, kw, C, C)
    features = channels * kh * kw
    has_bias = module.bias is not None
    gram = inputs.new_empty(features + has_bias, features + has_bias)
    gram[:features, :features] = blocks.permute(4, 0, 1, 5, 2, 3).reshape(features, features)
    if has_bias:
        gram[:features, -1] = visited_sums.permute(2, 0, 1).reshape(features)
        gram[-1, :features] = gram[:features, -1]
        gram[-1, -1] = batch * out_h * out_w
    # Block (u, v), (u', v') and its mirror come from different correlations: equal up to round-off.
    return gram.add_(gram.T.clone()).mul_(0.5)


def conv_output_gram(grads: Tensor) -> Tensor:
    """``sum_{b, t} g_{b,t} g_{b,t}^T`` of a Conv2d's output gradients ``(batch, O, H_out, W_out)``, shape ``(O, O)``."""
    # Per-sample (O, T) @ (T, O) products: no (batch, T, O) transpose of the gradients is written, and
    # oneDNN's 1x1 weight gradient, the other way without one, is far slower on CPU.
    rows = grads.flatten(2)
    return torch.bmm(rows, rows.transpose(1, 2)).sum(dim=0)
