"""The K-FAC phase: covariance factors ``A`` (layer inputs) and ``G`` (output gradients), one pass.

Scaling (the KFC / "expand" convention of Grosse & Martens 2016 for positions ``t``): with ``n``
samples and ``T_i`` positions of sample ``i``,

    A = sum_{i,t} a_{i,t} a_{i,t}^T / sum_i T_i        G = sum_{i,t} g_{i,t} g_{i,t}^T / n,

so for a layer without positions (``T = 1``) ``G (x) A`` is the usual K-FAC approximation of the mean
per-sample Fisher ``(1/n) sum_i vec(g_i a_i^T) vec(g_i a_i^T)^T`` (row-major ``vec``), and for
Conv2d it is KFC's ``T * E_t[g g^T] (x) E_t[a a^T]`` (spatially uncorrelated derivatives).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_pareto._distributed import all_reduce_sum
from lightning_pareto.influence._layout import layer_shape
from lightning_pareto.influence._passes import CapturedBatch, StoredBatch, captured_batches, model_device
from lightning_pareto.influence._subset import SystematicRows
from lightning_pareto.influence.capture import LayerCapture
from lightning_pareto.influence.kfac import _eigensolver, eigen
from lightning_pareto.influence.kfac._conv_gram import conv_input_gram, conv_output_gram, supports_shifted_gram
from lightning_pareto.influence.kfac._eigensolver import InputSketch, sketch_test_matrix
from lightning_pareto.influence.kfac._gram import accumulate_gram, symmetrized

__all__ = [
    "FactorSums",
    "KeptRows",
    "factors_keeping_rows",
    "kronecker_factors",
    "plain_linear",
    "sketched",
    "stash_budget",
]


def plain_linear(module: nn.Module, inputs: list[Tensor]) -> bool:
    """Whether a layer is a Linear called once on ``(batch, in_features)`` inputs (no positions)."""
    return isinstance(module, nn.Linear) and len(inputs) == 1 and inputs[0].dim() == 2


def sketched(module: nn.Module) -> bool:
    """Whether a layer's input factor is sketched (``InputSketch``): a Linear with more than ``eigen.TRUNCATE_INPUTS_ABOVE`` inputs."""
    return isinstance(module, nn.Linear) and layer_shape(module)[1] > eigen.TRUNCATE_INPUTS_ABOVE


