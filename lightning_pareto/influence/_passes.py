"""Shared plumbing of the engine's data passes: batches, model state, labels and captured layers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_pareto._modes import eval_mode
from lightning_pareto.influence._progress import progress_bar
from lightning_pareto.influence.batches import unpack_batch
from lightning_pareto.influence.capture import LayerCapture

FISHERS = ("empirical", "sampled", "ggn")


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def influence_mode(model: nn.Module) -> Iterator[torch.device]:
    """Put the model in the state the passes need and restore it afterwards, also on exceptions.

    Inside: every submodule in eval mode (no dropout, no batch statistics, so per-sample losses are
    independent), ``requires_grad`` off on every parameter (``captured_batches`` differentiates
    zero probes added to the tracked outputs, so no parameter gradient is computed), gradients enabled (also
    under a caller's ``no_grad``/``inference_mode``), autocast disabled. On exit each submodule's
    training flag and each parameter's ``requires_grad`` are restored.

    Args:
        model: The classifier.

    Yields:
        The model's device.
    """
    device = model_device(model)
    requires_grad = {param: param.requires_grad for param in model.parameters()}
    try:
        for param in requires_grad:
            param.requires_grad_(False)
        # The passes differentiate, whatever grad mode the caller is in (a Lightning hook runs under
        # no_grad or inference_mode); autocast would change the dtypes the statistics are taken in.
        with (
            eval_mode(model),
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device_type=device.type, enabled=False),
        ):
            yield device
    finally:
        for param, flag in requires_grad.items():
            param.requires_grad_(flag)


def per_sample_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each sample, ``reduction="none"``.

    Args:
        logits: Model output of shape ``(batch, num_classes)``.
        labels: int64 class indices of shape ``(batch,)``.

    Returns:
        Tensor of shape ``(batch,)``.

    Raises:
        ValueError: If the model output is not a ``(batch, num_classes)`` logit matrix.
    """
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"the model must return logits of shape (batch, num_classes); got {tuple(logits.shape)} "
            f"for a batch of {labels.shape[0]} labels"
        )
    return F.cross_entropy(logits, labels, reduction="none")


