"""Fitting the curvature on a seeded subset of the training set (``curvature_samples``, ``correction_samples``).

The curvature is an average over training samples; a few thousand samples estimate its factors as
well as tens of thousands do, while the passes cost time in proportion to the samples they see
(kronfluence's ``covariance_max_examples`` / ``lambda_max_examples`` make the same trade). Only the
curvature passes are subsampled: every training sample is still scored.

Rows are chosen by systematic sampling with a seeded random start: row ``j`` of the stream of samples
the loader yields is kept when ``floor(j * f + u)`` steps, with ``f = samples / len(dataset)`` and
``u ~ U[0, 1)``. That keeps ``floor`` or ``ceil`` of ``f`` times the rows seen, spread evenly over the
loader (stratified, when the loader is sorted by class), the same rows on every pass of an unshuffled
loader, and under DDP about ``samples`` over all ranks (each rank keeps ``f`` of its shard).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sized

import torch

from lightning_pareto.influence.batches import unpack_batch

DEFAULT_CORRECTION_SAMPLES = 2000
"""Samples the EKFAC eigenvalue correction sees by default (``correction_samples="auto"``) when the factor
pass cannot keep every training sample's rows (then it corrects on all of them, see ``fit_curvature``).

Chosen from the agreement-vs-time curve of ``python benchmarks/influence.py --part tradeoffs``
(``benchmarks/RESULTS.md``): the smallest subset whose scores agree with the all-samples correction
at a Spearman correlation of at least 0.98 (median over classes) on the MNIST CNN.
"""


DEFAULT_CURVATURE_SAMPLES = 10_000
"""Samples the K-FAC factors are fitted on by default (``curvature_samples="auto"``) in larger training sets.

