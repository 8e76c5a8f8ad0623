"""Capture hooks reproduce per-sample gradients; layer selection warns and fails as documented."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _influence_reference import single_thread  # noqa: F401 - fixture
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lightning_pareto.influence import LayerCapture, tracked_modules
from lightning_pareto.influence._layout import (
    flatten_layout,
    layout_from_named,
    layout_to_named,
    matrix_to_weight_bias,
    unflatten_layout,
    weight_bias_to_matrix,
)

pytestmark = pytest.mark.usefixtures("single_thread")


class Zoo(nn.Module):
    """Conv2d with integer, "same" (even kernel) and strided/dilated padding, a bias-free conv, a
    Linear over a sequence axis and a Linear called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_int = nn.Conv2d(2, 3, 3, padding=1)
        self.conv_same = nn.Conv2d(3, 4, (2, 3), padding="same", dilation=(1, 2))
        self.conv_strided = nn.Conv2d(4, 4, 3, stride=2, dilation=2, padding=2, bias=False)
        self.sequence = nn.Linear(4, 5)
        self.shared = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.tanh(self.conv_same(torch.tanh(self.conv_int(x))))
        x = torch.tanh(self.conv_strided(x))  # (b, 4, 4, 4)
        tokens = torch.tanh(self.sequence(x.flatten(2).transpose(1, 2)))  # (b, 16, 5)
        tokens = torch.tanh(self.shared(torch.tanh(self.shared(tokens))))
        return self.head(tokens.mean(dim=1))


def test_captured_inputs_and_output_grads_give_per_sample_gradients() -> None:
    torch.manual_seed(0)
    model = Zoo().double()
    x, y = torch.randn(5, 2, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    tracked = tracked_modules(model)
    assert list(tracked) == ["conv_int", "conv_same", "conv_strided", "sequence", "shared", "head"]

    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    expected = layout_from_named(tracked, vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y))
    with LayerCapture(tracked) as capture:
        total = F.cross_entropy(model(x), y, reduction="sum")
        torch.autograd.grad(total, [m.weight for m in tracked.values()])
        for name in tracked:
            a, g = capture.layer(name)
            per_sample = torch.einsum("bto,bti->boi", g, a)
            torch.testing.assert_close(per_sample, expected[name], rtol=1e-10, atol=1e-12)
    assert all(not m._forward_hooks for m in model.modules())


def test_hooks_are_removed_when_the_block_raises() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(RuntimeError, match="boom"), LayerCapture(tracked_modules(model)):
        assert model[0]._forward_hooks
        raise RuntimeError("boom")
    assert not model[0]._forward_hooks


def test_layer_not_reached_by_backward_is_an_error() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    with LayerCapture(tracked_modules(model)) as capture, torch.no_grad():
        model(torch.randn(4, 3))
        with pytest.raises(RuntimeError, match="no output gradient reached"):
            capture.layer("0")


def test_layout_round_trips() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 4, bias=False))
    tracked = tracked_modules(model)
    conv = model[0]
    matrix = weight_bias_to_matrix(conv, conv.weight[None], conv.bias[None])
    assert matrix.shape == (1, 3, 19)
    torch.testing.assert_close(matrix[0, :, -1], conv.bias)
    weight, bias = matrix_to_weight_bias(conv, matrix)
    torch.testing.assert_close(weight[0], conv.weight)
    torch.testing.assert_close(bias[0], conv.bias)
    named = {name: p.detach()[None].repeat(2, *[1] * p.dim()) for name, p in model.named_parameters()}
    layout = layout_from_named(tracked, named)
    flat = flatten_layout(tracked, layout)
    assert flat.shape == (2, 3 * 19 + 4 * 12)
    back = layout_to_named(tracked, unflatten_layout(tracked, flat))
    assert back.keys() == named.keys()
    for key in named:
        torch.testing.assert_close(back[key], named[key])


class WithNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.grouped = nn.Conv2d(4, 4, 1, groups=2)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)


def test_unsupported_parameterised_layers_are_listed_in_one_warning() -> None:
    with pytest.warns(UserWarning) as record:
        tracked = tracked_modules(WithNorms())
    assert list(tracked) == ["head"]
    messages = [str(w.message) for w in record]
    assert len(messages) == 1
    for name in ["embed (Embedding)", "grouped (Conv2d)", "norm (LayerNorm)"]:
        assert name in messages[0]


def test_named_modules_track_only_those_without_warning(recwarn) -> None:
    tracked = tracked_modules(WithNorms(), ["head"])
    assert list(tracked) == ["head"]
    assert not recwarn.list


@pytest.mark.parametrize(
    ("modules", "error", "match"),
    [
        (["nope"], ValueError, r"not in the model; trackable layers are \['head'\]"),
        (["norm"], ValueError, "not trackable"),
        ([], ValueError, "modules is empty"),
        ("head", TypeError, r"use \['head'\]"),
    ],
)
def test_bad_module_names_are_rejected(modules, error, match) -> None:
    with pytest.raises(error, match=match):
        tracked_modules(WithNorms(), modules)


