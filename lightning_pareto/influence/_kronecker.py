"""K-FAC factors, their float64 eigenbases and the EKFAC eigenvalue correction, one pass each.

Scaling (the KFC / "expand" convention of Grosse & Martens 2016 for positions ``t``): with ``n``
samples and ``T_i`` positions of sample ``i``,

    A = sum_{i,t} a_{i,t} a_{i,t}^T / sum_i T_i        G = sum_{i,t} g_{i,t} g_{i,t}^T / n,

so for a layer without positions (``T = 1``) ``G (x) A`` is the usual K-FAC approximation of the mean
per-sample Fisher ``(1/n) sum_i vec(g_i a_i^T) vec(g_i a_i^T)^T`` (row-major ``vec``), and for
Conv2d it is KFC's ``T * E_t[g g^T] (x) E_t[a a^T]`` (spatially uncorrelated derivatives).

EKFAC (George et al. 2018) keeps the eigenbases ``U_G, U_A`` and replaces the eigenvalues by the
second moments of the per-sample gradients in that basis:
``Lambda[o, j] = (1/n) sum_i (U_G^T (sum_t g_{i,t} a_{i,t}^T) U_A)[o, j]^2``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import scipy.linalg
import torch
from torch import Tensor, nn

from lightning_pareto._distributed import all_reduce_sum
from lightning_pareto.influence._layout import layer_shape
from lightning_pareto.influence._passes import captured_batches

# Elements of the per-sample rotated gradients held at once when a layer has positions (T > 1).
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class KroneckerFactors:
    """One layer's K-FAC/EKFAC curvature in its Kronecker eigenbasis (all float64).

    The layer's block of the curvature is ``(U_G (x) U_A) diag(vec(eigenvalues)) (U_G (x) U_A)^T``
    acting on row-major vectorised layout matrices ``(out_features, in_features + has_bias)``.

    Attributes:
        eigvecs_inputs: ``U_A``, shape ``(in + has_bias, in + has_bias)``: eigenvectors of ``A``.
        eigvecs_grads: ``U_G``, shape ``(out, out)``: eigenvectors of ``G``.
        eigenvalues: Shape ``(out, in + has_bias)``: ``outer(eig(G), eig(A))`` for K-FAC, the
            corrected second moments for EKFAC.
    """

    eigvecs_inputs: Tensor
    eigvecs_grads: Tensor
    eigenvalues: Tensor


def kronecker_factors(
    model: nn.Module,
    loader: Iterable,
    tracked: Mapping[str, nn.Module],
    *,
    fisher: str,
    seed: int,
    progress: bool | None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """The covariance factors ``A`` and ``G`` of every tracked layer, in one pass over ``loader``.

    Args:
        model: The classifier, in ``influence_mode``.
        loader: Yields ``(x, y)`` or ``(x, y, index)``.
        tracked: Qualified name -> tracked layer.
        fisher: ``"empirical"`` or ``"sampled"``.
        seed: Seed of the label sampler for ``"sampled"``.
        progress: See ``progress_bar``.

    Returns:
        Layer name -> ``(A, G)``, float64 of shapes ``(in + has_bias, in + has_bias)`` and ``(out, out)``.

    Raises:
        ValueError: If the loader yields no samples.
    """
    input_sums, grad_sums = {}, {}
    for name, module in tracked.items():
        outputs, inputs = layer_shape(module)
        input_sums[name] = module.weight.new_zeros(inputs, inputs)
        grad_sums[name] = module.weight.new_zeros(outputs, outputs)
    positions = dict.fromkeys(tracked, 0)
    samples = 0
    for batch in captured_batches(
        model, loader, tracked, fisher=fisher, seed=seed, desc="influence: factors", progress=progress
    ):
        samples += batch.size
        for name, (a, g) in batch.layers.items():
            rows_a, rows_g = a.flatten(end_dim=1), g.flatten(end_dim=1)
            input_sums[name].addmm_(rows_a.T, rows_a)
            grad_sums[name].addmm_(rows_g.T, rows_g)
            positions[name] += rows_a.shape[0]
    # Under DDP each rank saw a shard: sum the statistics so every rank holds the whole set's.
    counts = all_reduce_sum(torch.tensor([samples, *positions.values()], dtype=torch.float64))
    samples, layer_positions = int(counts[0]), dict(zip(tracked, counts[1:].tolist()))
    if samples == 0:
        raise ValueError("train_loader yielded no samples")
    return {
        name: (
            all_reduce_sum(input_sums[name]).double() / layer_positions[name],
            all_reduce_sum(grad_sums[name]).double() / samples,
        )
        for name in tracked
    }


def eigenbases(factors: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, KroneckerFactors]:
    """Eigendecompose each layer's ``A`` and ``G`` in float64: the K-FAC curvature in its eigenbasis.

    Args:
        factors: Layer name -> ``(A, G)`` from ``kronecker_factors``.

    Returns:
        Layer name -> ``KroneckerFactors`` with K-FAC eigenvalues ``outer(eig(G), eig(A))`` (rounding
        negatives of the positive semi-definite factors clamped to zero).

    Raises:
        FloatingPointError: If a factor has NaN/inf entries.
    """
    bases = {}
    for name, (inputs, grads) in factors.items():
        if not (torch.isfinite(inputs).all() and torch.isfinite(grads).all()):
            raise FloatingPointError(
                f"the K-FAC factors of layer {name!r} are not finite: the model or the training data "
                "produce NaN/inf activations or gradients"
            )
        values_a, vectors_a = symmetric_eigh(inputs)
        values_g, vectors_g = symmetric_eigh(grads)
        eigenvalues = torch.outer(values_g.clamp(min=0.0), values_a.clamp(min=0.0))
        bases[name] = KroneckerFactors(vectors_a, vectors_g, eigenvalues)
    return bases


def symmetric_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigendecomposition of a symmetric matrix in float64: ``(values ascending, vectors as columns)``.

    On CPU, LAPACK's divide-and-conquer ``dsyevd`` through SciPy: with the OpenBLAS SciPy ships it is
    about twice as fast as ``torch.linalg.eigh`` (MKL) on the AMD CPUs measured for
    ``benchmarks/RESULTS.md`` (3137 x 3137: ~10 s against ~20 s on one thread). Elsewhere
    ``torch.linalg.eigh``.

    Args:
        matrix: Tensor of shape ``(d, d)``.

    Returns:
        float64 tensors of shapes ``(d,)`` and ``(d, d)`` on the matrix's device.
    """
    matrix = matrix.double()
    if matrix.device.type != "cpu":
        return torch.linalg.eigh(matrix)
    values, vectors = scipy.linalg.eigh(matrix.numpy(), driver="evd", check_finite=False)
    return torch.from_numpy(values), torch.from_numpy(vectors)