def fisher_labels(logits: Tensor, labels: Tensor, fisher: str, generator: torch.Generator | None) -> Tensor:
    """Labels whose loss gradients define the curvature.

    Args:
        logits: Model output of shape ``(batch, num_classes)``.
        labels: Observed int64 labels of shape ``(batch,)``.
        fisher: ``"empirical"`` (observed labels) or ``"sampled"`` (drawn from the model's softmax).
        generator: CPU generator for ``"sampled"``.

    Returns:
        int64 labels of shape ``(batch,)`` on the logits' device.
    """
    if fisher != "sampled":
        return labels
    probs = torch.softmax(logits.detach().double(), dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


class CapturedBatch:
    """One batch of a capture pass.

    Attributes:
        layers: Layer name -> ``(a, g)``: inputs ``(batch, T, in + has_bias)`` and gradients of the
            per-sample loss with respect to the outputs ``(batch, T, out)`` (see ``LayerCapture.layer``).
            Each layer's rows are written when first looked up, so a pass that reads only ``raw`` for
            a layer never unfolds its patches.
        labels: Observed int64 labels ``(batch,)`` on the model's device.
        index: Dataset indices ``(batch,)`` (int64, CPU), or ``None`` when the loader yields ``(x, y)``.

    From ``captured_batches(..., reuse_buffers=True)`` (the default) the tensors in ``layers`` live in
    buffers that the next batch overwrites: use them before advancing the generator.
    """

    def __init__(self, capture: LayerCapture, labels: Tensor, index: Tensor | None) -> None:
        self._raw = {name: capture.raw(name) for name in capture.tracked}
        self.layers: Mapping[str, tuple[Tensor, Tensor]] = _LayerRows(capture, self._raw)
        self.labels, self.index = labels, index

    def raw(self, name: str) -> tuple[list[Tensor], list[Tensor]]:
        """The layer's inputs and output gradients as recorded, one per call (``LayerCapture.raw``)."""
        return self._raw[name]

    @property
    def size(self) -> int:
        """Number of samples in the batch."""
        return self.labels.shape[0]

    def subset(self, rows: Tensor, capture: LayerCapture) -> StoredBatch:
        """Copies of the given rows' recorded inputs and gradients, valid after the pass moves on.

        Args:
            rows: Positions in the batch (int64).
            capture: A ``LayerCapture`` over the same layers that writes the stored batch's ``layers``
                (not the pass's own, whose buffers the next batch overwrites).
        """
        return _copied_rows(self._raw, rows, capture, self.index)

    def kept(self, capture: LayerCapture) -> StoredBatch:
        """The whole batch as a ``StoredBatch`` of the recorded tensors themselves, without copies.

        The pass records fresh inputs and output gradients for every batch (only the rows of
        ``layers`` live in reused buffers, and an input batch that shares the loader's memory is
        copied first, see ``_owned``), so these stay valid after it moves on.

        Args:
            capture: As in ``subset``: writes the stored batch's ``layers``, into tensors of its own.
        """
        return StoredBatch(capture, self._raw, self.size, self.index)

    @property
    def nbytes(self) -> int:
        """Bytes of the recorded tensors, what a ``subset`` of every row would hold."""
        return _recorded_bytes(self._raw)


class StoredBatch:
    """Recorded layer inputs and output gradients kept from a pass: ``raw``, ``layers``, ``size`` and ``index`` as in ``CapturedBatch``."""

    def __init__(
        self,
        capture: LayerCapture,
        raw: Mapping[str, tuple[list[Tensor], list[Tensor]]],
        size: int,
        index: Tensor | None = None,
    ) -> None:
        self._raw = dict(raw)
        self.layers: Mapping[str, tuple[Tensor, Tensor]] = _LayerRows(capture, self._raw)
        self.size, self.index = size, index

    def raw(self, name: str) -> tuple[list[Tensor], list[Tensor]]:
        """The layer's inputs and output gradients, one per call."""
        return self._raw[name]

    def subset(self, rows: Tensor, capture: LayerCapture) -> StoredBatch:
        """Copies of the given rows, as ``CapturedBatch.subset``."""
        return _copied_rows(self._raw, rows, capture, self.index)

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded tensors."""
        return _recorded_bytes(self._raw)


def _recorded_bytes(raw: Mapping[str, tuple[list[Tensor], list[Tensor]]]) -> int:
    return sum(t.numel() * t.element_size() for inputs, grads in raw.values() for t in (*inputs, *grads))


def _copied_rows(
    raw: Mapping[str, tuple[list[Tensor], list[Tensor]]], rows: Tensor, capture: LayerCapture, index: Tensor | None
) -> StoredBatch:
    """A ``StoredBatch`` of copies of ``rows`` (positions in the batch) of every layer's recorded tensors."""
    copied = {
        name: ([_selected(x, rows) for x in inputs], [_selected(g, rows) for g in grads])
        for name, (inputs, grads) in raw.items()
    }
    return StoredBatch(capture, copied, rows.numel(), None if index is None else index[rows])


def _selected(tensor: Tensor, rows: Tensor) -> Tensor:
    """Copies of ``tensor[rows]`` in the tensor's memory order (channels-last stays channels-last).

    The later phases read a Conv2d's channels-last output gradients as rows without a copy (see
    ``capture._writes``), so the kept copies keep that order; a plain ``index_select`` would not.
    """
    rows = rows.to(tensor.device)
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    return tensor.index_select(0, rows)


class _LayerRows(Mapping):
    """``LayerCapture.rows`` of every tracked layer, each computed once, on first lookup."""

    def __init__(self, capture: LayerCapture, raw: Mapping[str, tuple[list[Tensor], list[Tensor]]]) -> None:
        self._capture, self._raw = capture, raw
        self._rows: dict[str, tuple[Tensor, Tensor]] = {}

    def __getitem__(self, name: str) -> tuple[Tensor, Tensor]:
        if name not in self._rows:
            self._rows[name] = self._capture.rows(name, *self._raw[name])
        return self._rows[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def captured_batches(
    model: nn.Module,
    loader: Iterable,
    tracked: Mapping[str, nn.Module],
    *,
    fisher: str = "empirical",
    seed: int = 0,
    desc: str,
    progress: bool | None,
    reuse_buffers: bool = True,
) -> Iterator[CapturedBatch]:
    """Run the model over a loader and yield each batch's captured layer inputs and output gradients.

    The backward pass starts from the sum of per-sample cross-entropies, so the captured output
    gradients are exact per-sample gradients; it differentiates only the zero probes that
    ``LayerCapture(probe=True)`` adds to the tracked outputs (no ``.grad`` is written, no weight
    gradient is computed, backward stops at the first tracked layer). Call inside ``influence_mode``.

    Args:
        model: The classifier, in ``influence_mode``.
        loader: Yields ``(x, y)`` or ``(x, y, index)``.
        tracked: Qualified name -> tracked layer.
        fisher: Labels of the loss: ``"empirical"`` (observed) or ``"sampled"`` (from the softmax).
        seed: Seed of the label sampler for ``"sampled"``.
        desc: Progress bar label.
        progress: See ``progress_bar``.
        reuse_buffers: Write every batch's ``(a, g)`` into the same buffers (see ``LayerCapture``):
            a batch's layer tensors are valid until the next batch is drawn. On CPU this saves the
            page faults of fresh allocations, about as costly as the copies themselves.

    Yields:
        One ``CapturedBatch`` per loader batch.
    """
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed) if fisher == "sampled" else None
    with LayerCapture(tracked, reuse_buffers=reuse_buffers, probe=True) as capture:
        for batch in progress_bar(loader, desc=desc, enabled=progress):
            x, y, index = unpack_batch(batch)
            x, y = _owned(_channels_last(x.to(device)), x), torch.as_tensor(y).to(device)
            index = None if index is None else torch.as_tensor(index, dtype=torch.int64)
            capture.clear()
            logits = model(x)
            loss = per_sample_loss(logits, fisher_labels(logits, y, fisher, generator)).sum()
            if capture.probes():  # none when no tracked layer ran: capture.layer says so below
                torch.autograd.grad(loss, capture.probes(), allow_unused=True)
            yield CapturedBatch(capture, y, index)


def _owned(x: Tensor, source: Tensor) -> Tensor:
    """``x``, copied if it shares memory with the loader's batch ``source``.

    A pass may keep what it records (``CapturedBatch.kept``), and a layer's recorded input can be the
    batch itself or a view of it (a Linear layer first); a loader that writes its batches into one
    buffer would overwrite those. The copy is of the input batch only, small beside the activations.
    """
    if x.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
        return x.clone(memory_format=torch.preserve_format)
    return x


def _channels_last(x: Tensor) -> Tensor:
    """An image batch in channels-last memory order, which the model's layers then keep.

    CPU max pooling runs several times faster on channels-last tensors than on contiguous ones (see
    ``benchmarks/RESULTS.md``, influence engine), and a Conv2d's channels-last output gradients are its
    rows without a copy (``capture._writes``); the values, and so every statistic, are the same. A
    one-channel batch is contiguous in both orders, so it gets channels-last strides explicitly: from
    contiguous ones the first convolution would answer in the contiguous order.
    """
    if x.dim() != 4:
        return x
    if x.shape[1] != 1:
        return x.contiguous(memory_format=torch.channels_last)
    height, width = x.shape[2:]
    return torch.empty_strided(x.shape, (height * width, 1, width, 1), dtype=x.dtype, device=x.device).copy_(x)
