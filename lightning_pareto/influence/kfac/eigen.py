"""The eigen phase: float64 eigenbases of the K-FAC factors, the input factor of wide layers truncated.

Wide layers (more than ``TRUNCATE_INPUTS_ABOVE`` inputs, e.g. the 3,137 of a Linear after a
flattened feature map) keep only the leading eigenvectors of ``A``: those down to
``TRUNCATION_TOLERANCE`` times its largest eigenvalue (``_eigensolver``). A wide Linear layer's ``A``
is never formed: the factor pass sketches it (``InputSketch``: ``A`` times a random test matrix of
``SKETCH_COLUMNS``, and its trace) and ``nystrom_eigh`` finds the pairs from the sketch; a wide
convolution's ``A`` (from the Gram of its patches) goes to randomized subspace iteration
(``leading_eigh``). The rest of the input space is one isotropic block with the mean of the
discarded eigenvalues (K-FAC, and EKFAC's convolutions), or the mean second moment of the gradients'
components in it (EKFAC's Linear layers, see ``correction``), per output eigendirection. A dense
``d x d`` eigendecomposition and the ``n x d x d`` rotations become ``d x d x k`` and ``n x d x k`` work. The price:
``(lambda_j + damping)^{-1}`` of a discarded direction is replaced by that of the block's mean, an
error below ``TRUNCATION_TOLERANCE`` times the layer's largest eigenvalue over the damping (at most
1e-2 at the default damping, for the layer with the curvature's largest eigenvalue).

Narrower input factors above ``TRUNCATE_DECAYED_ABOVE`` inputs are decomposed densely and truncated
the same way when at most ``TRUNCATED_FRACTION`` of their directions reach the tolerance: a
convolution's unfolded patches have such spectra (the MNIST CNN's second conv, 289 inputs, keeps about
30), and its EKFAC correction rotates every position of every sample, so ``k`` instead of ``d``
columns cut that phase's work several-fold.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import scipy.linalg
import torch
from torch import Tensor

from lightning_pareto.influence._threads import single_threaded_lapack
from lightning_pareto.influence.kfac._eigensolver import InputSketch, leading_eigh, nystrom_eigh
from lightning_pareto.influence.kfac.curvature import KroneckerFactors

__all__ = [
    "TRUNCATED_FRACTION",
    "TRUNCATE_DECAYED_ABOVE",
    "TRUNCATE_INPUTS_ABOVE",
    "TRUNCATION_TOLERANCE",
    "eigenbases",
    "symmetric_eigh",
]

TRUNCATE_INPUTS_ABOVE = 2048
"""Input factors wider than this keep only their leading eigenvectors (see the module docstring)."""
TRUNCATION_TOLERANCE = 1e-3
"""Kept eigenvalues of a truncated input factor reach down to this fraction of its largest.

