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

Wide layers (more than ``TRUNCATE_INPUTS_ABOVE`` inputs, e.g. the 3,137 of a Linear after a
flattened feature map) keep only the leading eigenvectors of ``A``: those down to
``TRUNCATION_TOLERANCE`` times its largest eigenvalue, found by randomized subspace iteration
(float32 range finder, float64 Rayleigh-Ritz). The rest of the input space is one isotropic block
with the mean of the discarded eigenvalues (K-FAC), or the mean second moment of the gradients'
components in it (EKFAC), per output eigendirection. A dense ``d x d`` eigendecomposition and the ``n x d x d`` rotations become
``d x d x k`` and ``n x d x k`` work. The price: ``(lambda_j + damping)^{-1}`` of a discarded
direction is replaced by that of the block's mean, an error below ``TRUNCATION_TOLERANCE`` times the
layer's largest eigenvalue over the damping (about 1e-3 at the default damping; the trained
networks measured for ``benchmarks/RESULTS.md`` keep a few hundred of 3,137 directions).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import scipy.linalg
import torch
from torch import Tensor, nn

from lightning_pareto._distributed import all_reduce_sum
from lightning_pareto.influence._conv_grads import grouped_gradients_pay, per_sample_conv_gradients
from lightning_pareto.influence._conv_gram import conv_input_gram, conv_output_gram, supports_shifted_gram
from lightning_pareto.influence._layout import layer_shape
from lightning_pareto.influence._passes import captured_batches

# Elements of the per-sample rotated gradients held at once when a layer has positions (T > 1).
_CHUNK_ELEMENTS = 1 << 24
TRUNCATE_INPUTS_ABOVE = 2048
"""Input factors wider than this keep only their leading eigenvectors (see the module docstring)."""
TRUNCATION_TOLERANCE = 1e-4
"""Kept eigenvalues of a truncated input factor reach down to this fraction of its largest."""
# Randomized subspace iteration: starting rank, oversampling, power iterations.
_START_RANK, _OVERSAMPLING, _POWER_ITERATIONS = 256, 32, 2
# Factors at least _STRIPS_FROM wide accumulate only their upper triangle in row strips (see _strips).
_STRIP_WIDTH, _STRIPS_FROM = 800, 192
# Products with U_A are padded to a multiple of this many columns (see _InputRotation).
_ALIGNMENT = 32