def corrected_eigenvalues(
    model: nn.Module,
    loader: Iterable,
    tracked: Mapping[str, nn.Module],
    bases: Mapping[str, KroneckerFactors],
    *,
    fisher: str,
    seed: int,
    progress: bool | None,
) -> dict[str, KroneckerFactors]:
    """EKFAC: replace the K-FAC eigenvalues by per-sample gradient second moments in the eigenbasis.

    For a layer without positions the per-sample gradient is rank one, so the batch's contribution
    is the single matmul ``((g U_G)^2)^T ((a U_A)^2)``; with positions the rotated per-sample
    gradients ``(g U_G)^T (a U_A)`` are formed in chunks of samples, squared and summed.

    Args:
        model: The classifier, in ``influence_mode``.
        loader: Yields ``(x, y)`` or ``(x, y, index)``; the same data as the factor pass.
        tracked: Qualified name -> tracked layer.
        bases: Layer name -> K-FAC eigenbasis from ``eigenbases``.
        fisher: ``"empirical"`` or ``"sampled"`` (the same seed gives the same labels in loader order).
        seed: Seed of the label sampler for ``"sampled"``.
        progress: See ``progress_bar``.

    Returns:
        Layer name -> ``KroneckerFactors`` with the corrected eigenvalues.
    """
    sums = {name: torch.zeros_like(basis.eigenvalues) for name, basis in bases.items()}
    rotations: dict[str, tuple[Tensor, Tensor]] = {}
    samples = 0
    for batch in captured_batches(
        model, loader, tracked, fisher=fisher, seed=seed, desc="influence: eigenvalue correction", progress=progress
    ):
        samples += batch.size
        for name, (a, g) in batch.layers.items():
            if name not in rotations:
                basis = bases[name]
                rotations[name] = (basis.eigvecs_inputs.to(a.dtype), basis.eigvecs_grads.to(g.dtype))
            rotate_a, rotate_g = rotations[name]
            rotated_a, rotated_g = a @ rotate_a, g @ rotate_g
            if a.shape[1] == 1:
                squared = rotated_g[:, 0].square().T @ rotated_a[:, 0].square()
                sums[name] += squared.double()
                continue
            chunk = max(1, _CHUNK_ELEMENTS // (g.shape[2] * a.shape[2]))
            for start in range(0, batch.size, chunk):
                per_sample = rotated_g[start : start + chunk].transpose(1, 2) @ rotated_a[start : start + chunk]
                sums[name] += per_sample.square().sum(dim=0).double()
    samples = int(all_reduce_sum(torch.tensor(samples, dtype=torch.float64)))
    return {
        name: KroneckerFactors(basis.eigvecs_inputs, basis.eigvecs_grads, all_reduce_sum(sums[name]) / samples)
        for name, basis in bases.items()
    }
