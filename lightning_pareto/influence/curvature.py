"""Fitting a damped curvature of the mean training loss: exact, K-FAC or EKFAC.

``G`` is the mean over training samples of the per-sample GGN or Fisher of the cross-entropy,
restricted to the tracked layers' parameters. Which matrix, by ``fisher``:

- ``"empirical"`` (default): ``(1/n) sum_i grad_i grad_i^T`` with the observed labels. All curvatures.
- ``"sampled"``: the same with labels drawn from the model's softmax (seeded). All curvatures; its
  expectation is the GGN.
- ``"ggn"``: the true GGN ``(1/n) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i``; ``"exact"`` only. For a
  model linear in its tracked parameters (softmax regression) it is the Hessian of the mean loss.

Curvatures:

- ``"exact"``: the dense ``P x P`` matrix in float64 (``exact``); for small models (at most
  ``MAX_EXACT_PARAMETERS`` tracked parameters) and tests.
- ``"kfac"``: per layer ``G_out (x) A_in`` (``kfac.factors`` for the scaling; Conv2d uses KFC's
  spatially-uncorrelated expansion), eigendecomposed in float64 (``kfac.eigen``; the input factor
  of layers with more than ``TRUNCATE_INPUTS_ABOVE`` inputs truncated to its leading directions).
- ``"ekfac"``: K-FAC's eigenbases with eigenvalues re-fitted to the per-sample gradients
  (``kfac.correction``).

The damping rule is in ``_base``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor, nn

from lightning_pareto.influence._allocator import retained_heap
from lightning_pareto.influence._base import Curvature, resolve_damping
from lightning_pareto.influence._layout import tracked_parameter_count
from lightning_pareto.influence._passes import FISHERS, StoredBatch, influence_mode
from lightning_pareto.influence._precision import float32_matmul_precision
from lightning_pareto.influence._subset import (
    check_curvature_samples,
    correction_subset,
    curvature_batches,
    dataset_size,
    factor_subset,
    subset_rows,
)
from lightning_pareto.influence._timings import InfluenceTimings, timed
from lightning_pareto.influence.capture import tracked_modules
from lightning_pareto.influence.exact import MAX_EXACT_PARAMETERS, ExactCurvature, dense_curvature
from lightning_pareto.influence.kfac.correction import corrected_eigenvalues
from lightning_pareto.influence.kfac.curvature import KroneckerCurvature
from lightning_pareto.influence.kfac.eigen import eigenbases
from lightning_pareto.influence.kfac.factors import factors_keeping_rows, kronecker_factors

__all__ = ["CURVATURES", "check_options", "fit_curvature"]

CURVATURES = ("exact", "kfac", "ekfac")


def check_options(
    curvature: str,
    fisher: str,
    *,
    damping: float | None = None,
    curvature_samples: int | str | None = None,
    correction_samples: int | str | None = None,
) -> None:
    """Validate the curvature options before any pass over the data.

    Raises:
        ValueError: If ``curvature`` or ``fisher`` is unknown, ``fisher="ggn"`` is asked of K-FAC/EKFAC,
            or ``damping`` or a subset size is out of range.
        TypeError: If a subset size has the wrong type.
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if fisher not in FISHERS:
        raise ValueError(f"fisher must be one of {FISHERS}, got {fisher!r}")
    if fisher == "ggn" and curvature != "exact":
        raise ValueError(f"fisher='ggn' needs curvature='exact'; {curvature} supports 'empirical' and 'sampled'")
    resolve_damping(damping, 1.0)
    check_curvature_samples(curvature_samples)
    check_curvature_samples(correction_samples, "correction_samples")


def fit_curvature(
    model: nn.Module,
    train_loader: Iterable,
    *,
    curvature: str = "ekfac",
    damping: float | None = None,
    modules: Sequence[str] | None = None,
    fisher: str = "empirical",
    seed: int = 0,
    curvature_samples: int | str | None = "auto",
    correction_samples: int | str | None = "auto",
    matmul_precision: str | None = None,
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
            loader's rows (see ``_subset``); ``"auto"`` (default) ``DEFAULT_CURVATURE_SAMPLES`` (10,000)
            for K-FAC/EKFAC when the loader's sized ``dataset`` is larger, else every sample; ``None``
            for every sample. The passes cost time in proportion to the samples they see.
        correction_samples: Samples of EKFAC's eigenvalue-correction pass (a seeded subset, at most
            ``curvature_samples``): ``"auto"`` (default) every sample when the factor pass can keep all
            of their rows (within ``kfac.factors.STASH_BYTES``, so the correction costs no pass), else
            ``DEFAULT_CORRECTION_SAMPLES`` (2,000) when the loader has a sized ``dataset``; an int, or
            ``None`` for every sample.
        matmul_precision: ``torch.set_float32_matmul_precision`` for this call only, as in
            ``category_influence``; ``None`` (default) keeps the caller's setting.
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
    check_options(
        curvature,
        fisher,
        damping=damping,
        curvature_samples=curvature_samples,
        correction_samples=correction_samples,
    )
    tracked = tracked_modules(model, modules)
    with float32_matmul_precision(matmul_precision):  # checks the value before any pass
        return fit_tracked_curvature(
            model,
            train_loader,
            tracked,
            curvature=curvature,
            damping=damping,
            fisher=fisher,
            seed=seed,
            curvature_samples=curvature_samples,
            correction_samples=correction_samples,
            progress=progress,
            timings=timings,
        )


