"""The EKFAC phase: eigenvalues re-fitted to the per-sample gradients in the K-FAC eigenbasis.

EKFAC (George et al. 2018) keeps the eigenbases ``U_G, U_A`` and replaces the eigenvalues by the
second moments of the per-sample gradients in that basis:
``Lambda[o, j] = (1/n) sum_i (U_G^T (sum_t g_{i,t} a_{i,t}^T) U_A)[o, j]^2``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from lightning_pareto._distributed import all_reduce_sum
from lightning_pareto.influence._layout import layer_shape
from lightning_pareto.influence._passes import CapturedBatch, StoredBatch, captured_batches
from lightning_pareto.influence.kfac._conv_grads import grouped_gradients_pay, per_sample_conv_gradients
from lightning_pareto.influence.kfac._gram import aligned
from lightning_pareto.influence.kfac._rotation import InputRotation
from lightning_pareto.influence.kfac.curvature import KroneckerFactors
from lightning_pareto.influence.kfac.factors import plain_linear

__all__ = ["corrected_eigenvalues"]

# Elements of the per-sample rotated gradients held at once when a layer has positions (T > 1).
_CHUNK_ELEMENTS = 1 << 24


def corrected_eigenvalues(
    model: nn.Module,
    loader: Iterable,
    tracked: Mapping[str, nn.Module],
    bases: Mapping[str, KroneckerFactors],
    *,
    fisher: str,
    seed: int,
    progress: bool | None,
    batches: Iterable[CapturedBatch | StoredBatch] | None = None,
) -> dict[str, KroneckerFactors]:
    """EKFAC: replace the K-FAC eigenvalues by per-sample gradient second moments in the eigenbasis.

    For a layer without positions the per-sample gradient is rank one, so the batch's contribution
    is the single matmul ``((g U_G)^2)^T ((a U_A)^2)``; with positions the rotated per-sample
    gradients ``(g U_G)^T (a U_A)`` (or ``U_G^T (g^T a) U_A`` when that is cheaper, see
    ``_gradient_first``) are formed in chunks of samples, squared and summed.

    A truncated basis (``KroneckerFactors.residual``) also needs a value for the discarded input
    directions. A Linear layer's is re-fitted too: the mean second moment of the gradients' components
    there, from ``||P a||^2 = ||a||^2 - ||U_A^T a||^2`` (a rank-one gradient: no extra work). A
    convolution keeps K-FAC's value from ``eigenbases`` (the mean discarded eigenvalue of ``A`` times
    each eigenvalue of ``G``): fitting it would form every sample's whole gradient, as much work as
    the rest of the layer's correction, for a block whose value is far below the default damping
    (MNIST CNN's second conv: 7e-5 at most against a damping of 0.28 after 2 epochs, 2e-5 against
    0.057 after 6; RESULTS.md, "Why the engine's defaults").

    Args:
        model: The classifier, in ``influence_mode``.
        loader: Yields ``(x, y)`` or ``(x, y, index)``; the same data as the factor pass.
        tracked: Qualified name -> tracked layer.
        bases: Layer name -> K-FAC eigenbasis from ``eigenbases``.
        fisher: ``"empirical"`` or ``"sampled"`` (the same seed gives the same labels in loader order).
        seed: Seed of the label sampler for ``"sampled"``.
        progress: See ``progress_bar``.
        batches: Batches recorded already (the factor pass's ``StoredBatch`` copies of the correction's
            rows), in place of a pass over ``loader``.

    Returns:
        Layer name -> ``KroneckerFactors`` with the corrected eigenvalues.
    """
    # Sums over the padded input columns of InputRotation (the padding's stay zero).
    sums = {
        name: basis.eigenvalues.new_zeros(basis.eigenvalues.shape[0], aligned(basis.eigenvalues.shape[1]))
        for name, basis in bases.items()
    }
    # Truncated Linear bases: second moments of the gradients' components outside the kept input
    # directions. A truncated convolution keeps K-FAC's value there (see the docstring).
    outside = {
        name: torch.zeros_like(basis.residual)
        for name, basis in bases.items()
        if basis.residual is not None and isinstance(tracked[name], nn.Linear)
    }
    rotations: dict[str, tuple[InputRotation, Tensor]] = {}
    samples = 0
    if batches is None:
        batches = captured_batches(
            model, loader, tracked, fisher=fisher, seed=seed, desc="influence: eigenvalue correction", progress=progress
        )
    for batch in batches:
        samples += batch.size
        for name, module in tracked.items():
            inputs, grads = batch.raw(name)
            if name not in rotations:
                basis = bases[name]
                rotations[name] = (
                    InputRotation.of(basis.eigvecs_inputs.to(inputs[0].dtype), ones_last=module.bias is not None),
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
                    # A norm, not .square().sum(2): no second (chunk, out, in) array of squares.
                    whole = torch.linalg.vector_norm(part_g @ a[start : start + chunk], dim=2).square()
                    outside[name] += (whole - inner.sum(dim=2)).clamp(min=0.0).sum(dim=0).double()
    samples = int(all_reduce_sum(torch.tensor(samples, dtype=torch.float64)))
    corrected = {}
    for name, basis in bases.items():
        residual = basis.residual
        if name in outside:
            discarded = basis.eigvecs_inputs.shape[0] - basis.eigvecs_inputs.shape[1]
            residual = all_reduce_sum(outside[name]) / samples / discarded
        eigenvalues = all_reduce_sum(sums[name][:, : basis.eigenvalues.shape[1]]) / samples
        corrected[name] = KroneckerFactors(basis.eigvecs_inputs, basis.eigvecs_grads, eigenvalues, residual)
    return corrected


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
