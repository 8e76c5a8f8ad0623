"""Synthetic 2-D data sets from the papers: Gaussians, moons (crescents), circular-uniform classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.datasets import make_moons

from lightning_pareto.data._noise import flip_labels_per_class
from lightning_pareto.data.base import ClassificationDataModule, LoadedData

__all__ = ["CircularDataModule", "GaussiansDataModule", "MoonsDataModule"]


def _class_sizes(total: int, num_classes: int) -> list[int]:
    return [total // num_classes + (c < total % num_classes) for c in range(num_classes)]


class GaussiansDataModule(ClassificationDataModule):
    """Two isotropic 2-D Gaussians, the linear data-trimming setting of
    "Enhancing Prediction Performance through Influence Measure" (section 6.1).

    The defaults give that paper's sizes: 150 training, 100 validation and 600 test samples.

    Args:
        num_samples: Total number of samples, split evenly between the classes.
        separation: Distance between the two class means, placed at ``(-s/2, 0)`` and ``(s/2, 0)``.
        std: Standard deviation of each coordinate.
        val_size: See :class:`ClassificationDataModule` (default 100 samples).
        test_size: See :class:`ClassificationDataModule` (default 600 samples).
        **kwargs: The other :class:`ClassificationDataModule` arguments (``batch_size``, ``seed``,
            ``label_noise``, ...).
    """

    def __init__(
        self,
        num_samples: int = 850,
        separation: float = 2.0,
        std: float = 1.0,
        *,
        val_size: int | float = 100,
        test_size: int | float | None = 600,
        standardize: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(val_size=val_size, test_size=test_size, standardize=standardize, **kwargs)
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}.")
        self.num_samples, self.separation, self.std = num_samples, separation, std

    def load(self) -> LoadedData:
        rng = np.random.default_rng(self.seed)
        sizes = _class_sizes(self.num_samples, 2)
        centers = np.array([[-self.separation / 2, 0.0], [self.separation / 2, 0.0]])
        x = np.concatenate([rng.normal(centers[c], self.std, size=(n, 2)) for c, n in enumerate(sizes)])
        y = np.repeat(np.arange(2), sizes)
        return LoadedData(x.astype(np.float32), y, ["0", "1"])


class MoonsDataModule(ClassificationDataModule):
    """Two interleaved crescents (scikit-learn's moons), the non-linear setting of the FI paper (section 6.1).

    The defaults give that paper's sizes: 500 training, 250 validation and 250 test samples.

    Args:
        num_samples: Total number of samples.
        noise: Standard deviation of the Gaussian noise added to the crescents.
        val_size: See :class:`ClassificationDataModule` (default 250 samples).
        test_size: See :class:`ClassificationDataModule` (default 250 samples).
        **kwargs: The other :class:`ClassificationDataModule` arguments.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        noise: float = 0.2,
        *,
        val_size: int | float = 250,
        test_size: int | float | None = 250,
        standardize: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(val_size=val_size, test_size=test_size, standardize=standardize, **kwargs)
        self.num_samples, self.noise = num_samples, noise

    def load(self) -> LoadedData:
        x, y = make_moons(n_samples=self.num_samples, noise=self.noise, random_state=self.seed)
        return LoadedData(x.astype(np.float32), y.astype(np.int64), ["0", "1"])


def _uniform_disk(
    rng: np.random.Generator, n: int, center: tuple[float, float], radius: float | Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``n`` points uniform in a disk; a ``radius`` that depends on the angle gives a star-shaped region."""
    theta = rng.uniform(0.0, 2 * np.pi, n)
    r = np.sqrt(rng.uniform(0.0, 1.0, n)) * (radius(theta) if callable(radius) else radius)
    return np.stack([center[0] + r * np.cos(theta), center[1] + r * np.sin(theta)], axis=1)


class CircularDataModule(ClassificationDataModule):
    """Two classes drawn uniformly from disks, the synthetic sets of
    "What Is The Performance Ceiling of My Classifier?" (appendix A.1.1, Figure 2).

    ``variant="separable"`` (Figure 2A): 300 "blue" and 300 "orange" samples from two disjoint disks;
    50 blue and 20 orange training labels are flipped. ``variant="nonseparable"`` (Figure 2D): 350
    samples per class; the orange disk overlaps the blue one and its radius changes with the angle
    from its centre, so no line separates the classes; no labels are flipped. The disk geometry is
    ours (the paper does not give it).

    Args:
        variant: ``"separable"`` or ``"nonseparable"``.
        samples_per_class: Samples per class (``None``: 300 or 350 as in the paper).
        flips_per_class: Training labels flipped per class ``[blue, orange]`` (``None``: the paper's
            ``[50, 20]`` for separable, none for nonseparable; ``[]`` disables flips). Not combinable
            with ``label_noise``.
        **kwargs: The other :class:`ClassificationDataModule` arguments.
    """

    def __init__(
        self,
        variant: str = "separable",
        samples_per_class: int | None = None,
        flips_per_class: list[int] | None = None,
        *,
        standardize: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(standardize=standardize, **kwargs)
        if variant not in ("separable", "nonseparable"):
            raise ValueError(f"variant must be 'separable' or 'nonseparable', got {variant!r}.")
        if flips_per_class is None:
            flips_per_class = [50, 20] if variant == "separable" else []
        if flips_per_class and self.label_noise > 0:
            raise ValueError("set either flips_per_class or label_noise, not both (flips_per_class=[] disables it).")
        if flips_per_class and (len(flips_per_class) != 2 or min(flips_per_class) < 0):
            raise ValueError(f"flips_per_class must be two non-negative counts [blue, orange], got {flips_per_class}.")
        self.variant = variant
        self.samples_per_class = samples_per_class or (300 if variant == "separable" else 350)
        self.flips_per_class = list(flips_per_class)

    def load(self) -> LoadedData:
        rng = np.random.default_rng(self.seed)
        n = self.samples_per_class
        if self.variant == "separable":
            blue = _uniform_disk(rng, n, (-1.2, 0.0), 1.0)
            orange = _uniform_disk(rng, n, (1.2, 0.0), 1.0)
        else:
            blue = _uniform_disk(rng, n, (-0.4, 0.0), 1.0)
            orange = _uniform_disk(rng, n, (0.6, 0.0), lambda theta: 0.5 + 0.9 * np.abs(np.sin(theta)))
        x = np.concatenate([blue, orange]).astype(np.float32)
        y = np.repeat(np.arange(2), n)
        return LoadedData(x, y, ["blue", "orange"])

    def _corrupt_labels(self, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.flips_per_class:
            return flip_labels_per_class(y, self.flips_per_class, 2, rng)
        return super()._corrupt_labels(y, rng)