class FactorSums:
    """Running sums of every tracked layer's ``A`` and ``G`` over captured batches; ``factors()`` divides them.

    Wide Linear layers (``sketched``) sum ``A @ test`` and ``trace(A)`` instead of ``A`` (``InputSketch``).

    Args:
        tracked: Qualified name -> tracked layer.
    """

    def __init__(self, tracked: Mapping[str, nn.Module]) -> None:
        self.tracked = dict(tracked)
        self._inputs, self._grads, self._tests, self._traces = {}, {}, {}, {}
        for name, module in self.tracked.items():
            outputs, inputs = layer_shape(module)
            if sketched(module):
                columns = min(_eigensolver.SKETCH_COLUMNS, inputs)
                self._tests[name] = sketch_test_matrix(inputs, columns).to(module.weight)
                self._inputs[name] = module.weight.new_zeros(inputs, columns)
                self._traces[name] = torch.zeros((), dtype=torch.float64, device=module.weight.device)
            else:
                self._inputs[name] = module.weight.new_zeros(inputs, inputs)
            self._grads[name] = module.weight.new_zeros(outputs, outputs)
        self._has_bias = {name: module.bias is not None for name, module in self.tracked.items()}
        self._positions = dict.fromkeys(self.tracked, 0)
        self.samples = 0

    def add(self, batch: CapturedBatch | StoredBatch, grad_scale: float = 1.0) -> None:
        """Add one batch; ``grad_scale`` multiplies its output gradients first (per-sample from a mean loss: the batch size)."""
        self.samples += batch.size
        for name, module in self.tracked.items():
            inputs, grads = batch.raw(name)
            if grad_scale != 1.0:
                grads = [g * grad_scale for g in grads]
            if all(supports_shifted_gram(module, x) for x in inputs):
                # Stride-1 convolutions: correlations of the feature map, no patches (see _conv_gram).
                for x, g in zip(inputs, grads):
                    self._inputs[name] += conv_input_gram(module, x)
                    self._grads[name] += conv_output_gram(g)
                    self._positions[name] += g.shape[0] * g.shape[2] * g.shape[3]
                continue
            if plain_linear(module, inputs):
                # The input as it is: no copy into rows, and BLAS runs faster on its even width.
                rows_a, rows_g, ones = inputs[0], grads[0], {"ones_implied": self._has_bias[name]}
            else:
                a, g = batch.layers[name]
                rows_a, rows_g = a.flatten(end_dim=1), g.flatten(end_dim=1)
                if grad_scale != 1.0:
                    rows_g = rows_g * grad_scale
                ones = {"ones_last": self._has_bias[name]}
            if name in self._tests:
                self._add_sketch(name, rows_a, **ones)
            else:
                accumulate_gram(self._inputs[name], rows_a, **ones)
            accumulate_gram(self._grads[name], rows_g)
            self._positions[name] += rows_a.shape[0]

    def _add_sketch(self, name: str, rows: Tensor, *, ones_last: bool = False, ones_implied: bool = False) -> None:
        """``image += rows^T (rows @ test)``, ``trace += ||rows||^2``; the bias slot's ones as in ``accumulate_gram``."""
        test, image = self._tests[name], self._inputs[name]
        if not (ones_last or ones_implied):
            image.addmm_(rows.T, rows @ test)
            self._traces[name] += rows.square().sum(dtype=torch.float64)
            return
        features = rows if ones_implied else rows[:, :-1]
        projected = torch.addmm(test[-1], features, test[:-1])  # [features, 1] @ test
        image[:-1].addmm_(features.T, projected)
        image[-1] += projected.sum(dim=0)
        self._traces[name] += features.square().sum(dtype=torch.float64) + rows.shape[0]

    def factors(self) -> dict[str, tuple[Tensor | InputSketch, Tensor]]:
        """Layer name -> ``(A, G)``, summed over ranks under DDP (a collective); consumes the sums.

        Returns:
            ``(A, G)`` of shapes ``(in + has_bias, in + has_bias)`` and ``(out, out)``, float64 except
            ``A`` of a layer with more than ``eigen.TRUNCATE_INPUTS_ABOVE`` inputs: float32, as accumulated,
            and for a ``sketched`` layer an ``InputSketch`` of ``A`` (float32 image, float64 trace).

        Raises:
            ValueError: If no sample was added on any rank.
        """
        # Under DDP each rank saw a shard: sum the statistics so every rank holds the whole set's.
        counts = all_reduce_sum(torch.tensor([self.samples, *self._positions.values()], dtype=torch.float64))
        samples, layer_positions = int(counts[0]), dict(zip(self.tracked, counts[1:].tolist()))
        if samples == 0:
            raise ValueError("train_loader yielded no samples")
        factors = {}
        for name in self.tracked:
            if name in self._tests:
                image = all_reduce_sum(self._inputs[name]).div_(layer_positions[name])
                trace = all_reduce_sum(self._traces[name]) / layer_positions[name]
                grads = all_reduce_sum(symmetrized(self._grads[name])).double().div_(samples)
                factors[name] = (InputSketch(image, self._tests[name], trace), grads)
                continue
            inputs = all_reduce_sum(symmetrized(self._inputs[name], ones_last=self._has_bias[name]))
            # A wide factor stays in its float32 (the sums are not used again, so it is divided in place):
            # leading_eigh's range finder runs in float32, and a float64 copy of a wide matrix costs more
            # than it serves.
            inputs = inputs.double() if inputs.shape[0] <= eigen.TRUNCATE_INPUTS_ABOVE else inputs
            grads = all_reduce_sum(symmetrized(self._grads[name])).double()
            factors[name] = (inputs.div_(layer_positions[name]), grads.div_(samples))
        return factors


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
        ``FactorSums.factors()``.

    Raises:
        ValueError: If the loader yields no samples.
    """
    sums = FactorSums(tracked)
    for batch in captured_batches(
        model, loader, tracked, fisher=fisher, seed=seed, desc="influence: factors", progress=progress
    ):
        sums.add(batch)
    return sums.factors()


STASH_BYTES = 512 << 20
"""Most bytes of recorded rows the factor pass keeps for the later phases (``factors_keeping_rows``)."""


def stash_budget(device: torch.device) -> int:
    """Bytes the factor pass may keep on ``device``: ``STASH_BYTES``, and on a GPU at most a quarter of its free memory.

    The copies stay where the pass recorded them; on a GPU that is memory the training run may need.

    Example:
        >>> stash_budget(torch.device("cpu")) == STASH_BYTES
        True
    """
    if device.type != "cuda":
        return STASH_BYTES
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(STASH_BYTES, free // 4))


@dataclass
class KeptRows:
    """What the factor pass kept of its recorded rows, so that later phases need no pass of their own.

    Attributes:
        correction: The EKFAC correction's rows, batch by batch (``correction_batches``), or ``None``
            when they outgrew ``STASH_BYTES`` (the correction then runs its own pass).
        scored: Whole batches, in pass order; the score phase takes indexed ones instead of a forward
            and backward pass of its own (``scores.score``).
        capture: Writes the kept batches' rows, apart from the pass's own buffers.
    """

    capture: LayerCapture
    correction: list[StoredBatch | tuple[StoredBatch, Tensor]] | None = field(default_factory=list)
    scored: list[StoredBatch] = field(default_factory=list)

    def correction_batches(self) -> Iterator[StoredBatch] | None:
        """The correction's rows, copied out of a whole kept batch where they are part of one; ``None`` if not kept."""
        if self.correction is None:
            return None
        return (
            entry if isinstance(entry, StoredBatch) else entry[0].subset(entry[1], self.capture)
            for entry in self.correction
        )


