"""Networks: logits shapes, the ``head`` / ``features`` contract, the FI paper's MNIST layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_pareto.nets import MLP, LogisticRegression, MnistCNN, SmallCNN

NETS = {
    "logistic": (lambda: LogisticRegression(12, 3), (4, 12)),
    "mlp": (lambda: MLP(12, 3, hidden=(8, 5), dropout=0.1), (4, 12)),
    "small_cnn": (lambda: SmallCNN(2, 3, image_size=8), (4, 2, 8, 8)),
    "mnist_cnn": (lambda: MnistCNN(3), (4, 1, 28, 28)),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_forward_is_head_of_features_and_gives_logits(name: str) -> None:
    make, shape = NETS[name]
    net = make().eval()
    x = torch.randn(*shape)
    assert isinstance(net.head, nn.Linear) and net.head.out_features == 3
    logits = net(x)
    assert logits.shape == (4, 3)
    torch.testing.assert_close(logits, net.head(net.features(x)))


@pytest.mark.parametrize("name", ["small_cnn", "mnist_cnn"])
def test_image_nets_accept_flat_inputs(name: str) -> None:
    make, shape = NETS[name]
    net = make().eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(net(x.flatten(1)), net(x))


def test_mnist_cnn_follows_table_6_of_seed_000() -> None:
    net = MnistCNN(10)
    shapes = []
    x = torch.zeros(1, 1, 28, 28)
    for layer in net.body:
        x = layer(x)
        if isinstance(layer, nn.Conv2d):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(32, 14, 14), (64, 7, 7)]
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [256, 10]
    assert any(isinstance(m, nn.Dropout) for m in net.modules())


def test_mlp_is_linear_relu_stack_with_requested_widths() -> None:
    net = MLP(64, 10, hidden=(32, 16))
    widths = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]
    assert widths == [(64, 32), (32, 16), (16, 10)]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MLP(0, 3), "in_features"),
        (lambda: MLP(4, 3, hidden=(0,)), r"hidden\[0\]"),
        (lambda: MLP(4, 3, dropout=1.0), "dropout"),
        (lambda: SmallCNN(1, 3, image_size=10), "divisible by 4"),
        (lambda: LogisticRegression(4, 0), "num_classes"),
    ],
)
def test_bad_sizes_are_rejected(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]