@dataclass(frozen=True)
class KroneckerFactors:
    """One layer's K-FAC/EKFAC curvature in its Kronecker eigenbasis (all float64).

    The layer's block of the curvature is ``(U_G (x) U_A) diag(vec(eigenvalues)) (U_G (x) U_A)^T``
    acting on row-major vectorised layout matrices ``(out_features, in_features + has_bias)``.

    With a truncated input basis (``k < in + has_bias`` columns in ``U_A``) the block is
    ``(U_G (x) U_A) diag(vec(eigenvalues)) (U_G (x) U_A)^T`` plus
    ``(U_G (x) P) diag(residual (x) 1) (U_G (x) P)^T`` with ``P = I - U_A U_A^T``.

    Attributes:
        eigvecs_inputs: ``U_A``, shape ``(in + has_bias, k)``: the (leading) eigenvectors of ``A``;
            ``k = in + has_bias`` unless truncated.
        eigvecs_grads: ``U_G``, shape ``(out, out)``: eigenvectors of ``G``.
        eigenvalues: Shape ``(out, k)``: ``outer(eig(G), eig(A))`` for K-FAC, the corrected second
            moments for EKFAC.
        residual: ``None``, or for a truncated basis shape ``(out,)``: the eigenvalue of the
            discarded input directions for each output eigendirection.
    """

    eigvecs_inputs: Tensor
    eigvecs_grads: Tensor
    eigenvalues: Tensor
    residual: Tensor | None = None

    @property
    def truncated(self) -> bool:
        """Whether the input eigenbasis is truncated."""
        return self.residual is not None

    def inverse(self, vectors: Tensor, damping: float) -> Tensor:
        """``(block + damping I)^{-1}`` applied to ``vectors`` of shape ``(K, out, in + has_bias)``.

        The rotations run in the dtype of ``vectors`` (the float64 bases cast to it).
        """
        rotate_g, rotate_a = self.eigvecs_grads.to(vectors.dtype), self.eigvecs_inputs.to(vectors.dtype)
        rotated = rotate_g.T @ vectors
        inner = rotated @ rotate_a
        scaled = inner / (self.eigenvalues + damping).to(vectors.dtype)
        if self.residual is None:
            return rotate_g @ (scaled @ rotate_a.T)
        # P x / (r + damping) + U_A (scaled) with P = I - U_A U_A^T, in one product with U_A^T.
        outside_scale = 1.0 / (self.residual + damping).to(vectors.dtype)[:, None]
        solved = rotated * outside_scale + (scaled - inner * outside_scale) @ rotate_a.T
        return rotate_g @ solved

    def split_inverse(self, projected: Tensor, damping: float) -> tuple[Tensor, Tensor]:
        """``inverse`` of a truncated basis as ``(W, M)`` with ``inverse(V) = W V + M U_A^T``.

        ``W = U_G diag(1 / (residual + damping)) U_G^T`` and ``M = U_G (S - D U_G^T V U_A)`` with
        ``S`` the kept directions' scaled coordinates, from ``projected = V U_A`` alone, so no
        ``(K, out, in)`` array is rotated (``_factored_queries`` keeps ``V`` as validation rows).

        Args:
            projected: ``V U_A``, shape ``(K, out, k)``.
            damping: ``lambda``.

        Returns:
            ``W`` of shape ``(out, out)`` and ``M`` of shape ``(K, out, k)``, in the dtype of ``projected``.

        Raises:
            ValueError: If the basis is not truncated.
        """
        if self.residual is None:
            raise ValueError("split_inverse needs a truncated input basis")
        rotate_g = self.eigvecs_grads.to(projected.dtype)
        outside_scale = 1.0 / (self.residual + damping).to(projected.dtype)
        inner = rotate_g.T @ projected
        scaled = inner / (self.eigenvalues + damping).to(projected.dtype)
        return (rotate_g * outside_scale) @ rotate_g.T, rotate_g @ (scaled - inner * outside_scale[:, None])