def test_model_without_trackable_layer_is_an_error() -> None:
    model = nn.Sequential(nn.LayerNorm(4), nn.ReLU())
    with pytest.raises(ValueError, match=r"no trackable layer.*0 \(LayerNorm\)"):
        tracked_modules(model)


def test_passes_capture_exact_gradients_through_in_place_ops_without_touching_parameters() -> None:
    from lightning_pareto.influence._passes import captured_batches, influence_mode

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True), nn.Linear(5, 4, bias=False)).double()
    x, y = torch.randn(9, 6, dtype=torch.float64), torch.randint(0, 4, (9,))
    tracked = tracked_modules(model)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    expected = layout_from_named(tracked, vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y))
    with influence_mode(model):
        (batch,) = captured_batches(model, [(x, y)], tracked, desc="test", progress=False)
    for name, (a, g) in batch.layers.items():
        torch.testing.assert_close(torch.einsum("bto,bti->boi", g, a), expected[name], rtol=1e-10, atol=1e-12)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def _reference_patches(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``F.unfold`` patches transposed to ``(batch, T, C_in kh kw)``, plus a ones column for a bias."""
    padding = conv.padding
    if padding == "same":
        pads = []  # F.pad order (left, right, top, bottom); PyTorch puts the odd pixel right/bottom
        for kernel, dilation in zip(reversed(conv.kernel_size), reversed(conv.dilation)):
            total = dilation * (kernel - 1)
            pads += [total // 2, total - total // 2]
        x, padding = F.pad(x, pads), 0
    elif padding == "valid":
        padding = 0
    rows = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride).transpose(1, 2)
    if conv.bias is None:
        return rows
    return torch.cat([rows, torch.ones(*rows.shape[:2], 1, dtype=rows.dtype)], dim=2)


CONV_CASES = {
    "padded 3x3": (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (5, 3, 8, 8)),
    "stride 2": (dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1), (4, 2, 9, 7)),
    "dilation 2": (dict(in_channels=2, out_channels=3, kernel_size=3, dilation=2, padding=2), (3, 2, 9, 9)),
    "same, even kernel": (dict(in_channels=3, out_channels=2, kernel_size=(2, 4), padding="same"), (2, 3, 7, 6)),
    "same, dilated": (
        dict(in_channels=2, out_channels=2, kernel_size=(2, 3), padding="same", dilation=(3, 2)),
        (2, 2, 8, 9),
    ),
    "valid": (dict(in_channels=2, out_channels=2, kernel_size=3, padding="valid"), (3, 2, 6, 5)),
    "no bias": (dict(in_channels=3, out_channels=2, kernel_size=3, padding=1, bias=False), (3, 3, 5, 5)),
    "non-square kernel, stride, padding": (
        dict(in_channels=2, out_channels=3, kernel_size=(3, 1), stride=(2, 1), padding=(1, 2), dilation=(1, 3)),
        (2, 2, 7, 6),
    ),
    "batch of 1": (dict(in_channels=4, out_channels=2, kernel_size=3, stride=2, padding=1), (1, 4, 6, 6)),
    "empty batch": (dict(in_channels=2, out_channels=2, kernel_size=3, padding=1), (0, 2, 4, 4)),
    "kernel covers input": (dict(in_channels=2, out_channels=2, kernel_size=4), (2, 2, 4, 4)),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_inputs_and_grads_equal_the_unfold_reference(case: str, dtype: torch.dtype) -> None:
    from lightning_pareto.influence.capture import layer_inputs, layer_output_grads

    torch.manual_seed(0)
    kwargs, shape = CONV_CASES[case]
    conv = nn.Conv2d(**kwargs).to(dtype)
    x = torch.randn(shape, dtype=dtype)
    x[..., 0, 0] = -0.0  # signed zeros and non-finite values are copied, not computed with
    if shape[0]:
        x[0, 0, -1, -1] = float("nan")
        x[-1, -1, 1, 0] = float("-inf")
    expected = _reference_patches(conv, x)
    for inputs in (x, x.contiguous(memory_format=torch.channels_last)):
        a = layer_inputs(conv, inputs)
        assert a.shape == expected.shape and a.dtype == dtype and a.is_contiguous()
        torch.testing.assert_close(a, expected, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(a.signbit(), expected.signbit())
    out = conv(x)
    assert a.shape[1] == out.shape[2] * out.shape[3]
    grads = torch.randn_like(out)
    for grads_in in (grads, grads.contiguous(memory_format=torch.channels_last)):
        g = layer_output_grads(conv, grads_in)
        assert g.is_contiguous()
        assert torch.equal(g, grads.flatten(start_dim=2).transpose(1, 2))
    # out=: written in place, also into a slice of a larger buffer along the position axis.
    buffer = torch.full((shape[0], 2 * a.shape[1] + 1, a.shape[2]), 7.0, dtype=dtype)
    result = layer_inputs(conv, x, out=buffer[:, 1 : 1 + a.shape[1]])
    assert result.data_ptr() == buffer[:, 1:].data_ptr()
    torch.testing.assert_close(buffer[:, 1 : 1 + a.shape[1]], expected, rtol=0, atol=0, equal_nan=True)
    assert (buffer[:, 0] == 7).all() and (buffer[:, 1 + a.shape[1] :] == 7).all()


class TwiceConv(nn.Module):
    """A strided conv called twice (positions of both calls concatenated) and a Linear head with bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, stride=2, padding=1)
        self.bare = nn.Conv2d(2, 3, 2, bias=False)
        self.head = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.tanh(self.conv(torch.tanh(self.conv(x))))  # (b, 2, 4, 4)
        return self.head(torch.tanh(self.bare(x)).flatten(1))


