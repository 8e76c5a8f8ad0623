"""The sample-weight contract: indexed batches, a weight store, and the weighted loss.

Callbacks that reweight training samples (direct improvement, course correction, trimming) write a
weight per training-set index into a :class:`SampleWeightStore`; the LightningModule reads it when it
reduces its per-sample losses. Batches therefore carry the dataset index of every sample, which
:class:`~lightning_pareto.data.IndexedDataset` adds to any map-style dataset.

A user's own LightningModule opts in with :class:`SampleWeightedMixin`::

    class MyModule(SampleWeightedMixin, LightningModule):
        def training_step(self, batch, batch_idx):
            x, y, index = unpack_batch(batch)
            per_sample = F.cross_entropy(self(x), y, reduction="none")
            return self.weighted_mean(per_sample, index)

The mixin also stores pending weights in the module's checkpoint. A module that overrides
``on_save_checkpoint`` / ``on_load_checkpoint`` must call ``super()`` in them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_pareto.influence.batches import unpack_batch

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

__all__ = [
    "UNUSED_WEIGHTS",
    "SampleWeightStore",
    "SampleWeightedMixin",
    "require_indexed_batches",
    "require_sample_weights",
    "require_single_weight_writer",
    "unpack_batch",
    "weights_unused",
]

_CHECKPOINT_KEY = "sample_weights"


class SampleWeightStore:
    """Per-sample training weights, indexed by dataset index; ones while no weights are set.

    Example:
        >>> store = SampleWeightStore()
        >>> store.lookup(torch.tensor([0, 2]))
        tensor([1., 1.])
        >>> store.set(torch.tensor([0.0, 1.0, 2.0]))
        >>> store.lookup(torch.tensor([0, 2]))
        tensor([0., 2.])
    """

    def __init__(self) -> None:
        self._weights: Tensor | None = None
        self.lookups = 0  # lookups while weights were set: callbacks notice weights that never reach the loss

    @property
    def active(self) -> bool:
        """Whether weights are set (``False`` means every sample has weight one)."""
        return self._weights is not None

    @property
    def weights(self) -> Tensor | None:
        """The weights as a float32 tensor of shape ``(n,)``, or ``None`` when inactive."""
        return self._weights

    def set(self, weights: Tensor) -> None:
        """Set one weight per training sample.

        Args:
            weights: Tensor of shape ``(n,)`` with ``n`` the training-set size; finite and
                non-negative. Stored as float32 (a copy; later changes to ``weights`` do not leak in).

        Raises:
            TypeError: If ``weights`` is not a floating-point tensor.
            ValueError: If ``weights`` is not one-dimensional, is empty, or has negative or
                non-finite entries.
        """
        if not isinstance(weights, Tensor) or not weights.is_floating_point():
            raise TypeError(
                f"weights must be a floating-point torch.Tensor of shape (n,), got {type(weights).__name__}"
                + (f" of dtype {weights.dtype}" if isinstance(weights, Tensor) else "")
                + "; convert with torch.as_tensor(weights, dtype=torch.float32)."
            )
        if weights.ndim != 1 or weights.numel() == 0:
            raise ValueError(
                f"weights must be a non-empty 1-D tensor (one weight per sample), got shape {tuple(weights.shape)}."
            )
        if not bool(torch.isfinite(weights).all()):
            raise ValueError("weights contain NaN or inf; every weight must be finite.")
        if bool((weights < 0).any()):
            raise ValueError(f"weights must be non-negative, got a minimum of {weights.min().item():.4g}.")
        self._weights = weights.detach().to(torch.float32).clone()

    def clear(self) -> None:
        """Drop the weights, so every sample has weight one again."""
        self._weights = None

    def lookup(self, index: Tensor) -> Tensor:
        """The weights of the samples with the given dataset indices.

        Args:
            index: Integer tensor of shape ``(b,)`` with dataset indices.

        Returns:
            Float32 tensor of shape ``(b,)`` on ``index.device``: the stored weights, or ones when
            inactive.

        Raises:
            IndexError: If an index is outside the range of the stored weights.
        """
        if self._weights is None:
            return torch.ones(index.shape, dtype=torch.float32, device=index.device)
        self.lookups += 1
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self._weights.numel()):
            raise IndexError(
                f"sample index out of range: weights cover indices 0..{self._weights.numel() - 1}, "
                f"the batch has {int(index.min())}..{int(index.max())}. Set one weight per training sample."
            )
        if self._weights.device != index.device:
            # Keep the weights where the batches are, so lookups after the first are copy-free.
            self._weights = self._weights.to(index.device)
        return self._weights[index]

    def state_dict(self) -> dict[str, Tensor | None]:
        """The weights (on CPU) for a checkpoint."""
        return {"weights": None if self._weights is None else self._weights.cpu().clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore weights saved by :meth:`state_dict`."""
        weights = state_dict.get("weights")
        if weights is None:
            self.clear()
        else:
            self.set(weights)

    def __repr__(self) -> str:
        if self._weights is None:
            return "SampleWeightStore(inactive)"
        return f"SampleWeightStore(n={self._weights.numel()}, mean={self._weights.mean().item():.4g})"