def fit_tracked_curvature(
    model: nn.Module,
    train_loader: Iterable,
    tracked: Mapping[str, nn.Module],
    *,
    curvature: str,
    damping: float | None,
    fisher: str,
    seed: int,
    curvature_samples: int | str | None = "auto",
    correction_samples: int | str | None = "auto",
    factors: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    progress: bool | None,
    timings: InfluenceTimings | None,
    scored: list[StoredBatch] | None = None,
) -> Curvature:
    """``fit_curvature`` for layers already selected by ``tracked_modules`` and validated options.

    ``factors`` (K-FAC/EKFAC): the ``(A, G)`` of every layer, already accumulated (``FactorAccumulator``),
    in place of the factor pass. ``scored``: a list the factor pass appends the whole indexed batches
    it kept to (EKFAC with the empirical Fisher over every sample, see ``factors_keeping_rows``), for
    the score phase to take instead of its own pass over them.
    """
    # "auto" subsamples K-FAC/EKFAC factors only: "exact" stays the exact curvature of every sample.
    if curvature == "exact":
        curvature_samples = None if curvature_samples == "auto" else curvature_samples
    else:
        curvature_samples = factor_subset(curvature_samples, train_loader)
    # "auto" widens to every sample where the factor pass keeps them all (factors_keeping_rows).
    widen_correction = correction_samples == "auto"
    correction_samples = correction_subset(curvature_samples, correction_samples, train_loader)
    correction_loader = curvature_batches(train_loader, correction_samples, seed)
    # With the empirical Fisher over every row, the factor pass keeps the correction's rows (one pass fewer).
    keep_rows = curvature == "ekfac" and factors is None and fisher == "empirical" and curvature_samples is None
    correction_rows = subset_rows(train_loader, correction_samples, seed) if keep_rows else None
    train_loader = curvature_batches(train_loader, curvature_samples, seed)
    if curvature == "exact":
        count = tracked_parameter_count(tracked)
        if count > MAX_EXACT_PARAMETERS:
            raise ValueError(
                f"curvature='exact' builds a dense {count} x {count} matrix, above MAX_EXACT_PARAMETERS="
                f"{MAX_EXACT_PARAMETERS}: use curvature='ekfac', or track fewer layers with modules=[...]"
            )
    with retained_heap(), influence_mode(model) as device:
        if curvature == "exact":
            with timed(timings, "factors", device):
                matrix = dense_curvature(model, train_loader, tracked, fisher=fisher, seed=seed, progress=progress)
            with timed(timings, "eigen", device):
                return ExactCurvature(tracked, matrix, damping, fisher)
        stored = None
        if factors is None:
            with timed(timings, "factors", device):
                if keep_rows:
                    factors, kept = factors_keeping_rows(
                        model,
                        train_loader,
                        tracked,
                        seed=seed,
                        progress=progress,
                        rows=correction_rows,
                        samples=dataset_size(train_loader),
                        widen=widen_correction,
                    )
                    stored = kept.correction_batches()
                    if scored is not None:  # the score phase matches rows by dataset index
                        scored.extend(batch for batch in kept.scored if batch.index is not None)
                else:
                    factors = kronecker_factors(
                        model, train_loader, tracked, fisher=fisher, seed=seed, progress=progress
                    )
        with timed(timings, "eigen", device):
            layers = eigenbases(factors)
        if curvature == "ekfac":
            with timed(timings, "correction", device):
                layers = corrected_eigenvalues(
                    model,
                    correction_loader,
                    tracked,
                    layers,
                    fisher=fisher,
                    seed=seed,
                    progress=progress,
                    batches=stored,
                )
        return KroneckerCurvature(curvature, tracked, layers, damping, fisher)
