"""Where a running fit's data is: the training dataset and the validation batches, from ``setup`` on.

The public ``Trainer`` properties (``train_dataloader``, ``val_dataloaders``) are filled only when the
fit loop starts; a callback that must check the data in ``setup`` (before any training, so that bad
input fails early) has to ask the loops' data sources instead. This module is the one place that
does, so a change in Lightning's internals is fixed here once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from lightning.pytorch import Trainer
from torch.utils.data import Dataset

__all__ = ["has_validation_data", "train_collate", "train_dataset", "validation_batches"]


def train_dataset(trainer: Trainer) -> Dataset | None:
    """The fit's training dataset, or ``None`` when no training data is attached (not fitting)."""
    loader = trainer.train_dataloader
    if loader is None:
        source = getattr(trainer.fit_loop, "_data_source", None)
        if source is None or source.instance is None or not source.is_defined():
            return None
        loader = source.dataloader()
    return getattr(loader, "dataset", None)


def train_collate(trainer: Trainer) -> Any:
    """The training loader's ``collate_fn`` (``None`` before the fit loop has loaded it)."""
    return getattr(trainer.train_dataloader, "collate_fn", None)


def has_validation_data(trainer: Trainer) -> bool:
    """Whether the fit validates: validation data attached and ``limit_val_batches`` not 0."""
    source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
    return source is not None and source.is_defined() and trainer.limit_val_batches != 0


def validation_batches(trainer: Trainer) -> Iterable:
    """Every validation loader of the fit as one re-iterable stream of batches (loaded if need be).

    Raises:
        RuntimeError: If the fit has no validation data.
    """
    if trainer.val_dataloaders is None:
        trainer.fit_loop.epoch_loop.val_loop.setup_data()
    loaders = trainer.val_dataloaders
    if loaders is None:
        raise RuntimeError("the Trainer has no validation data to load")
    return _Chained(loaders) if isinstance(loaders, (list, tuple)) else loaders


class _Chained:
    """Several validation loaders iterated as one (re-iterable)."""

    def __init__(self, loaders: Sequence[Iterable]) -> None:
        self.loaders = loaders

    def __iter__(self) -> Iterator[Any]:
        return itertools.chain.from_iterable(self.loaders)