1e-3 keeps a flattening spectrum (later in training) within one round of subspace iteration, with
scores as 1e-4's (``benchmarks/RESULTS.md``, influence engine: truncation).
"""
TRUNCATE_DECAYED_ABOVE = 256
"""Densely decomposed input factors wider than this are truncated when their spectrum has decayed enough."""
TRUNCATED_FRACTION = 0.25
"""Such a factor is truncated when at most this fraction of its eigenvalues reach ``TRUNCATION_TOLERANCE``."""


def eigenbases(factors: Mapping[str, tuple[Tensor | InputSketch, Tensor]]) -> dict[str, KroneckerFactors]:
    """Eigendecompose each layer's ``A`` and ``G`` in float64: the K-FAC curvature in its eigenbasis.

    Args:
        factors: Layer name -> ``(A, G)`` from ``kronecker_factors`` (``A`` may be an ``InputSketch``).

    Returns:
        Layer name -> ``KroneckerFactors`` with K-FAC eigenvalues ``outer(eig(G), eig(A))`` (rounding
        negatives of the positive semi-definite factors clamped to zero).

    Raises:
        FloatingPointError: If a factor has NaN/inf entries.
    """
    bases = {}
    for name, (inputs, grads) in factors.items():
        # A sum is non-finite when any entry is (NaN/inf propagate), without a d x d mask.
        seen = inputs.image if isinstance(inputs, InputSketch) else inputs
        if not (torch.isfinite(seen.sum()) and torch.isfinite(grads.sum())):
            raise FloatingPointError(
                f"the K-FAC factors of layer {name!r} are not finite: the model or the training data "
                "produce NaN/inf activations or gradients"
            )
        values_g, vectors_g = symmetric_eigh(grads)
        values_g = values_g.clamp(min=0.0)
        if isinstance(inputs, InputSketch):
            size, leading = inputs.size, _sketched_leading(name, inputs)
        else:
            size = inputs.shape[0]
            leading = leading_eigh(inputs, TRUNCATION_TOLERANCE) if size > TRUNCATE_INPUTS_ABOVE else None
        if leading is None:
            values_a, vectors_a = symmetric_eigh(inputs)
            values_a = values_a.clamp(min=0.0)
            kept = _decayed_rank(values_a) if size > TRUNCATE_DECAYED_ABOVE else None
            if kept is None:
                bases[name] = KroneckerFactors(vectors_a, vectors_g, torch.outer(values_g, values_a))
                continue
            leading = values_a[-kept:].flip(0), vectors_a[:, -kept:].flip(1)
        values_a, vectors_a = leading
        values_a = values_a.clamp(min=0.0)
        trace = inputs.trace if isinstance(inputs, InputSketch) else torch.trace(inputs).double()
        discarded = (trace - values_a.sum()).clamp(min=0.0) / (size - values_a.shape[0])
        bases[name] = KroneckerFactors(vectors_a, vectors_g, torch.outer(values_g, values_a), values_g * discarded)
    return bases


def _sketched_leading(name: str, sketch: InputSketch) -> tuple[Tensor, Tensor]:
    """``nystrom_eigh`` of a sketched factor, with a warning where its spectrum outlasts the sketch."""
    values, vectors, reached = nystrom_eigh(sketch, TRUNCATION_TOLERANCE)
    if not reached:
        warnings.warn(
            f"the input factor of layer {name!r} ({sketch.size} inputs) has more than {values.shape[0]} "
            f"eigenvalues above {TRUNCATION_TOLERANCE:g} of its largest, more than its sketch resolves: the "
            f"leading {values.shape[0]} are kept and the rest averaged (raise "
            "lightning_pareto.influence.kfac._eigensolver.SKETCH_COLUMNS for more)",
            UserWarning,
            stacklevel=4,
        )
    return values, vectors


def _decayed_rank(values: Tensor) -> int | None:
    """How many of ``values`` (ascending, non-negative) reach ``TRUNCATION_TOLERANCE`` times the largest.

    ``None`` when that is more than ``TRUNCATED_FRACTION`` of them (the basis is kept whole).
    """
    kept = int((values > TRUNCATION_TOLERANCE * values[-1]).sum())
    return kept if 0 < kept <= TRUNCATED_FRACTION * values.shape[0] else None


def symmetric_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigendecomposition of a symmetric matrix in float64: ``(values ascending, vectors as columns)``.

    ``torch.linalg.eigh``, except on CPU above ``TRUNCATE_INPUTS_ABOVE`` rows (only reached when a
    wide factor's spectrum is too flat to truncate): there LAPACK's divide-and-conquer ``dsyevd``
    through SciPy, faster than torch's for such sizes. Not below: SciPy's OpenBLAS threads keep
    spinning after a call and slow torch's next passes.

    Args:
        matrix: Tensor of shape ``(d, d)``.

    Returns:
        float64 tensors of shapes ``(d,)`` and ``(d, d)`` on the matrix's device.
    """
    matrix = matrix.double()
    if matrix.device.type != "cpu" or matrix.shape[0] <= TRUNCATE_INPUTS_ABOVE:
        with single_threaded_lapack(matrix.device):
            return torch.linalg.eigh(matrix)
    values, vectors = scipy.linalg.eigh(matrix.numpy(), driver="evd", check_finite=False)
    return torch.from_numpy(values), torch.from_numpy(vectors)
