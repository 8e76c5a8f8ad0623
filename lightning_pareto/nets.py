"""Small classifier networks for the examples, tests and paper reproductions.

Every network maps inputs to logits of shape ``(b, num_classes)``, exposes its final ``nn.Linear`` as
``head`` and its penultimate features as :meth:`features`, so "last layer" influence methods can use
``modules=["head"]``. Image networks accept flat inputs ``(b, C*H*W)`` as well as ``(b, C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP", "LogisticRegression", "MnistCNN", "SmallCNN"]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one ``nn.Linear`` named ``head``.

    Args:
        in_features: Number of input features (inputs are flattened).
        num_classes: Number of classes (logits).
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        _check_positive(in_features=in_features, num_classes=num_classes)
        self.head = nn.Linear(in_features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The flattened input, shape ``(b, in_features)``."""
        return x.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(b, num_classes)``."""
        return self.head(self.features(x))


class MLP(nn.Module):
    """Fully connected ReLU network; the last layer is ``head``.

    Args:
        in_features: Number of input features (inputs are flattened).
        num_classes: Number of classes (logits).
        hidden: Widths of the hidden layers, e.g. ``(32,)`` or ``(64, 64)``.
        dropout: Dropout probability after each hidden ReLU (0 disables it).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (32,), dropout: float = 0.0) -> None:
        super().__init__()
        _check_positive(in_features=in_features, num_classes=num_classes)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        layers: list[nn.Module] = []
        width = in_features
        for i, h in enumerate(hidden):
            _check_positive(**{f"hidden[{i}]": h})
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Output of the last hidden layer, shape ``(b, hidden[-1])`` (the input if no hidden layers)."""
        return self.body(x.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(b, num_classes)``."""
        return self.head(self.features(x))


def _as_images(x: Tensor, channels: int, size: int) -> Tensor:
    """Reshape flat inputs ``(b, C*H*W)`` to ``(b, C, H, W)``; pass images through."""
    return x.view(x.shape[0], channels, size, size) if x.ndim == 2 else x


class SmallCNN(nn.Module):
    """Two Conv2d/ReLU/MaxPool blocks and a Linear head, for small square images.

    Args:
        in_channels: Image channels (1 for digits/MNIST, 3 for CIFAR-10).
        num_classes: Number of classes (logits).
        image_size: Height (= width) of the images; must be divisible by 4.
        channels: Output channels of the two convolutions.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, channels: Sequence[int] = (16, 32)) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two 2x2 poolings), got {image_size}.")
        if len(channels) != 2:
            raise ValueError(f"channels must have two entries, got {list(channels)}.")
        self.in_channels, self.image_size = in_channels, image_size
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(channels[1] * (image_size // 4) ** 2, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Flattened convolutional features, shape ``(b, channels[1] * (image_size // 4) ** 2)``."""
        return self.body(_as_images(x, self.in_channels, self.image_size))

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(b, num_classes)``."""
        return self.head(self.features(x))


class MnistCNN(nn.Module):
    """The MNIST network of "Enhancing Prediction Performance through Influence Measure", Table 6, for 1x28x28 inputs.

    Conv2d(32, stride 2, padding 1) -> 32x14x14, ReLU; Conv2d(64, stride 2, padding 1) -> 64x7x7, ReLU;
    Dropout; Linear(256), ReLU; Linear ``head``.

    Args:
        num_classes: Number of classes (logits).
        dropout: Dropout probability before the first Linear layer.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.25) -> None:
        super().__init__()
        _check_positive(num_classes=num_classes)
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 256),
            nn.ReLU(),
        )
        self.head = nn.Linear(256, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The 256 penultimate features, shape ``(b, 256)``."""
        return self.body(_as_images(x, 1, 28))

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(b, num_classes)``."""
        return self.head(self.features(x))