def factors_keeping_rows(
    model: nn.Module,
    loader: Iterable,
    tracked: Mapping[str, nn.Module],
    *,
    seed: int,
    progress: bool | None,
    rows: SystematicRows | None,
    samples: int | None = None,
    widen: bool = False,
) -> tuple[dict[str, tuple[Tensor | InputSketch, Tensor]], KeptRows]:
    """``kronecker_factors`` (empirical Fisher) that also keeps copies of rows the later phases take.

    The correction and the scores need the finished factors (their eigenbases, the preconditioned
    queries), so they cannot share the pass; but with the empirical Fisher the per-sample inputs and
    gradients they need are the ones this pass records. Within ``STASH_BYTES`` it keeps:

    - the correction's rows (a subset, ``rows``), which saves the correction's pass; these come first:
      room for the rest of them is reserved before anything else is kept;
    - whole batches while the rest fits (``samples`` given): the score phase scores indexed ones from
      the copies, and its pass runs over the other rows only. On a training set that fits whole (the
      MNIST CNN's 4,000 samples need about 320 MiB) the scores need no pass at all.

    Args:
        model: The classifier, in ``influence_mode``.
        loader: Yields ``(x, y)`` or ``(x, y, index)``.
        tracked: Qualified name -> tracked layer.
        seed: Unused by the empirical Fisher; kept for the signature of ``kronecker_factors``.
        progress: See ``progress_bar``.
        rows: The correction's row chooser over this loader's stream (``_subset.subset_rows``), or
            ``None`` for every row.
        samples: The number of samples the loader yields (its dataset's size), to reserve room for the
            correction's rows; ``None`` keeps no whole batch for the scores.
        widen: When every batch was kept whole (on every rank: a collective under DDP), the correction
            takes every row instead of ``rows``' subset: it then needs no copy, and its cost grows by the
            rotations alone (the MNIST CNN's 4,000 samples: 1.78 s against 1.71 s for the whole influence,
            ``benchmarks/RESULTS.md``), for scores equal to the every-sample correction's.

    Returns:
        The factors, and the kept rows.
    """
    sums = FactorSums(tracked)
    kept = KeptRows(LayerCapture(tracked))
    budget = stash_budget(model_device(model))
    held, seen = 0, 0
    every_batch_whole = samples is not None
    fraction = 1.0 if rows is None else rows.fraction
    for batch in captured_batches(
        model, loader, tracked, fisher="empirical", seed=seed, desc="influence: factors", progress=progress
    ):
        seen += batch.size
        chosen = torch.arange(batch.size) if rows is None else rows.take(batch.size)
        whole = batch.nbytes
        if samples is not None:
            # Room the correction's rows still to come need, at this batch's bytes per sample.
            reserve = whole / batch.size * fraction * max(samples - seen, 0)
            if held + whole + reserve <= budget:
                # Kept as recorded (no copy); the sums form its rows (a convolution's patches) in the
                # stored batch, where the correction and the scores find them instead of forming them again.
                stored = batch.kept(kept.capture)
                sums.add(stored)
                held += whole
                kept.scored.append(stored)
                if kept.correction is not None and chosen.numel():
                    kept.correction.append(stored if chosen.numel() == batch.size else (stored, chosen))
                continue
        sums.add(batch)
        every_batch_whole = False
        if kept.correction is None or chosen.numel() == 0:
            continue
        stored = batch.subset(chosen, kept.capture)
        held += stored.nbytes
        if held > budget:
            kept.correction = None
        else:
            kept.correction.append(stored)
    if widen and samples is not None:
        # Summed over ranks so that all of them take the same decision (and the collective runs on each).
        partial = all_reduce_sum(torch.tensor(0.0 if every_batch_whole and kept.scored else 1.0))
        if float(partial) == 0.0:
            kept.correction = list(kept.scored)
    return sums.factors(), kept