At n = 50,000 (``python benchmarks/pareto_step.py``, CIFAR-sized SmallCNN; ``benchmarks/RESULTS.md``)
factors from 10,000 samples give scores agreeing with every-sample curvature at a Spearman correlation
of 0.9999 (minimum over classes 0.9994) for half the influence time; sets of up to 10,000 samples are
fitted whole.
"""


def check_curvature_samples(samples: int | str | None, name: str = "curvature_samples") -> None:
    """Validate a subset size: ``None`` (every sample), ``"auto"`` or an int >= 1.

    Raises:
        TypeError: If it is not an int, ``"auto"`` or ``None``.
        ValueError: If it is below 1.
    """
    if samples is None or samples == "auto":
        return
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise TypeError(f"{name} must be an int >= 1, 'auto' or None (every sample), got {samples!r}")
    if samples < 1:
        raise ValueError(f"{name} must be >= 1 (or None for every sample), got {samples}")


def dataset_size(loader: Iterable) -> int | None:
    """``len(loader.dataset)``, or ``None`` for a loader without a sized ``dataset``."""
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if isinstance(dataset, Sized) else None


def factor_subset(curvature_samples: int | str | None, loader: Iterable) -> int | None:
    """How many samples the factor pass sees: ``"auto"`` is ``DEFAULT_CURVATURE_SAMPLES`` for a loader
    whose sized ``dataset`` is larger than that, else every sample (``None``).

    Example:
        >>> factor_subset("auto", torch.utils.data.DataLoader(range(50_000)))
        10000
        >>> factor_subset("auto", torch.utils.data.DataLoader(range(4_000))) is None
        True
    """
    if curvature_samples != "auto":
        return curvature_samples
    size = dataset_size(loader)
    return DEFAULT_CURVATURE_SAMPLES if size is not None and size > DEFAULT_CURVATURE_SAMPLES else None


def correction_subset(
    curvature_samples: int | None, correction_samples: int | str | None, loader: Iterable
) -> int | None:
    """How many samples the EKFAC correction pass sees: at most ``curvature_samples`` (the factor pass's).

    ``"auto"`` is ``DEFAULT_CORRECTION_SAMPLES`` for a loader with a sized ``dataset`` (every sample of
    one without, whose size is unknown).
    """
    if correction_samples == "auto":
        correction_samples = DEFAULT_CORRECTION_SAMPLES if dataset_size(loader) is not None else None
    sizes = [size for size in (curvature_samples, correction_samples) if size is not None]
    return min(sizes) if sizes else None


def curvature_batches(loader: Iterable, samples: int | None, seed: int) -> Iterable:
    """The loader the curvature passes iterate: ``loader`` itself, or a seeded subset of its rows.

    Args:
        loader: The training loader; yields ``(x, y)`` or ``(x, y, index)`` batches.
        samples: About how many samples to fit the curvature on, or ``None`` for all of them.
        seed: Seed of the subset's random start.

    Returns:
        ``loader`` when ``samples`` is ``None`` or not below ``len(loader.dataset)``, else an iterable
        of the kept rows of each batch (batches left empty are skipped).

    Raises:
        ValueError: If ``samples`` is given and the loader has no sized ``dataset`` attribute.
    """
    if samples is None:
        return loader
    dataset = getattr(loader, "dataset", None)
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            "curvature_samples needs a train_loader with a sized .dataset (a torch DataLoader) to know the "
            "fraction of samples to keep; pass curvature_samples=None to fit on every sample"
        ) from None
    if samples >= size:
        return loader
    return _SystematicSubset(loader, samples / size, seed)


def subset_rows(loader: Iterable, samples: int | None, seed: int) -> SystematicRows | None:
    """The row chooser ``curvature_batches(loader, samples, seed)`` applies, or ``None`` when it keeps every row."""
    subset = curvature_batches(loader, samples, seed)
    return SystematicRows(subset.fraction, subset.seed) if isinstance(subset, _SystematicSubset) else None


class SystematicRows:
    """The rows a pass over the loader keeps, batch by batch (systematic sampling, see the module docstring).

    Args:
        fraction: ``f``, the share of rows kept.
        seed: Seed of the random start ``u``.
    """

    def __init__(self, fraction: float, seed: int) -> None:
        self.fraction = fraction
        self._offset = float(torch.rand((), generator=torch.Generator().manual_seed(seed)))
        self._seen = 0

    def take(self, count: int) -> torch.Tensor:
        """Positions kept among the next ``count`` rows of the stream, int64."""
        positions = torch.arange(self._seen, self._seen + count, dtype=torch.float64) * self.fraction + self._offset
        self._seen += count
        return (torch.floor(positions) != torch.floor(positions - self.fraction)).nonzero().squeeze(1)


class _SystematicSubset:
    def __init__(self, loader: Iterable, fraction: float, seed: int) -> None:
        self.loader, self.fraction, self.seed = loader, fraction, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        chooser = SystematicRows(self.fraction, self.seed)
        return _kept_rows(self.loader, lambda y, index: chooser.take(len(y)))

    def __len__(self) -> int:
        return math.ceil(len(self.loader) * self.fraction)  # type: ignore[arg-type]


class RowsOtherThan:
    """The batches of an indexed ``loader`` without the rows whose dataset index is in ``done``.

    Args:
        loader: Yields ``(x, y, index)`` batches.
        done: int64 dataset indices to leave out.
    """

    def __init__(self, loader: Iterable, done: torch.Tensor) -> None:
        self.loader, self.done = loader, done

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        def others(y: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
            if index is None:
                raise ValueError("train_loader mixes (x, y) and (x, y, index) batches")
            return (~torch.isin(index, self.done)).nonzero().squeeze(1)

        return _kept_rows(self.loader, others)


def _kept_rows(
    loader: Iterable, choose: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
) -> Iterator[tuple[torch.Tensor, ...]]:
    """The rows ``choose(y, index)`` picks (positions in the batch) of each batch, in order, batched again.

    The kept rows are joined into batches of the loader's first batch size, so that a pass over a
    fifth of the rows runs a fifth of the batches rather than as many batches a fifth as large (the
    passes' cost per batch does not shrink with it). Batches whose inputs are not tensors are
    yielded as they are kept.
    """
    held: list[tuple[torch.Tensor, ...]] = []
    size = None
    for batch in loader:
        x, y, index = unpack_batch(batch)
        y = torch.as_tensor(y)
        index = None if index is None else torch.as_tensor(index, dtype=torch.int64)
        size = size or len(y)
        rows = choose(y, index)
        if rows.numel() == 0:
            continue
        kept = rows.to(x.device) if isinstance(x, torch.Tensor) else rows
        part = (x[kept], y[rows.to(y.device)]) + (() if index is None else (index[rows],))
        if not isinstance(x, torch.Tensor):
            yield part
            continue
        held.append(part)
        while sum(len(p[1]) for p in held) >= size:
            joined = _joined(held)
            held = [tuple(t[size:] for t in joined)] if len(joined[1]) > size else []
            yield tuple(t[:size] for t in joined)
    if held:
        yield _joined(held)


def _joined(parts: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """The parts' tensors concatenated along the rows (the one part itself when there is one)."""
    return parts[0] if len(parts) == 1 else tuple(torch.cat(tensors) for tensors in zip(*parts))
