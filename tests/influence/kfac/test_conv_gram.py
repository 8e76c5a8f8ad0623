"""Patch covariances of stride-1 convolutions from feature-map correlations, against unfolded patches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_pareto.influence.kfac._conv_gram import conv_input_gram, conv_output_gram, supports_shifted_gram

# (in_channels, kernel_size, padding, bias, input (H, W)): odd and even, square and oblong kernels,
# "same", "valid" and full padding, inputs only a little larger than the border strips.
SHIFTED_CASES = {
    "3x3 same": (3, 3, 1, True, (8, 7)),
    "3x3 valid, no bias": (2, 3, 0, False, (6, 9)),
    "5x5 same": (2, 5, 2, True, (9, 6)),
    "3x5 mixed": (2, (3, 5), (1, 1), True, (7, 10)),
    "3x3 full padding": (1, 3, 2, True, (4, 5)),
    "1x1": (4, 1, 0, True, (3, 4)),
    "2x4 uneven": (2, (2, 4), (0, 3), True, (6, 9)),
    "3x3 on 2x2": (3, 3, 1, True, (2, 2)),
    "5x3 padding same": (2, (5, 3), "same", True, (6, 5)),
    "3x3 padding valid": (2, 3, "valid", True, (5, 6)),
}


def _unfolded_gram(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``sum_{b,t} p p^T`` of ``F.unfold`` patches, with a ones column for the bias: the dense reference."""
    padding = {"same": tuple(k // 2 for k in conv.kernel_size), "valid": 0}.get(conv.padding, conv.padding)
    patches = F.unfold(x, conv.kernel_size, padding=padding).transpose(1, 2)
    if conv.bias is not None:
        patches = torch.cat([patches, torch.ones(*patches.shape[:2], 1, dtype=x.dtype)], dim=2)
    rows = patches.flatten(end_dim=1)
    return rows.T @ rows


@pytest.mark.parametrize("case", list(SHIFTED_CASES), ids=list(SHIFTED_CASES))
def test_conv_input_gram_equals_the_unfolded_patch_gram(case: str) -> None:
    channels, kernel, padding, bias, size = SHIFTED_CASES[case]
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 3, kernel, padding=padding, bias=bias).double()
    x = torch.randn(4, channels, *size, dtype=torch.float64)
    assert supports_shifted_gram(conv, x)
    gram = conv_input_gram(conv, x)
    torch.testing.assert_close(gram, _unfolded_gram(conv, x), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(gram, gram.T, rtol=0, atol=0)


def test_conv_input_gram_in_float32_stays_close_to_float64() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(32, 16, 16, 16).relu()  # non-negative, as after a ReLU: no cancellation to hide behind
    reference = _unfolded_gram(conv.double(), x.double())
    gram = conv_input_gram(conv, x)
    assert gram.dtype == torch.float32
    assert ((gram.double() - reference).abs().max() / reference.abs().max()).item() < 1e-5


def test_conv_output_gram_sums_position_outer_products() -> None:
    torch.manual_seed(0)
    grads = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    rows = grads.permute(0, 2, 3, 1).reshape(-1, 5)
    torch.testing.assert_close(conv_output_gram(grads), rows.T @ rows, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("layer", "size"),
    [
        (nn.Conv2d(2, 3, 3, stride=2, padding=1), (8, 8)),
        (nn.Conv2d(2, 3, 3, dilation=2, padding=2), (8, 8)),
        (nn.Conv2d(2, 3, (3, 2), padding="same"), (8, 8)),
        (nn.Conv2d(4, 4, 3, padding=1, groups=2), (8, 8)),
        (nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (8, 8)),
        (nn.Conv2d(2, 3, 5, padding=0), (3, 8)),  # no output row
        (nn.Conv2d(2, 3, 5, padding=0), (5, 7)),  # top and bottom strips overlap
        (nn.Linear(4, 3), None),
    ],
    ids=[
        "stride 2",
        "dilation 2",
        "even kernel padding same",
        "groups 2",
        "reflect",
        "no output",
        "overlapping strips",
        "linear",
    ],
)
def test_layers_outside_the_shifted_route_are_refused(layer: nn.Module, size: tuple[int, int] | None) -> None:
    x = torch.randn(2, 4) if size is None else torch.randn(2, layer.in_channels, *size)
    assert not supports_shifted_gram(layer, x)