class SampleWeightedMixin:
    """Gives a LightningModule a :class:`SampleWeightStore` and a weighted batch mean.

    Put it before ``LightningModule`` in the bases. The store is saved in, and restored from, the
    module's checkpoint under the key ``"sample_weights"``.
    """

    @property
    def sample_weights(self) -> SampleWeightStore:
        """The store the reweighting callbacks write and :meth:`weighted_mean` reads."""
        store = self.__dict__.get("_sample_weight_store")
        if store is None:
            store = SampleWeightStore()
            self.__dict__["_sample_weight_store"] = store
        return store

    def weighted_mean(self, per_sample_loss: Tensor, index: Tensor | None) -> Tensor:
        """``sum(w * loss) / b``: the batch mean of the per-sample losses times their weights.

        Dividing by the batch size (not by ``sum(w)``) means weights of mean one keep the loss scale,
        and a weight of zero removes a sample from the gradient exactly.

        Args:
            per_sample_loss: Tensor of shape ``(b,)`` (``reduction="none"``).
            index: Int64 tensor of shape ``(b,)`` with the samples' dataset indices, or ``None``
                for batches without indices (allowed only while no weights are set).

        Returns:
            Scalar tensor.

        Raises:
            ValueError: If weights are set but the batch carries no indices, or the shapes differ.
        """
        if per_sample_loss.ndim != 1:
            raise ValueError(
                f"per_sample_loss must have shape (b,), got {tuple(per_sample_loss.shape)}; use reduction='none'."
            )
        if index is None:
            if self.sample_weights.active:
                raise ValueError(
                    "sample weights are set but the batch has no sample indices; wrap the training dataset in "
                    "lightning_pareto.IndexedDataset so batches are (x, y, index)."
                )
            return per_sample_loss.mean()
        if index.shape != per_sample_loss.shape:
            raise ValueError(
                f"index shape {tuple(index.shape)} does not match per_sample_loss shape {tuple(per_sample_loss.shape)}."
            )
        weights = self.sample_weights.lookup(index).to(per_sample_loss.dtype)
        return (weights * per_sample_loss).sum() / per_sample_loss.shape[0]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the pending sample weights in the checkpoint."""
        parent = getattr(super(), "on_save_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
        checkpoint[_CHECKPOINT_KEY] = self.sample_weights.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the sample weights from the checkpoint (inactive if it has none)."""
        parent = getattr(super(), "on_load_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
        self.sample_weights.load_state_dict(checkpoint.get(_CHECKPOINT_KEY, {}))


def require_single_weight_writer(trainer: Trainer, callback: Any, who: str) -> None:
    """Raise if another callback of the Trainer also sets sample weights (``writes_sample_weights = True``).

    The store holds one set of weights: two writers would overwrite (or clear) each other's.

    Raises:
        ValueError: Naming both callbacks.
    """
    others = [
        type(cb).__name__
        for cb in trainer.callbacks
        if cb is not callback and getattr(cb, "writes_sample_weights", False)
    ]
    if others:
        raise ValueError(
            f"{who} and {others} would overwrite each other's sample weights; use one of DirectImprovement, "
            "CourseCorrection, ClassUpweighting and InfluenceTrimming per Trainer."
        )


UNUSED_WEIGHTS = (
    "the weights were set but the module never looked them up: its training_step does not reduce the loss with "
    "self.weighted_mean(per_sample_loss, index), so they did not reach the loss"
)


def weights_unused(store: SampleWeightStore, lookups_before: int) -> bool:
    """Whether weights were in force but never looked up since the store had counted ``lookups_before``.

    Example:
        >>> store = SampleWeightStore()
        >>> store.set(torch.ones(3))
        >>> before = store.lookups
        >>> weights_unused(store, before)
        True
        >>> _ = store.lookup(torch.tensor([0]))
        >>> weights_unused(store, before)
        False
    """
    return store.active and store.lookups == lookups_before


def require_sample_weights(pl_module: LightningModule, who: str) -> SampleWeightStore:
    """Return the module's weight store, or fail with a message that says how to add one.

    Args:
        pl_module: The LightningModule being trained.
        who: Name of the caller, used in the message (e.g. ``"CourseCorrection"``).

    Returns:
        The module's :class:`SampleWeightStore`.

    Raises:
        TypeError: If the module has no ``sample_weights`` store.
    """
    store = getattr(pl_module, "sample_weights", None)
    if not isinstance(store, SampleWeightStore):
        raise TypeError(
            f"{who} reweights training samples, but {type(pl_module).__name__} has no `sample_weights` store. "
            "Use lightning_pareto.ClassifierModule, or add lightning_pareto.weighting.SampleWeightedMixin to your "
            "module's bases and reduce the per-sample loss with `self.weighted_mean(per_sample_loss, index)`."
        )
    return store


def require_indexed_batches(trainer: Trainer, who: str) -> None:
    """Check that the training batches carry sample indices; call it from a callback's ``setup``.

    Looks at the first sample of the training dataset (no batch is loaded).

    Args:
        trainer: The Trainer, with its training data attached (any time from ``setup`` on).
        who: Name of the caller, used in the message.

    Raises:
        ValueError: If the training samples are ``(x, y)`` pairs without an index.
    """
    from lightning_pareto._run_data import train_dataset
    from lightning_pareto.data.indexed import IndexedDataset

    dataset = train_dataset(trainer)
    if dataset is None or isinstance(dataset, IndexedDataset):
        return
    try:
        sample = dataset[0]
    except (TypeError, NotImplementedError, IndexError, KeyError):
        return  # an iterable or empty dataset: the module's weighted_mean reports missing indices at the first step
    if not (isinstance(sample, (tuple, list)) and len(sample) == 3):
        raise ValueError(
            f"{who} needs the dataset index of every training sample, but the training dataset "
            f"({type(dataset).__name__}) yields {len(sample) if isinstance(sample, (tuple, list)) else 1}-element "
            "samples. Wrap it: `IndexedDataset(dataset)` from lightning_pareto, so batches are (x, y, index); "
            "the lightning_pareto datamodules do this already."
        )
