"""The score phase: ``I[i, c] = sum_layers sum_t g_{i,t}^T Q_c a_{i,t}`` in one pass over the training set.

Contracted from the captured layer inputs ``a`` and output gradients ``g``: no per-sample gradient of a
Linear layer is built (for layers with positions, Conv2d, per-sample gradients are formed in bounded
chunks where that is cheaper than the contraction) and memory is bounded by the batch, not the data set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_pareto._distributed import is_distributed, merge_rows
from lightning_pareto.influence._passes import CapturedBatch, StoredBatch, captured_batches
from lightning_pareto.influence._subset import RowsOtherThan, dataset_size
from lightning_pareto.influence.kfac._conv_grads import grouped_gradients_pay, per_sample_conv_gradients
from lightning_pareto.influence.kfac._factored_queries import FactoredQuery, keeps_rows

__all__ = ["score"]

# Elements of the (rows x queries x features) intermediate of the score contraction held at once.
_CHUNK_ELEMENTS = 1 << 24


def score(
    model: nn.Module,
    loader: Iterable,
    tracked: Mapping[str, nn.Module],
    queries: Mapping[str, Tensor],
    factored: Mapping[str, FactoredQuery],
    progress: bool | None,
    stored: Sequence[StoredBatch] = (),
) -> Tensor:
    """Scores ``sum_layers sum_t g_t^T Q_k a_t`` of every training sample against the K queries.

    ``queries`` holds the dense preconditioned queries, ``factored`` those of the other layers.
    ``stored``: indexed batches the factor pass recorded already (``factors_keeping_rows``), scored from
    their copies; the pass over ``loader`` then runs over its other rows only, and not at all when
    every row is stored.
    """
    queries = dict(queries)

    def batch_scores(batch: CapturedBatch | StoredBatch) -> Tensor:
        total = None
        for name, module in tracked.items():
            inputs, grads = batch.raw(name)
            if name in factored and name not in queries and not keeps_rows(module, inputs, 0):
                # A training call the factored form cannot take (e.g. with positions): dense from here on.
                queries[name] = factored[name].dense()
            if name in factored and name not in queries:
                layer_scores = factored[name].scores(inputs[0], grads[0])
            elif grouped_gradients_pay(module, inputs):
                layer_scores = _per_sample_scores(module, inputs, grads, queries[name].to(inputs[0].dtype))
            else:
                a, g = batch.layers[name]
                layer_scores = _contract(a, g, queries[name].to(a.dtype))
            total = layer_scores if total is None else total + layer_scores
        return total.float().cpu()

    rows: list[tuple[Tensor | None, Tensor]] = [(batch.index, batch_scores(batch)) for batch in stored]
    remaining = loader
    if stored:
        done = torch.cat([batch.index for batch in stored])
        if done.unique().numel() < (dataset_size(loader) or 0):
            remaining = RowsOtherThan(loader, done)
        else:
            remaining = []  # every row is scored (a loader that yields more is checked by _assemble)
    for batch in captured_batches(model, remaining, tracked, desc="influence: scores", progress=progress):
        rows.append((batch.index, batch_scores(batch)))
    width = next(iter(queries.values())).shape[0] if queries else next(iter(factored.values())).kept.shape[0]
    return _assemble(loader, rows, width=width)


def _per_sample_scores(module: nn.Module, inputs: list[Tensor], grads: list[Tensor], query: Tensor) -> Tensor:
    """``_contract`` of a narrow Conv2d from its feature maps: per-sample gradients (``_conv_grads``) times the queries."""
    return _gradient_scores(
        lambda start, stop: per_sample_conv_gradients(module, inputs, grads, start, stop), inputs[0].shape[0], query
    )


def _gradient_scores(per_sample: Callable[[int, int], Tensor], batch: int, query: Tensor) -> Tensor:
    """Inner products of per-sample gradients ``per_sample(start, stop)`` ``(b, o, i)`` with ``query`` ``(K, o, i)``, chunked."""
    num_queries, outputs, inputs = query.shape
    flat_queries = query.reshape(num_queries, outputs * inputs).T
    chunk = max(1, _CHUNK_ELEMENTS // (outputs * inputs))
    return torch.cat(
        [per_sample(start, min(start + chunk, batch)).flatten(1) @ flat_queries for start in range(0, batch, chunk)]
    )


def _contract(a: Tensor, g: Tensor, query: Tensor) -> Tensor:
    """``sum_t g[b, t]^T query[k] a[b, t]`` for a ``(b, T, i)``, g ``(b, T, o)``, query ``(K, o, i)`` -> ``(b, K)``.

    Picks the cheaper of two exact orders, chunked over rows to bound memory:

    - ``T * K > T + K`` (positions, as in Conv2d): form each sample's gradient ``g^T a`` ``(o, i)``
      and take its inner products with the K queries: ``(T + K) o i`` multiply-adds per sample,
      against ``T K o i`` for the contraction.
    - otherwise (``T = 1``, a Linear layer): never form the gradient; contract the larger feature
      axis with the queries in one matmul and the smaller one with a batched dot product,
      ``K o i`` per sample.
    """
    batch, positions, inputs = a.shape
    num_queries, outputs = query.shape[:2]
    if positions * num_queries > positions + num_queries:
        return _gradient_scores(lambda start, stop: g[start:stop].transpose(1, 2) @ a[start:stop], batch, query)
    rows_a, rows_g = a.flatten(end_dim=1), g.flatten(end_dim=1)
    if outputs <= inputs:
        big, small, weights = rows_a, rows_g, query.reshape(num_queries * outputs, inputs).T
    else:
        big, small, weights = rows_g, rows_a, query.transpose(1, 2).reshape(num_queries * inputs, outputs).T
    width = small.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // (num_queries * width))
    parts = [
        torch.bmm(
            (big[start : start + chunk] @ weights).view(-1, num_queries, width), small[start : start + chunk, :, None]
        )
        for start in range(0, big.shape[0], chunk)
    ]
    return torch.cat(parts).view(batch, positions, num_queries).sum(dim=1)


def _assemble(loader: Iterable, rows: list[tuple[Tensor | None, Tensor]], width: int) -> Tensor:
    """Place batch scores ``(b, width)`` at their dataset indices (or in loader order); unseen rows are NaN.

    Under DDP every rank scored a shard of the data set by index; the rows are joined so that every
    rank returns the whole matrix.
    """
    distributed = is_distributed()
    indexed = [index is not None for index, _ in rows]
    if any(indexed) and not all(indexed):
        raise ValueError("train_loader mixes (x, y) and (x, y, index) batches")
    dataset = getattr(loader, "dataset", None)
    if distributed and (not all(indexed) or dataset is None):
        raise ValueError(
            "under torch.distributed the train_loader must yield (x, y, index) batches and have a .dataset, so "
            "that each rank's rows can be joined; wrap the dataset in lightning_pareto.IndexedDataset"
        )
    if not rows and not distributed:
        raise ValueError("train_loader yielded no samples")
    seen = sum(scores.shape[0] for _, scores in rows)
    if rows and all(indexed):
        index = torch.cat([index for index, _ in rows])
        size = len(dataset) if dataset is not None else int(index.max()) + 1
        if int(index.min()) < 0 or int(index.max()) >= size:
            raise ValueError(
                f"train_loader indices must lie in [0, len(train_loader.dataset)={size}), got "
                f"[{int(index.min())}, {int(index.max())}]"
            )
    else:
        size = len(dataset) if dataset is not None else seen
        index = torch.arange(seen)
        if seen > size:
            raise ValueError(f"train_loader yielded {seen} samples, more than len(train_loader.dataset)={size}")
    scores = torch.full((size, width), float("nan"))
    filled = torch.zeros(size, dtype=torch.bool)
    if rows:
        scores[index] = torch.cat([batch_scores for _, batch_scores in rows])
        filled[index] = True
    return merge_rows(scores, filled) if distributed else scores
