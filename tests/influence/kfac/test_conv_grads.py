"""Per-sample Conv2d gradients from a batch-grouped weight gradient, against torch.func per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from lightning_pareto.influence.kfac._conv_grads import grouped_gradients_pay, per_sample_conv_gradients

CONV_CASES = {
    "3x3 padded": dict(kernel_size=3, padding=1),
    "stride 2": dict(kernel_size=3, stride=2, padding=1),
    "dilated same": dict(kernel_size=(3, 5), dilation=2, padding="same"),
    "valid, no bias": dict(kernel_size=3, padding="valid", bias=False),
    "oblong stride": dict(kernel_size=2, stride=(2, 1), padding=(1, 0)),
}


@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_per_sample_conv_gradients_equal_vmapped_autograd(case: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, **CONV_CASES[case]).double()
    # Two calls of the layer (weight sharing): each sample's gradient sums over both.
    x1, x2 = torch.randn(6, 8, 9, 8, dtype=torch.float64), torch.randn(6, 8, 9, 8, dtype=torch.float64)
    target = torch.randn_like(conv(x1))
    params = dict(conv.named_parameters())

    def loss(p: dict, a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ((functional_call(conv, p, (a[None],)) + functional_call(conv, p, (b[None],)) - t[None]) ** 2).sum()

    expected = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x1, x2, target)
    reference = expected["weight"].flatten(2)
    if conv.bias is not None:
        reference = torch.cat([reference, expected["bias"][:, :, None]], dim=2)
    output_grad = 2 * (conv(x1) + conv(x2) - target).detach()  # d loss / d output, the same for both calls
    assert grouped_gradients_pay(conv, [x1, x2])
    got = per_sample_conv_gradients(conv, [x1, x2], [output_grad, output_grad], 1, 5)
    torch.testing.assert_close(got, reference[1:5], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(32, 64, 3),
        nn.Conv2d(3, 16, 3),
        nn.Conv2d(8, 8, 3, groups=2),
        nn.Conv2d(8, 3, 2, padding="same"),
        nn.Linear(3, 2),
    ],
    ids=["wide", "few input channels", "grouped", "one-sided same", "linear"],
)
def test_the_grouped_route_is_declined_where_it_is_slower_or_wrong(layer: nn.Module) -> None:
    x = torch.randn(2, 3) if isinstance(layer, nn.Linear) else torch.randn(2, layer.in_channels, 6, 6)
    assert not grouped_gradients_pay(layer, [x])


def test_the_grouped_route_matches_the_patch_route_inside_category_influence() -> None:
    from lightning_pareto.influence import category_influence
    from lightning_pareto.influence.kfac import _conv_grads

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)).double()
    x, y = torch.randn(40, 8, 6, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    train, val = [(x[:24], y[:24]), (x[24:32], y[24:32])], [(x[32:], y[32:])]
    grouped = category_influence(model, train, val, 3, damping=0.1, progress=False)
    limit = _conv_grads._GROUPED_MAX_CHANNEL_PRODUCT
    try:
        _conv_grads._GROUPED_MAX_CHANNEL_PRODUCT = 0  # every conv through the patches
        patches = category_influence(model, train, val, 3, damping=0.1, progress=False)
    finally:
        _conv_grads._GROUPED_MAX_CHANNEL_PRODUCT = limit
    torch.testing.assert_close(grouped, patches, rtol=1e-9, atol=1e-12)
