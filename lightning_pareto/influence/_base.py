"""The ``Curvature`` interface both engines invert through, and its damping rule.

Damping ``lambda`` is added to the diagonal (``(G + lambda I)^{-1}``): to the eigenvalues for
K-FAC/EKFAC (so K-FAC inverts ``G_out (x) A_in + lambda I`` exactly), to the dense matrix for exact.
``damping=None`` picks ``DEFAULT_DAMPING_FACTOR`` (0.1) times the largest eigenvalue of the undamped
curvature (over all tracked layers). Relative to the top of the spectrum, not to its mean: the mean
eigenvalue of a trained network's curvature is thousands of times smaller than the largest (most
directions are flat), and at ``0.1 x mean`` the K-FAC/EKFAC influence agrees far worse with the exact
one than at ``0.1 x largest`` (``python benchmarks/influence.py --part agreement``; see
``benchmarks/RESULTS.md``). A curvature that is singular at the damping given gets that default
added and a ``UserWarning``.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["DEFAULT_DAMPING_FACTOR", "Curvature", "check_layers", "more_damping", "resolve_damping"]

DEFAULT_DAMPING_FACTOR = 0.1
# A damped eigenvalue below this fraction of the largest counts as singular.
SINGULAR_RATIO = 1e-12


class Curvature(ABC):
    """A fitted, damped curvature over the tracked layers of a model.

    Attributes:
        kind: ``"exact"``, ``"kfac"`` or ``"ekfac"``.
        tracked: Qualified layer name -> tracked ``nn.Linear``/``nn.Conv2d``, in model order.
        damping: The damping ``lambda`` in use (resolved when ``None`` was asked for).
        fisher: ``"empirical"``, ``"sampled"`` or ``"ggn"``.
        largest_eigenvalue: Largest eigenvalue of the undamped curvature (the default damping's scale).
    """

    kind: str
    tracked: dict[str, nn.Module]
    damping: float
    fisher: str
    largest_eigenvalue: float

    @abstractmethod
    def inverse_hvp(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Apply ``(G + damping I)^{-1}`` to ``K`` vectors in the layer layout.

        Args:
            grads: Layer name -> tensor of shape ``(K, out_features, in_features + has_bias)`` (bias
                as the last column; for Conv2d ``in_features = C_in * kh * kw``), one entry per
                tracked layer, on the model's device.

        Returns:
            Layer name -> tensor of the same shape and dtype. K-FAC/EKFAC act block-wise per layer;
            exact couples all tracked layers.
        """

    @abstractmethod
    def with_damping(self, damping: float | None) -> Curvature:
        """The same fitted curvature with another damping (no pass over data).

        Args:
            damping: The new ``lambda >= 0``, or ``None`` for the default heuristic.

        Returns:
            A new ``Curvature`` sharing the fitted matrices.
        """


def resolve_damping(damping: float | None, largest_eigenvalue: float) -> float:
    """The damping to use: the value given, or ``DEFAULT_DAMPING_FACTOR * largest_eigenvalue`` for ``None``.

    Args:
        damping: ``lambda >= 0`` or ``None``.
        largest_eigenvalue: Largest eigenvalue of the undamped curvature (the default damping's scale).

    Returns:
        The damping as a float (1.0 when ``None`` is asked for and the curvature is zero).

    Raises:
        TypeError: If ``damping`` is not a real number.
        ValueError: If ``damping`` is negative or not finite.
    """
    if damping is None:
        default = DEFAULT_DAMPING_FACTOR * largest_eigenvalue
        return default if default > 0.0 else 1.0
    if isinstance(damping, bool) or not isinstance(damping, (int, float)):
        raise TypeError(f"damping must be a float >= 0 or None, got {type(damping).__name__}")
    if not damping >= 0.0 or damping == float("inf"):
        raise ValueError(f"damping must be a finite float >= 0 (or None for the default), got {damping}")
    return float(damping)


def more_damping(damping: float, largest_eigenvalue: float, reason: str) -> float:
    added = resolve_damping(None, largest_eigenvalue)
    warnings.warn(
        f"{reason} at damping {damping:g}; adding {added:g} ({DEFAULT_DAMPING_FACTOR} x largest eigenvalue). "
        "Pass a larger damping to silence this.",
        UserWarning,
        stacklevel=3,
    )
    return damping + added


def check_layers(tracked: Mapping[str, nn.Module], grads: Mapping[str, Tensor]) -> None:
    if set(grads) != set(tracked):
        raise ValueError(f"grads must have one entry per tracked layer {list(tracked)}, got {list(grads)}")
