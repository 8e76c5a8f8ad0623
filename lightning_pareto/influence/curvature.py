"""Damped curvatures of the mean training loss and their inverse-vector products: exact, K-FAC, EKFAC.

``G`` is the mean over training samples of the per-sample GGN or Fisher of the cross-entropy,
restricted to the tracked layers' parameters. Which matrix, by ``fisher``:

- ``"empirical"`` (default): ``(1/n) sum_i grad_i grad_i^T`` with the observed labels. All curvatures.
- ``"sampled"``: the same with labels drawn from the model's softmax (seeded). All curvatures; its
  expectation is the GGN.
- ``"ggn"``: the true GGN ``(1/n) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i``; ``"exact"`` only. For a
  model linear in its tracked parameters (softmax regression) it is the Hessian of the mean loss.

Curvatures:

- ``"exact"``: the dense ``P x P`` matrix in float64 (``torch.func``), inverted by Cholesky; for
  small models (at most ``MAX_EXACT_PARAMETERS`` tracked parameters) and tests.
- ``"kfac"``: per layer ``G_out (x) A_in`` (see ``_kronecker`` for the scaling; Conv2d uses KFC's
  spatially-uncorrelated expansion), eigendecomposed in float64.
- ``"ekfac"``: K-FAC's eigenbases with eigenvalues re-fitted to the per-sample gradients.

K-FAC/EKFAC layers with more than ``TRUNCATE_INPUTS_ABOVE`` (2,048) inputs keep only the leading
input eigendirections (down to 1e-4 of the largest eigenvalue) and treat the rest as one isotropic
block (see ``_kronecker``): the dense eigendecomposition of a 3,137 x 3,137 factor was most of the
cost on seed 000's MNIST CNN, and the influence it gives agrees with the untruncated one to a
Spearman correlation of 0.9999999 there.

Damping ``lambda`` is added to the diagonal (``(G + lambda I)^{-1}``): to the eigenvalues for
K-FAC/EKFAC (so K-FAC inverts ``G_out (x) A_in + lambda I`` exactly), to the dense matrix for exact.
``damping=None`` picks ``DEFAULT_DAMPING_FACTOR`` (0.1) times the largest eigenvalue of the undamped
curvature (over all tracked layers; for exact estimated by power iteration). Relative to the top of
the spectrum, not to its mean: the mean eigenvalue of a trained network's curvature is thousands of
times smaller than the largest (most directions are flat), and at ``0.1 x mean`` the K-FAC/EKFAC
influence has a median Spearman correlation of 0.3-0.4 with the exact one on a digits MLP, against
about 0.9 at ``0.1 x largest`` (see ``benchmarks/RESULTS.md``). A curvature that is singular at the
damping given (a zero damped eigenvalue, or a failed Cholesky factorisation) gets that default added
and a ``UserWarning``.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_pareto.influence._curvature_subset import check_curvature_samples, curvature_batches
from lightning_pareto.influence._exact import dense_curvature
from lightning_pareto.influence._kronecker import KroneckerFactors, corrected_eigenvalues, eigenbases, kronecker_factors
from lightning_pareto.influence._layout import flatten_layout, tracked_parameter_count, unflatten_layout
from lightning_pareto.influence._passes import FISHERS, influence_mode
from lightning_pareto.influence._timings import InfluenceTimings, timed
from lightning_pareto.influence.capture import tracked_modules

__all__ = [
    "CURVATURES",
    "DEFAULT_DAMPING_FACTOR",
    "MAX_EXACT_PARAMETERS",
    "Curvature",
    "ExactCurvature",
    "KroneckerCurvature",
    "KroneckerFactors",
    "fit_curvature",
]

CURVATURES = ("exact", "kfac", "ekfac")
MAX_EXACT_PARAMETERS = 20_000
DEFAULT_DAMPING_FACTOR = 0.1
# A damped eigenvalue below this fraction of the largest counts as singular.
_SINGULAR_RATIO = 1e-12


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


class KroneckerCurvature(Curvature):
    """K-FAC or EKFAC: a block-diagonal curvature, one Kronecker-factored block per tracked layer.

    Args:
        kind: ``"kfac"`` or ``"ekfac"``.
        tracked: Qualified layer name -> tracked layer, in model order.
        layers: Layer name -> ``KroneckerFactors`` (float64, on the model's device).
        damping: ``lambda >= 0`` added to every eigenvalue, or ``None`` for the default.
        fisher: ``"empirical"`` or ``"sampled"``.
    """

    def __init__(
        self,
        kind: str,
        tracked: Mapping[str, nn.Module],
        layers: Mapping[str, KroneckerFactors],
        damping: float | None,
        fisher: str,
    ) -> None:
        self.kind = kind
        self.tracked = dict(tracked)
        self.layers = dict(layers)
        self.fisher = fisher
        eigenvalues = torch.cat([
            torch.cat([layer.eigenvalues.flatten(), layer.residual if layer.residual is not None else layer.eigenvalues[:0, 0]])
            for layer in self.layers.values()
        ])  # fmt: skip
        self.largest_eigenvalue = float(eigenvalues.max())
        resolved = resolve_damping(damping, self.largest_eigenvalue)
        smallest, largest = float(eigenvalues.min()) + resolved, float(eigenvalues.max()) + resolved
        if smallest <= _SINGULAR_RATIO * max(largest, 0.0):
            resolved = _more_damping(resolved, self.largest_eigenvalue, f"{kind} curvature has a zero damped eigenvalue")
        self.damping = resolved

    def inverse_hvp(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Apply ``(G + damping I)^{-1}`` block-wise: rotate into the eigenbasis, divide, rotate back.

        See ``Curvature.inverse_hvp``. The rotations run in the dtype of ``grads`` (the float64
        eigenbases cast to it): float32 vectors get float32 matmuls, float64 vectors float64 ones.
        """
        _check_layers(self.tracked, grads)
        return {name: layer.inverse(grads[name], self.damping) for name, layer in self.layers.items()}

    def with_damping(self, damping: float | None) -> KroneckerCurvature:
        """See ``Curvature.with_damping``."""
        return KroneckerCurvature(self.kind, self.tracked, self.layers, damping, self.fisher)


class ExactCurvature(Curvature):
    """The dense damped curvature over all tracked parameters, factorised by Cholesky in float64.

    Args:
        tracked: Qualified layer name -> tracked layer, in model order (the flat layout order).
        matrix: float64 tensor of shape ``(P, P)``: the undamped mean GGN/Fisher in the flat layout.
        damping: ``lambda >= 0`` added to the diagonal, or ``None`` for the default.
        fisher: ``"empirical"``, ``"sampled"`` or ``"ggn"``.
    """

    kind = "exact"

    def __init__(self, tracked: Mapping[str, nn.Module], matrix: Tensor, damping: float | None, fisher: str) -> None:
        if not torch.isfinite(matrix).all():
            raise FloatingPointError(
                "the exact curvature is not finite: the model or the training data produce NaN/inf gradients"
            )
        self.tracked = dict(tracked)
        self.matrix = matrix
        self.fisher = fisher
        self.largest_eigenvalue = _largest_eigenvalue(matrix)
        resolved = resolve_damping(damping, self.largest_eigenvalue)
        identity = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        factor, info = torch.linalg.cholesky_ex(matrix + resolved * identity)
        if int(info) != 0:
            resolved = _more_damping(resolved, self.largest_eigenvalue, "exact curvature is not positive definite")
            factor = torch.linalg.cholesky(matrix + resolved * identity)
        self.damping = resolved
        self._cholesky = factor

    def inverse_hvp(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Apply ``(G + damping I)^{-1}`` to the flat vectors with the Cholesky factor.

        See ``Curvature.inverse_hvp``; computed in float64.
        """
        _check_layers(self.tracked, grads)
        dtype = next(iter(grads.values())).dtype
        flat = flatten_layout(self.tracked, {name: grads[name].double() for name in self.tracked})
        solved = torch.cholesky_solve(flat.T, self._cholesky).T
        return {name: value.to(dtype) for name, value in unflatten_layout(self.tracked, solved).items()}

    def with_damping(self, damping: float | None) -> ExactCurvature:
        """See ``Curvature.with_damping``."""
        return ExactCurvature(self.tracked, self.matrix, damping, self.fisher)


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


def _more_damping(damping: float, largest_eigenvalue: float, reason: str) -> float:
    added = resolve_damping(None, largest_eigenvalue)
    warnings.warn(
        f"{reason} at damping {damping:g}; adding {added:g} ({DEFAULT_DAMPING_FACTOR} x largest eigenvalue). "
        "Pass a larger damping to silence this.",
        UserWarning,
        stacklevel=3,
    )
    return damping + added


def _largest_eigenvalue(matrix: Tensor, iterations: int = 200, tolerance: float = 1e-6) -> float:
    # Power iteration from a fixed start: deterministic, O(P^2) per step instead of eigvalsh's O(P^3).
    vector = torch.linspace(1.0, 2.0, matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    vector /= vector.norm()
    estimate = 0.0
    for _ in range(iterations):
        image = matrix @ vector
        previous, estimate = estimate, float(vector @ image)
        norm = image.norm()
        if norm == 0 or abs(estimate - previous) <= tolerance * abs(estimate):
            break
        vector = image / norm
    return estimate


def _check_layers(tracked: Mapping[str, nn.Module], grads: Mapping[str, Tensor]) -> None:
    if set(grads) != set(tracked):
        raise ValueError(f"grads must have one entry per tracked layer {list(tracked)}, got {list(grads)}")


def check_options(curvature: str, fisher: str) -> None:
    """Validate the ``curvature`` and ``fisher`` arguments.

    Raises:
        ValueError: If either is unknown, or ``fisher="ggn"`` is asked of K-FAC/EKFAC.
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if fisher not in FISHERS:
        raise ValueError(f"fisher must be one of {FISHERS}, got {fisher!r}")
    if fisher == "ggn" and curvature != "exact":
        raise ValueError(f"fisher='ggn' needs curvature='exact'; {curvature} supports 'empirical' and 'sampled'")


def fit_curvature(
    model: nn.Module,
    train_loader: Iterable,
    *,
    curvature: str = "ekfac",
    damping: float | None = None,
    modules: Sequence[str] | None = None,
    fisher: str = "empirical",
    seed: int = 0,
    curvature_samples: int | None = None,
    progress: bool | None = None,
    timings: InfluenceTimings | None = None,
) -> Curvature:
    """Fit a damped curvature of the mean training loss over the tracked layers.

    The passes run in eval mode without autocast on the model's device; the model's training flags
    and ``requires_grad`` are restored afterwards and no parameter ``.grad`` is written. Under
    ``torch.distributed`` every rank passes its shard of the training set and the statistics are
    summed over ranks (a collective: all ranks must call it), so every rank gets the same curvature.

    Args:
        model: A classifier returning logits ``(batch, num_classes)``.
        train_loader: Yields ``(x, y)`` or ``(x, y, index)``; iterated once (``"exact"``, ``"kfac"``)
            or twice (``"ekfac"``).
        curvature: ``"exact"``, ``"kfac"`` or ``"ekfac"``.
        damping: ``lambda >= 0`` added to the curvature's diagonal/eigenvalues, or ``None`` for
            ``DEFAULT_DAMPING_FACTOR`` times the largest eigenvalue.
        modules: Qualified names of the layers to track; ``None`` tracks every Linear/Conv2d.
        fisher: ``"empirical"``, ``"sampled"`` or (exact only) ``"ggn"``.
        seed: Seed of the label sampler for ``fisher="sampled"`` and of the ``curvature_samples`` subset.
        curvature_samples: Fit on about this many training samples, a seeded systematic subset of the
            loader's rows (see ``_curvature_subset``), or ``None`` (default) for every sample. The
            passes cost time in proportion to the samples they see.
        progress: Progress bars: ``True``, ``False`` or ``None`` (only when stderr is a terminal).
        timings: Filled with the seconds of the ``factors``, ``eigen`` and ``correction`` phases.

    Returns:
        A ``KroneckerCurvature`` or ``ExactCurvature``.

    Raises:
        ValueError: On an unknown option, untrackable ``modules``, an exact curvature over more than
            ``MAX_EXACT_PARAMETERS`` parameters, an empty loader, or ``curvature_samples`` below 1 or
            given for a loader without a sized ``dataset``.
        FloatingPointError: If the curvature is not finite (NaN/inf in the model or the data).
    """
    check_options(curvature, fisher)
    resolve_damping(damping, 1.0)  # validate before any pass
    check_curvature_samples(curvature_samples)
    tracked = tracked_modules(model, modules)
    return fit_tracked_curvature(
        model, train_loader, tracked, curvature=curvature, damping=damping, fisher=fisher, seed=seed,
        curvature_samples=curvature_samples, progress=progress, timings=timings,
    )  # fmt: skip


def fit_tracked_curvature(
    model: nn.Module,
    train_loader: Iterable,
    tracked: Mapping[str, nn.Module],
    *,
    curvature: str,
    damping: float | None,
    fisher: str,
    seed: int,
    curvature_samples: int | None = None,
    progress: bool | None,
    timings: InfluenceTimings | None,
) -> Curvature:
    """``fit_curvature`` for layers already selected by ``tracked_modules`` and validated options."""
    train_loader = curvature_batches(train_loader, curvature_samples, seed)
    if curvature == "exact":
        count = tracked_parameter_count(tracked)
        if count > MAX_EXACT_PARAMETERS:
            raise ValueError(
                f"curvature='exact' builds a dense {count} x {count} matrix, above MAX_EXACT_PARAMETERS="
                f"{MAX_EXACT_PARAMETERS}: use curvature='ekfac', or track fewer layers with modules=[...]"
            )
    with influence_mode(model) as device:
        if curvature == "exact":
            with timed(timings, "factors", device):
                matrix = dense_curvature(model, train_loader, tracked, fisher=fisher, seed=seed, progress=progress)
            with timed(timings, "eigen", device):
                return ExactCurvature(tracked, matrix, damping, fisher)
        with timed(timings, "factors", device):
            factors = kronecker_factors(model, train_loader, tracked, fisher=fisher, seed=seed, progress=progress)
        with timed(timings, "eigen", device):
            layers = eigenbases(factors)
        if curvature == "ekfac":
            with timed(timings, "correction", device):
                layers = corrected_eigenvalues(
                    model, train_loader, tracked, layers, fisher=fisher, seed=seed, progress=progress
                )
        return KroneckerCurvature(curvature, tracked, layers, damping, fisher)
