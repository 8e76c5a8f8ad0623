"""Quiet Lightning runs: silence per-``Trainer`` info messages and hints, and train with a silent ``Trainer``.

Trimming and active learning build many Trainers; a user should see their results, not the banners.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule
    from torch.utils.data import DataLoader

__all__ = ["fit_quietly", "quiet_lightning"]


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's loggers at WARNING; its ``PossibleUserWarning`` hints and ``LeafSpec`` notice ignored."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            # Lightning 2.6 on torch >= 2.9 repeats this deprecation notice at every fit.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def fit_quietly(
    module: LightningModule,
    loader: DataLoader,
    *,
    max_epochs: int,
    seed: int,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> torch.device:
    """Train ``module`` with a fresh ``Trainer`` that logs, checkpoints, validates and prints nothing.

    ``seed_everything(seed)`` runs first, so two calls with the same seed see the same batch order
    and dropout masks. Used wherever the package retrains many times (trimming, active learning).

    Args:
        module: The LightningModule, trained in place.
        loader: The training batches.
        max_epochs: Training epochs.
        seed: Seed of the run.
        trainer_kwargs: Extra ``Trainer`` arguments (e.g. ``{"accelerator": "gpu"}``); defaults are
            one CPU device. Logging, checkpoints, progress bars and validation stay off.

    Returns:
        The device the Trainer trained on (the module is left there).
    """
    from lightning.pytorch import Trainer, seed_everything

    options = {"accelerator": "cpu", "devices": 1, **(trainer_kwargs or {})}
    options.update(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    with quiet_lightning():
        seed_everything(seed, verbose=False)
        trainer = Trainer(**options)
        trainer.fit(module, train_dataloaders=loader)
    return trainer.strategy.root_device