def test_reused_buffers_give_the_same_rows_as_fresh_tensors() -> None:
    torch.manual_seed(0)
    model = TwiceConv().double()
    tracked = tracked_modules(model)
    names = list(tracked)
    pointers: list[dict[str, tuple[int, int]]] = []
    with LayerCapture(tracked) as fresh, LayerCapture(tracked, reuse_buffers=True) as reused:
        for size in (5, 5, 3, 6):  # a smaller batch reuses the buffer, a larger one grows it
            x, y = torch.randn(size, 2, 16, 16, dtype=torch.float64), torch.randint(0, 4, (size,))
            fresh.clear()
            reused.clear()
            loss = F.cross_entropy(model(x), y, reduction="sum")
            torch.autograd.grad(loss, [m.weight for m in tracked.values()])
            pointers.append({})
            for name in names:
                (a, g), (a_reused, g_reused) = fresh.layer(name), reused.layer(name)
                assert a_reused.is_contiguous() and g_reused.is_contiguous()
                assert torch.equal(a, a_reused) and torch.equal(g, g_reused)
                pointers[-1][name] = (a_reused.data_ptr(), g_reused.data_ptr())
            a, _ = reused.layer("conv")
            assert a.shape == (size, 64 + 16, 19)
            second = _reference_patches(tracked["conv"], torch.tanh(tracked["conv"](x))).detach()
            assert torch.equal(a[:, 64:], second)
    assert pointers[0]["conv"] == pointers[1]["conv"] == pointers[2]["conv"]
    assert pointers[0]["bare"] == pointers[1]["bare"]


def test_channels_last_batches_give_the_same_rows_and_conv_grads_are_not_copied() -> None:
    # The passes feed channels-last batches: the rows must equal those of the contiguous batch, and a
    # conv layer called once keeps channels-last output gradients' rows as a view (no gather into a buffer).
    from lightning_pareto.nets import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(2, 4, 8).double().eval()
    tracked = tracked_modules(model)
    x, y = torch.randn(5, 2, 8, 8, dtype=torch.float64), torch.randint(0, 4, (5,))
    rows, views = [], []
    for batch in (x, x.contiguous(memory_format=torch.channels_last)):
        with LayerCapture(tracked, reuse_buffers=True, probe=True) as capture:
            loss = F.cross_entropy(model(batch), y, reduction="sum")
            torch.autograd.grad(loss, capture.probes())
            rows.append({name: tuple(t.clone() for t in capture.layer(name)) for name in tracked})
            if batch is not x:
                views = [
                    name
                    for name, module in tracked.items()
                    if isinstance(module, nn.Conv2d)
                    and capture.raw(name)[1][0].is_contiguous(memory_format=torch.channels_last)
                    and capture.layer(name)[1].data_ptr() == capture.raw(name)[1][0].data_ptr()
                ]
    assert views == ["body.0", "body.3"]
    for name in tracked:
        for contiguous_rows, channels_last_rows in zip(rows[0][name], rows[1][name]):
            torch.testing.assert_close(channels_last_rows, contiguous_rows, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_passes_feed_channels_last_batches_also_of_one_channel(channels: int) -> None:
    # A (b, 1, H, W) batch is contiguous in both orders; the passes give it channels-last strides so
    # that the convolutions answer channels-last (their gradients are rows without a copy).
    from lightning_pareto.influence._passes import captured_batches, influence_mode
    from lightning_pareto.nets import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(channels, 4, 8).double()
    tracked = tracked_modules(model)
    x, y = torch.randn(6, channels, 8, 8, dtype=torch.float64), torch.randint(0, 4, (6,))
    with LayerCapture(tracked) as reference:
        loss = F.cross_entropy(model.eval()(x), y, reduction="sum")
        torch.autograd.grad(loss, [m.weight for m in tracked.values()])
        expected = {name: reference.layer(name) for name in tracked}
    with influence_mode(model):
        (batch,) = list(captured_batches(model, [(x, y)], tracked, desc="test", progress=False))
        for name, module in tracked.items():
            if isinstance(module, nn.Conv2d):
                assert batch.raw(name)[1][0].is_contiguous(memory_format=torch.channels_last)
            for got, want in zip(batch.layers[name], expected[name]):
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
