"""Category-wise influence vectors and the influence value IV: the category-wise engine's entry points.

Category-wise influence is that of "What Is The Performance Ceiling of My Classifier?"; IV that of
Chhabra et al. 2024. ``I[i, c] = g_c^T (G + lambda I)^{-1} g_i`` with ``g_i`` the gradient of training
sample i's cross-entropy, ``g_c`` the gradient of the *mean* cross-entropy over the class-c validation
samples and ``G`` the damped curvature of the mean training loss (see ``fit_curvature``), all over the
tracked layers' parameters. ``I[i, c] > 0``: up-weighting sample i lowers the class-c validation loss
(the sample helps class c). To first order, removing sample i from a training set of ``n`` changes the
class-c validation loss by ``+I[i, c] / n``.

Computed in four phases, one module each: the validation queries (``queries.mean_gradients``), the
curvature (``fit_curvature``: ``factors``, ``eigen``, ``correction``), the preconditioned queries
(``queries.precondition``) and one scoring pass over the training set (``scores.score``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from lightning_pareto._distributed import is_distributed
from lightning_pareto.influence._allocator import retained_heap
from lightning_pareto.influence._base import Curvature
from lightning_pareto.influence._passes import StoredBatch, influence_mode
from lightning_pareto.influence._precision import float32_matmul_precision
from lightning_pareto.influence._subset import curvature_batches, factor_subset
from lightning_pareto.influence._timings import InfluenceTimings, timed
from lightning_pareto.influence.capture import tracked_modules
from lightning_pareto.influence.curvature import check_options, fit_tracked_curvature
from lightning_pareto.influence.kfac.queries import mean_gradients, precondition
from lightning_pareto.influence.kfac.scores import score

__all__ = ["category_influence", "influence_value", "non_finite_cause"]


def category_influence(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    num_classes: int,
    *,
    curvature: str | Curvature = "ekfac",
    damping: float | None = None,
    modules: Sequence[str] | None = None,
    fisher: str = "empirical",
    seed: int = 0,
    curvature_samples: int | str | None = "auto",
    correction_samples: int | str | None = "auto",
    matmul_precision: str | None = None,
    progress: bool | None = None,
    timings: InfluenceTimings | None = None,
) -> Tensor:
    """Category-wise influence of every training sample on every class's validation loss.

    Args:
        model: A classifier returning logits ``(batch, num_classes)``; left in its training mode and
            ``requires_grad`` state, with no ``.grad`` written.
        train_loader: Yields ``(x, y, index)`` (row ``index`` of the result) or ``(x, y)`` (rows in
            loader order, so the loader must not shuffle). Iterated two or three times (curvature
            fit, scores).
        val_loader: Yields ``(x, y)`` or ``(x, y, index)``; labels in ``[0, num_classes)``.
        num_classes: Number of classes ``K``.
        curvature: ``"exact"``, ``"kfac"``, ``"ekfac"``, or a ``Curvature`` already fitted on this
            model (then ``modules`` must be ``None``, ``fisher``/``seed`` are not used and a
            ``damping`` given replaces the fitted one).
        damping: ``lambda >= 0``, or ``None`` for ``DEFAULT_DAMPING_FACTOR`` (0.1) times the largest
            eigenvalue of the curvature (see ``curvature``).
        modules: Qualified names of the layers to track (for example ``["head"]``); ``None`` tracks
            every Linear/Conv2d and warns about other parameterised layers.
        fisher: Curvature's labels: ``"empirical"``, ``"sampled"``, or ``"ggn"`` (exact only).
        seed: Seed of the label sampler for ``fisher="sampled"`` and of the ``curvature_samples`` subset.
        curvature_samples: Fit the curvature on about this many training samples (a seeded systematic
            subset, see ``fit_curvature``) instead of all of them; every sample is still scored.
            ``"auto"`` (default): 10,000 for K-FAC/EKFAC when the training set is larger, else all;
            ``None``: all. Not used with a fitted ``Curvature``.
        correction_samples: Samples of EKFAC's eigenvalue-correction pass (see ``fit_curvature``):
            ``"auto"`` (default) every sample where the factor pass keeps them all, else 2,000 for a
            loader with a sized ``dataset``; an int, or ``None`` for all.
            Not used with a fitted ``Curvature``.
        matmul_precision: ``torch.set_float32_matmul_precision`` for this call only (restored after):
            ``"medium"`` lets the float32 products use bfloat16 internally where the hardware has fast
            bfloat16 (oneDNN on CPUs with AMX; TF32/bfloat16 on CUDA), several times faster on the
            large Grams and rotations and agreeing with ``"highest"`` at Spearman 0.999 on the MNIST CNN
            (``benchmarks/RESULTS.md``); ``None`` (default) keeps the caller's setting.
        progress: Progress bars: ``True``, ``False`` or ``None`` (only when stderr is a terminal).
        timings: Filled with the seconds of each phase.

    Under ``torch.distributed`` (DDP, a process group of more than one) this is a collective: every
    rank calls it with loaders over its own disjoint shard of the same data sets (indexed batches),
    the curvature and query statistics are summed over ranks and every rank returns the whole matrix,
    equal to one process's up to float summation order.

    Returns:
        float32 CPU tensor of shape ``(n, K)`` with ``n = len(train_loader.dataset)`` (without a
        ``dataset`` attribute: the number of rows seen, or the largest index + 1). Row i is dataset
        index i. Rows the loader never yielded are NaN, and any non-finite row is reported in one
        ``UserWarning`` with its count, not replaced. A class without validation samples has a zero
        column and a warning.

    Raises:
        ValueError: On a bad option, labels outside ``[0, num_classes)``, an empty loader, or an
            index outside ``[0, n)``.
        FloatingPointError: If the fitted curvature is not finite (NaN/inf in the model or the
            training data); non-finite scores alone only warn.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> train = DataLoader(TensorDataset(x[:40], y[:40], torch.arange(40)), batch_size=16)
        >>> val = DataLoader(TensorDataset(x[40:], y[40:]), batch_size=16)
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> scores = category_influence(model, train, val, num_classes=3)  # EKFAC, default damping
        >>> scores.shape, scores.dtype
        (torch.Size([40, 3]), torch.float32)
        >>> harmful_to_all = (scores < 0).all(dim=1).nonzero().squeeze(1)  # removal helps every class
    """
    _check_num_classes(num_classes)

    def class_of(labels: Tensor) -> Tensor:
        _check_labels(labels, num_classes)
        return labels

    return _influence(
        model,
        train_loader,
        val_loader,
        num_classes,
        class_of,
        curvature=curvature,
        damping=damping,
        modules=modules,
        fisher=fisher,
        seed=seed,
        curvature_samples=curvature_samples,
        correction_samples=correction_samples,
        matmul_precision=matmul_precision,
        progress=progress,
        timings=timings,
        group_names=[f"class {c}" for c in range(num_classes)],
    )


def influence_value(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    num_classes: int | None = None,
    *,
    curvature: str | Curvature = "ekfac",
    damping: float | None = None,
    modules: Sequence[str] | None = None,
    fisher: str = "empirical",
    seed: int = 0,
    curvature_samples: int | str | None = "auto",
    correction_samples: int | str | None = "auto",
    matmul_precision: str | None = None,
    progress: bool | None = None,
    timings: InfluenceTimings | None = None,
) -> Tensor:
    """IV: influence of every training sample on the mean loss of the whole validation set.

    ``IV[i] = g_V^T (G + lambda I)^{-1} g_i`` with ``g_V`` the gradient of the mean validation
    cross-entropy, equal to ``sum_c (n_c / n_V) I[i, c]`` of ``category_influence``; positive means
    the sample lowers the validation loss. Arguments as in ``category_influence``; ``num_classes``
    only validates the labels when given.

    Returns:
        float32 CPU tensor of shape ``(n,)``, rows as in ``category_influence``.
    """

    if num_classes is not None:
        _check_num_classes(num_classes)

    def whole_set(labels: Tensor) -> Tensor:
        if num_classes is not None:
            _check_labels(labels, num_classes)
        return torch.zeros_like(labels)

    scores = _influence(
        model,
        train_loader,
        val_loader,
        1,
        whole_set,
        curvature=curvature,
        damping=damping,
        modules=modules,
        fisher=fisher,
        seed=seed,
        curvature_samples=curvature_samples,
        correction_samples=correction_samples,
        matmul_precision=matmul_precision,
        progress=progress,
        timings=timings,
        group_names=["validation set"],
    )
    return scores[:, 0]


def _influence(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    num_groups: int,
    group_of: Callable[[Tensor], Tensor],
    *,
    curvature: str | Curvature,
    damping: float | None,
    modules: Sequence[str] | None,
    fisher: str,
    seed: int,
    curvature_samples: int | str | None,
    correction_samples: int | str | None,
    matmul_precision: str | None,
    progress: bool | None,
    timings: InfluenceTimings | None,
    group_names: Sequence[str],
) -> Tensor:
    with float32_matmul_precision(matmul_precision), retained_heap():  # checks the value before any pass
        if isinstance(curvature, Curvature):
            if modules is not None:
                raise ValueError("modules must be None when a fitted Curvature is passed: it fixes the tracked layers")
            _check_owned(model, curvature)
            tracked = curvature.tracked
            fitted: Curvature | None = curvature.with_damping(damping) if damping is not None else curvature
        else:
            check_options(
                curvature,
                fisher,
                damping=damping,
                curvature_samples=curvature_samples,
                correction_samples=correction_samples,
            )
            curvature_batches(
                train_loader, factor_subset(curvature_samples, train_loader), seed
            )  # a loader it cannot subset fails here
            tracked = tracked_modules(model, modules)
            fitted = None
        # The validation pass runs first so that bad labels fail before the training passes.
        with influence_mode(model) as device, timed(timings, "queries", device):
            # Under DDP the validation rows are sharded over ranks: only the summed dense queries are whole.
            queries, rows, counts = mean_gradients(
                model, val_loader, tracked, num_groups, group_of, group_names, progress, keep_rows=not is_distributed()
            )
        scored: list[StoredBatch] = []  # batches the factor pass kept whole: scored without a pass of their own
        if fitted is None:
            fitted = fit_tracked_curvature(
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
                scored=scored,
            )
        with influence_mode(model) as device:
            with timed(timings, "precondition", device):
                preconditioned, factored = precondition(fitted, queries, rows, counts)
            with timed(timings, "scores", device):
                scores = score(model, train_loader, tracked, preconditioned, factored, progress, stored=scored)
            scored.clear()
        cause = non_finite_cause(scores)
        if cause:
            warnings.warn(
                f"{cause}; the scores are returned as they are, filter them before use", UserWarning, stacklevel=3
            )
        return scores


def non_finite_cause(scores: Tensor) -> str:
    """What makes an influence matrix ``(n, K)`` non-finite, in words ("" when every entry is finite).

    A column that is non-finite in every row comes from that class's validation query (a NaN/inf
    validation input, or a loss that overflows on one); other non-finite rows from training samples
    with non-finite gradients, or rows the loader never yielded.

    Example:
        >>> scores = torch.zeros(4, 3)
        >>> scores[:, 1] = float("nan")
        >>> non_finite_cause(scores)
        'influence column(s) [1] are not finite: the validation gradients of those classes are NaN/inf (a non-finite validation input, or a loss that overflows on one)'
    """
    bad = ~torch.isfinite(torch.as_tensor(scores))
    columns = [int(c) for c in torch.nonzero(bad.all(dim=0)).flatten()] if bad.shape[0] else []
    keep = [c for c in range(bad.shape[1]) if c not in columns]
    rows = int(bad[:, keep].any(dim=1).sum()) if keep else 0
    parts = []
    if columns:
        parts.append(
            f"influence column(s) {columns} are not finite: the validation gradients of those classes are NaN/inf "
            "(a non-finite validation input, or a loss that overflows on one)"
        )
    if rows:
        parts.append(
            f"{rows} of {bad.shape[0]} influence rows are not finite (training samples with NaN/inf gradients, "
            "or rows the train loader never yielded)"
        )
    return "; ".join(parts)


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


def _check_labels(labels: Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"val_loader labels must lie in [0, num_classes={num_classes}), got "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


def _check_owned(model: nn.Module, curvature: Curvature) -> None:
    owned = {id(module) for module in model.modules()}
    foreign = [name for name, module in curvature.tracked.items() if id(module) not in owned]
    if foreign:
        raise ValueError(f"the Curvature was fitted on another model (layers {foreign} are not in this one)")