def plain_linear(module: nn.Module, inputs: list[Tensor]) -> bool:
    """Whether a layer is a Linear called once on ``(batch, in_features)`` inputs (no positions)."""
    return isinstance(module, nn.Linear) and len(inputs) == 1 and inputs[0].dim() == 2


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
        Layer name -> ``(A, G)`` of shapes ``(in + has_bias, in + has_bias)`` and ``(out, out)``, float64
        except ``A`` of a layer with more than ``TRUNCATE_INPUTS_ABOVE`` inputs: float32, as accumulated.

    Raises:
        ValueError: If the loader yields no samples.
    """
    input_sums, grad_sums = {}, {}
    for name, module in tracked.items():
        outputs, inputs = layer_shape(module)
        input_sums[name] = module.weight.new_zeros(inputs, inputs)
        grad_sums[name] = module.weight.new_zeros(outputs, outputs)
    has_bias = {name: module.bias is not None for name, module in tracked.items()}
    positions = dict.fromkeys(tracked, 0)
    samples = 0
    for batch in captured_batches(
        model, loader, tracked, fisher=fisher, seed=seed, desc="influence: factors", progress=progress
    ):
        samples += batch.size
        for name, module in tracked.items():
            inputs, grads = batch.raw(name)
            if all(supports_shifted_gram(module, x) for x in inputs):
                # Stride-1 convolutions: correlations of the feature map, no patches (see _conv_gram).
                for x, g in zip(inputs, grads):
                    input_sums[name] += conv_input_gram(module, x)
                    grad_sums[name] += conv_output_gram(g)
                    positions[name] += g.shape[0] * g.shape[2] * g.shape[3]
                continue
            if plain_linear(module, inputs):
                # The input as it is: no copy into rows, and BLAS runs faster on its even width.
                accumulate_gram(input_sums[name], inputs[0], ones_implied=has_bias[name])
                accumulate_gram(grad_sums[name], grads[0])
                positions[name] += inputs[0].shape[0]
                continue
            a, g = batch.layers[name]
            rows_a, rows_g = a.flatten(end_dim=1), g.flatten(end_dim=1)
            accumulate_gram(input_sums[name], rows_a, ones_last=has_bias[name])
            accumulate_gram(grad_sums[name], rows_g)
            positions[name] += rows_a.shape[0]
    # Under DDP each rank saw a shard: sum the statistics so every rank holds the whole set's.
    counts = all_reduce_sum(torch.tensor([samples, *positions.values()], dtype=torch.float64))
    samples, layer_positions = int(counts[0]), dict(zip(tracked, counts[1:].tolist()))
    if samples == 0:
        raise ValueError("train_loader yielded no samples")
    factors = {}
    for name in tracked:
        inputs = all_reduce_sum(symmetrized(input_sums[name], ones_last=has_bias[name]))
        # A wide factor stays in its float32 (the sums are not used again, so it is divided in place):
        # leading_eigh's range finder runs in float32, and a float64 copy of a 3,137 x 3,137 matrix
        # (page faults included) costs more than it serves.
        inputs = inputs.double() if inputs.shape[0] <= TRUNCATE_INPUTS_ABOVE else inputs
        grads = all_reduce_sum(symmetrized(grad_sums[name])).double()
        factors[name] = (inputs.div_(layer_positions[name]), grads.div_(samples))
    return factors


def accumulate_gram(total: Tensor, rows: Tensor, *, ones_last: bool = False, ones_implied: bool = False) -> None:
    """``total += rows^T rows``; from ``_STRIPS_FROM`` columns on only the upper triangle.

    The upper triangle is written in row strips (``total[strip, start:] += rows[:, strip]^T rows[:, start:]``),
    about 60% of the full product's work for the 3,137 inputs of a Linear after a feature map (no
    BLAS ``syrk`` through torch; SciPy's leaves OpenBLAS threads spinning). Finish with ``symmetrized``.

    Args:
        total: Square tensor ``(d, d)`` to accumulate into.
        rows: Tensor ``(m, d)``.
        ones_last: The last column of ``rows`` is all ones (the bias slot of layer inputs): its row
            of the Gram matrix is the column sums and the row count, so the product runs over the
            other ``d - 1`` columns only (MKL is up to twice as fast on a width of 3,136 or 288 as
            on 3,137 or 289). Finish with ``symmetrized(total, ones_last=True)``.
        ones_implied: As ``ones_last``, for ``rows`` without that column (a Linear layer's input as
            it is): ``total`` is one wider than ``rows``.
    """
    if ones_last or ones_implied:
        features = rows if ones_implied else rows[:, :-1]
        total[:-1, -1] += features.sum(dim=0)
        total[-1, -1] += rows.shape[0]
        rows, total = features, total[:-1, :-1]
    strips = _strips(rows.shape[1])
    if not strips:
        total.addmm_(rows.T, rows)
        return
    for start, stop in strips:
        total[start:stop, start:].addmm_(rows[:, start:stop].T, rows[:, start:])


def symmetrized(total: Tensor, *, ones_last: bool = False) -> Tensor:
    """Fill in place what ``accumulate_gram`` left out (lower triangle, ones row); returns ``total``."""
    if ones_last:
        symmetrized(total[:-1, :-1])
        total[-1, :-1] = total[:-1, -1]
        return total
    for start, stop in _strips(total.shape[0]):  # diagonal blocks were written whole
        total[stop:, start:stop] = total[start:stop, stop:].T
    return total


def _strips(width: int) -> list[tuple[int, int]]:
    """``accumulate_gram``'s row strips ``(start, stop)`` of a ``width``-wide factor; none below ``_STRIPS_FROM``.

    Strips of ``_STRIP_WIDTH`` from ``2 * _STRIP_WIDTH`` columns on, three strips (widths a multiple
    of 32, which BLAS blocks well) below that, the remainder joined to the last strip when it is
    under half a strip. Three strips skip a third of the product (the MNIST CNN's 289-wide conv factor).
    """
    if width < _STRIPS_FROM:
        return []
    strip = _STRIP_WIDTH if width >= 2 * _STRIP_WIDTH else _aligned(-(-width // 3))
    edges = [*range(0, width, strip), width]
    if edges[-1] - edges[-2] < strip // 2:
        del edges[-2]
    return list(zip(edges[:-1], edges[1:]))


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
        # A sum is non-finite when any entry is (NaN/inf propagate), without a d x d mask.
        if not (torch.isfinite(inputs.sum()) and torch.isfinite(grads.sum())):
            raise FloatingPointError(
                f"the K-FAC factors of layer {name!r} are not finite: the model or the training data "
                "produce NaN/inf activations or gradients"
            )
        values_g, vectors_g = symmetric_eigh(grads)
        values_g = values_g.clamp(min=0.0)
        leading = leading_eigh(inputs) if inputs.shape[0] > TRUNCATE_INPUTS_ABOVE else None
        if leading is None:
            values_a, vectors_a = symmetric_eigh(inputs)
            bases[name] = KroneckerFactors(vectors_a, vectors_g, torch.outer(values_g, values_a.clamp(min=0.0)))
            continue
        values_a, vectors_a = leading
        values_a = values_a.clamp(min=0.0)
        discarded = (torch.trace(inputs).double() - values_a.sum()).clamp(min=0.0) / (inputs.shape[0] - values_a.shape[0])
        bases[name] = KroneckerFactors(vectors_a, vectors_g, torch.outer(values_g, values_a), values_g * discarded)
    return bases


def leading_eigh(matrix: Tensor, tolerance: float | None = None, seed: int = 0) -> tuple[Tensor, Tensor] | None:
    """Leading eigenpairs of a positive semi-definite matrix down to ``tolerance`` times the largest.

    Randomized subspace iteration (Halko, Martinsson & Tropp 2011, algorithm 4.4; float32 range finder,
    float64 Rayleigh-Ritz) with a seeded start, growing the rank from ``_START_RANK`` (see
    ``_next_rank``) until the smallest kept eigenvalue is below ``tolerance`` times the largest (so
    everything discarded is smaller still).

    Args:
        matrix: Symmetric PSD tensor of shape ``(d, d)``, float32 or float64.
        tolerance: Relative size of the smallest eigenvalue worth keeping (``None``: ``TRUNCATION_TOLERANCE``).
        seed: Seed of the random start (the same on every rank, so every rank gets the same basis).

    Returns:
        ``(values descending, vectors as columns)`` of shapes ``(k,)`` and ``(d, k)``, or ``None``
        when the spectrum does not decay that far within ``d / 2`` directions, or is not on course
        to (then a dense eigendecomposition is cheaper).
    """
    tolerance = TRUNCATION_TOLERANCE if tolerance is None else tolerance
    # The range finder runs in float32 (its error, ~1e-7 of the largest eigenvalue, is far below the
    # 1e-4 cut) at twice float64's speed; the Rayleigh-Ritz eigenproblem that gives the pairs is
    # float64, its projection ``Q^T M Q`` in the matrix's own dtype (a float32 matrix's entries carry
    # float32 rounding already).
    single = matrix.float()
    size = matrix.shape[0]
    generator = torch.Generator().manual_seed(seed)
    rank = _START_RANK
    while rank + _OVERSAMPLING <= size // 2:
        sketch = torch.randn(size, rank + _OVERSAMPLING, generator=generator).to(matrix.device)
        basis = _orthonormal(single @ sketch)
        for _ in range(_POWER_ITERATIONS):
            basis = _orthonormal(single @ basis)
        basis = _orthonormal(basis.double())
        image = (matrix @ basis.to(matrix.dtype)).double()
        with single_threaded_lapack(matrix.device):
            values, vectors = torch.linalg.eigh(basis.T @ image)
        values, vectors = values.flip(0)[:rank], (basis @ vectors).flip(1)[:, :rank]
        if values[-1] <= tolerance * values[0]:
            keep = int((values > tolerance * values[0]).sum())
            return values[:keep], vectors[:, :keep]
        rank = _next_rank(values, tolerance, limit=size // 2 - _OVERSAMPLING)
        if rank is None:  # the decay will not reach the tolerance in time: give up now
            return None
    return None


def _gradient_first(positions: int, inputs: int, outputs: int, kept: int) -> bool:
    """Whether rotating each sample's gradient ``sum_t g_t a_t^T`` costs less than rotating its positions.

    Per sample, in multiply-adds: the gradient ``T o i`` then ``o i k + o o k``, against ``T i k + T o o``
    for the rotated positions then ``T o k``. The gradient wins when positions outnumber output
    channels (SmallCNN's 32-channel conv over 256 positions: 2.0M against 6.6M); Table 6's 64-channel
    conv over 49 positions is the other way round.
    """
    gradient = positions * outputs * inputs + outputs * inputs * kept + outputs * outputs * kept
    rotated_positions = positions * inputs * kept + positions * outputs * outputs + positions * outputs * kept
    return gradient < rotated_positions


@contextmanager
def single_threaded_lapack(device: torch.device) -> Iterator[None]:
    """Run CPU LAPACK factorizations (eigh, QR) on one thread, restoring torch's thread count after.

    Their many thread barriers make them many times slower with two threads on a shared machine:
    a 1024 x 1024 float64 ``eigh`` took 5-14 s instead of 0.25 s on one thread beside another busy
    process (0.01 s either way for the 288 x 288 Rayleigh-Ritz problems when the machine is quiet).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _orthonormal(columns: Tensor) -> Tensor:
    """An orthonormal basis of the column space of a tall ``columns`` (thin QR, one LAPACK thread)."""
    with single_threaded_lapack(columns.device):
        return torch.linalg.qr(columns).Q


def _next_rank(values: Tensor, tolerance: float, limit: int) -> int | None:
    """Rank of the next subspace iteration after ``values`` (descending) fell short of ``tolerance``.

    Extrapolates the log-linear decay of the tail half of ``values`` to where it reaches
    ``tolerance * values[0]``, with a 25% margin, and asks for that rank, between ``1.25 * rank`` and
    ``2 * rank`` and at most ``limit`` (a round costs in proportion to its rank, so a doubling
    overshoots by about one round's cost at most). ``None`` when the extrapolation lies beyond
    ``limit`` or the tail does not decay: the iterations would end in a dense eigendecomposition
    anyway, so it is cheaper to go there now.
    """
    rank = values.shape[0]
    tail = values[rank // 2 :].clamp(min=torch.finfo(values.dtype).tiny).log()
    positions = torch.arange(rank // 2, rank, dtype=values.dtype)
    slope = torch.cov(torch.stack([positions, tail]))[0, 1] / positions.var()
    if slope >= 0:
        return None
    intercept = tail.mean() - slope * positions.mean()
    reach = float((torch.log(values[0] * tolerance) - intercept) / slope)
    if reach > limit:
        return None
    wanted = 32 * -(-int(1.25 * reach) // 32)
    return int(min(2 * rank, limit, max(rank + rank // 4, wanted)))


def symmetric_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigendecomposition of a symmetric matrix in float64: ``(values ascending, vectors as columns)``.

    ``torch.linalg.eigh``, except on CPU above ``TRUNCATE_INPUTS_ABOVE`` rows (only reached when a
    wide factor's spectrum is too flat to truncate): there LAPACK's divide-and-conquer ``dsyevd``
    through SciPy, about twice as fast as torch's (MKL) on the AMD CPUs measured for
    ``benchmarks/RESULTS.md`` (3137 x 3137: ~10 s against ~20 s on one thread). Not below: SciPy's
    OpenBLAS threads keep spinning after a call and slow torch's next passes (the MNIST CNN's
    influence took 0.4 s longer with SciPy for its factors of 10-289 rows).

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


def _aligned(width: int) -> int:
    """``width`` rounded up to a multiple of ``_ALIGNMENT``."""
    return -(-width // _ALIGNMENT) * _ALIGNMENT


@dataclass(frozen=True)
class _InputRotation:
    """``U_A`` arranged for fast products with layer inputs and per-sample gradients.

    MKL runs up to twice as slow on odd widths: ``(12544, 289) @ (289, 289)``, the rotation of the
    MNIST CNN's second conv, ran at 40 GMAC/s against 67 for ``(12544, 288) @ (288, 320)``. So the
    columns are zero-padded to a multiple of ``_ALIGNMENT`` (the products' padded columns are zero),
    and with a bias slot the inputs' constant last column is folded in as an added row.

    Attributes:
        padded: ``U_A`` with zero columns appended, shape ``(in + has_bias, _aligned(k))``.
        ones_last: Whether layer inputs end in the bias slot's constant one.
    """

    padded: Tensor
    ones_last: bool

    @classmethod
    def of(cls, vectors: Tensor, *, ones_last: bool) -> _InputRotation:
        """Pad ``vectors`` ``(in + has_bias, k)``; ``ones_last`` when the layer has a bias."""
        padded = vectors.new_zeros(vectors.shape[0], _aligned(vectors.shape[1]))
        padded[:, : vectors.shape[1]] = vectors
        return cls(padded, ones_last)

    def features(self, features: Tensor) -> Tensor:
        """``inputs`` of rows without the bias slot's one, ``(m, in)`` -> ``(m, _aligned(k))``."""
        return rotated_features(features, self.padded, ones_last=self.ones_last)

    def inputs(self, rows: Tensor) -> Tensor:
        """``rows @ padded`` for layer inputs ``(..., in + has_bias)`` -> ``(..., _aligned(k))``."""
        if not self.ones_last:
            return rows @ self.padded
        flat = rows.reshape(-1, rows.shape[-1])
        return self.features(flat[:, :-1]).view(*rows.shape[:-1], -1)


def rotated_features(features: Tensor, rotation: Tensor, *, ones_last: bool) -> Tensor:
    """``[features, 1] @ rotation`` without forming the ones column (``features @ rotation`` without ``ones_last``).

    Args:
        features: ``(m, in)``.
        rotation: ``(in + ones_last, k)``.

    Returns:
        ``(m, k)``.
    """
    if not ones_last:
        return features @ rotation
    return torch.addmm(rotation[-1], features, rotation[:-1])


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
    gradients ``(g U_G)^T (a U_A)`` (or ``U_G^T (g^T a) U_A`` when that is cheaper, see
    ``_gradient_first``) are formed in chunks of samples, squared and summed.

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
    # Sums over the padded input columns of _InputRotation (the padding's stay zero).
    sums = {
        name: basis.eigenvalues.new_zeros(basis.eigenvalues.shape[0], _aligned(basis.eigenvalues.shape[1]))
        for name, basis in bases.items()
    }
    # Truncated bases: second moments of the gradients' components outside the kept input directions.
    outside = {name: torch.zeros_like(basis.residual) for name, basis in bases.items() if basis.residual is not None}
    rotations: dict[str, tuple[_InputRotation, Tensor]] = {}
    samples = 0
    for batch in captured_batches(
        model, loader, tracked, fisher=fisher, seed=seed, desc="influence: eigenvalue correction", progress=progress
    ):
        samples += batch.size
        for name, module in tracked.items():
            inputs, grads = batch.raw(name)
            if name not in rotations:
                basis = bases[name]
                rotations[name] = (
                    _InputRotation.of(basis.eigvecs_inputs.to(inputs[0].dtype), ones_last=module.bias is not None),
                    basis.eigvecs_grads.to(grads[0].dtype),
                )
            rotate_a, rotate_g = rotations[name]
            outputs, features = layer_shape(module)
            chunk = max(1, _CHUNK_ELEMENTS // (outputs * features))
            # Narrow convolutions get per-sample gradients from their feature maps (_conv_grads); the
            # rest from the unfolded rows.
            grouped = name not in outside and grouped_gradients_pay(module, inputs)
            single = plain_linear(module, inputs)
            a, g = (None, None) if grouped or single else batch.layers[name]
            if single or (not grouped and a.shape[1] == 1):
                if single:  # the input as it is, without a rows copy (see kronecker_factors)
                    rotated, grad = rotate_a.features(inputs[0]), grads[0]
                    norms = inputs[0].square().sum(1) + float(module.bias is not None)
                else:
                    rotated, grad, norms = rotate_a.inputs(a[:, 0]), g[:, 0], a[:, 0].square().sum(1)
                squared_a, squared_g = rotated.square(), (grad @ rotate_g).square().T
                sums[name] += (squared_g @ squared_a).double()
                if name in outside:  # ||P a||^2 = ||a||^2 - ||U_A^T a||^2 (a rank-one gradient)
                    outside[name] += (squared_g @ (norms - squared_a.sum(1)).clamp(min=0.0)).double()
                continue
            positions = sum(grad[0, 0].numel() for grad in grads) if grouped else a.shape[1]
            if name not in outside and _gradient_first(positions, features, outputs, rotate_a.padded.shape[1]):
                for start in range(0, batch.size, chunk):
                    stop = min(start + chunk, batch.size)
                    if grouped:
                        per_sample = per_sample_conv_gradients(module, inputs, grads, start, stop)
                    else:
                        per_sample = g[start:stop].transpose(1, 2) @ a[start:stop]
                    # (U_G^T G U_A)^T = (G U_A)^T U_G, with G U_A as one matmul over the chunk's rows.
                    inner = ((per_sample @ rotate_a.padded).transpose(1, 2) @ rotate_g).square_()
                    sums[name] += inner.sum(dim=0).T.double()
                continue
            if grouped:
                a, g = batch.layers[name]
            rotated_a, rotated_g = rotate_a.inputs(a), g @ rotate_g
            for start in range(0, batch.size, chunk):
                part_g = rotated_g[start : start + chunk].transpose(1, 2)
                inner = (part_g @ rotated_a[start : start + chunk]).square_()
                sums[name] += inner.sum(dim=0).double()
                if name in outside:
                    whole = (part_g @ a[start : start + chunk]).square().sum(dim=2)
                    outside[name] += (whole - inner.sum(dim=2)).clamp(min=0.0).sum(dim=0).double()
    samples = int(all_reduce_sum(torch.tensor(samples, dtype=torch.float64)))
    corrected = {}
    for name, basis in bases.items():
        residual = None
        if name in outside:
            discarded = basis.eigvecs_inputs.shape[0] - basis.eigvecs_inputs.shape[1]
            residual = all_reduce_sum(outside[name]) / samples / discarded
        eigenvalues = all_reduce_sum(sums[name][:, : basis.eigenvalues.shape[1]]) / samples
        corrected[name] = KroneckerFactors(basis.eigvecs_inputs, basis.eigvecs_grads, eigenvalues, residual)
    return corrected
