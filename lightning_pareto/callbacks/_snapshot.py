"""Rollback state for course correction: model, optimizers, LR schedulers, precision plugin and RNG states.

A :class:`TrainingSnapshot` holds CPU copies of everything that decides how the next training epoch
goes, so the epoch can be trained again from exactly the same state. Lightning's progress counters
(epoch, global step) are deliberately *not* part of it: a redo is an extra epoch, not a rewind.
Everything is stored as tensors and builtins, so a snapshot can live in a checkpoint that
``torch.load(weights_only=True)`` reads.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

__all__ = [
    "TrainingSnapshot",
    "blend_training_states",
    "capture_rng_state",
    "cpu_copy",
    "follow_restored_rng",
    "preserved_rng",
    "restore_rng_state",
    "train_samplers",
]


def cpu_copy(value: Any) -> Any:
    """A deep copy of a nested state with every tensor detached and cloned to the CPU.

    Args:
        value: Tensors, dicts, lists, tuples and builtins, nested arbitrarily.

    Returns:
        The same structure sharing no tensor storage with ``value``.
    """
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(item) for item in value)
    return value


def capture_rng_state() -> dict[str, Any]:
    """The global random states of torch (CPU and every initialised CUDA device), numpy and ``random``.

    Returns:
        ``{"torch": ByteTensor, "cuda": list[ByteTensor], "numpy": dict, "python": tuple}``: tensors
        and builtins only.
    """
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global random states captured by :func:`capture_rng_state`.

    Args:
        state: What :func:`capture_rng_state` returned (possibly after a checkpoint round trip).
    """
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without changing the global random states seen by the code after it."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def train_samplers(trainer: Trainer) -> list[Any]:
    """The samplers of the training dataloaders that shuffle by epoch (``set_epoch``, e.g. ``DistributedSampler``)."""
    combined = getattr(trainer.fit_loop, "_combined_loader", None)
    samplers = []
    for loader in [] if combined is None else combined.flattened:
        for sampler in (
            getattr(loader, "sampler", None),
            getattr(getattr(loader, "batch_sampler", None), "sampler", None),
        ):
            if sampler is not None and callable(getattr(sampler, "set_epoch", None)) and sampler not in samplers:
                samplers.append(sampler)
    return samplers


def follow_restored_rng(trainer: Trainer, sampler_epoch: int | None) -> None:
    """Make the epoch about to start draw the batch order of the epoch whose RNG state was just restored.

    Call at ``on_train_epoch_start`` after restoring RNG state. A sampler that shuffles by epoch number
    (``DistributedSampler`` under DDP) gets that epoch's number back. Lightning creates the data
    iterator of later epochs after this hook, but that of a fit's first epoch (a fresh or a resumed
    run) before it; there the iterator is created again, so a redo after a resume replays the same
    batches as it would have without the interruption. (A snapshot taken at the start of a resumed
    run's first epoch holds the RNG after that iterator was made: its replay draws other batches.)

    Args:
        trainer: The running Trainer.
        sampler_epoch: The replayed epoch's sampler epoch (:attr:`TrainingSnapshot.sampler_epoch`).
    """
    if sampler_epoch is not None:
        for sampler in train_samplers(trainer):
            sampler.set_epoch(sampler_epoch)
    fit_loop = trainer.fit_loop
    if trainer.current_epoch > 0 and not fit_loop.is_resuming and not fit_loop.epoch_loop.restarting:
        return  # Lightning creates this epoch's iterator after the hook
    fetcher = getattr(fit_loop, "_data_fetcher", None)
    if fetcher is not None:
        iter(fetcher)


@dataclass
class TrainingSnapshot:
    """CPU copies of the state one training epoch starts from.

    Attributes:
        epoch: ``trainer.current_epoch`` when the snapshot was taken.
        model: The LightningModule's ``state_dict`` (parameters and buffers).
        optimizers: ``state_dict()`` of each of ``trainer.optimizers``, in order.
        schedulers: ``state_dict()`` of each LR scheduler in ``trainer.lr_scheduler_configs``, in order.
        precision: ``trainer.precision_plugin.state_dict()`` (e.g. the AMP grad scaler's scale).
        rng: Global random states, see :func:`capture_rng_state`.
        sampler_epoch: The epoch number of the training sampler that shuffles by epoch (DDP), if any.
    """

    epoch: int
    model: dict[str, Tensor]
    optimizers: list[dict[str, Any]]
    schedulers: list[dict[str, Any]]
    precision: dict[str, Any]
    rng: dict[str, Any]
    sampler_epoch: int | None = None

    @classmethod
    def take(cls, trainer: Trainer, pl_module: LightningModule) -> TrainingSnapshot:
        """Copy the current training state to the CPU.

        Args:
            trainer: The running Trainer.
            pl_module: Its LightningModule.

        Returns:
            A snapshot sharing no storage with the live state.
        """
        return cls(
            epoch=int(trainer.current_epoch),
            model=cpu_copy(pl_module.state_dict()),
            optimizers=[cpu_copy(optimizer.state_dict()) for optimizer in trainer.optimizers],
            schedulers=[cpu_copy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs],
            precision=cpu_copy(trainer.precision_plugin.state_dict()),
            rng=capture_rng_state(),
            sampler_epoch=next((int(s.epoch) for s in train_samplers(trainer) if hasattr(s, "epoch")), None),
        )

    def restore(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Put the training state back to this snapshot; the snapshot itself stays unchanged.

        Parameters are copied in place, so optimizers keep referring to the module's parameters.
        Optimizer states get fresh copies (``Optimizer.load_state_dict`` keeps tensors that already
        sit on the right device, which would otherwise alias the snapshot).

        Args:
            trainer: The running Trainer, with as many optimizers and schedulers as when taken.
            pl_module: Its LightningModule.

        Raises:
            ValueError: If the number of optimizers or schedulers changed since the snapshot.
        """
        if len(trainer.optimizers) != len(self.optimizers) or len(trainer.lr_scheduler_configs) != len(self.schedulers):
            raise ValueError(
                f"the snapshot has {len(self.optimizers)} optimizer(s) and {len(self.schedulers)} scheduler(s), the "
                f"trainer {len(trainer.optimizers)} and {len(trainer.lr_scheduler_configs)}; it cannot be restored."
            )
        pl_module.load_state_dict(self.model, strict=True)
        for optimizer, state in zip(trainer.optimizers, self.optimizers):
            optimizer.load_state_dict(cpu_copy(state))
        for config, state in zip(trainer.lr_scheduler_configs, self.schedulers):
            config.scheduler.load_state_dict(cpu_copy(state))
        trainer.precision_plugin.load_state_dict(cpu_copy(self.precision))
        restore_rng_state(self.rng)

    def state_dict(self) -> dict[str, Any]:
        """The snapshot as nested tensors and builtins, for a callback's checkpoint state."""
        return {
            "epoch": self.epoch,
            "model": self.model,
            "optimizers": self.optimizers,
            "schedulers": self.schedulers,
            "precision": self.precision,
            "rng": self.rng,
            "sampler_epoch": self.sampler_epoch,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrainingSnapshot:
        """Rebuild a snapshot saved with :meth:`state_dict`."""
        return cls(
            **{key: state[key] for key in ("epoch", "model", "optimizers", "schedulers", "precision", "rng")},
            sampler_epoch=state.get("sampler_epoch"),
        )


def blend_training_states(
    trainer: Trainer, pl_module: LightningModule, start: TrainingSnapshot, end: TrainingSnapshot, fraction: float
) -> None:
    """Set the model and optimizer states to ``start + fraction * (end - start)``.

    Floating-point tensors (parameters, buffers, optimizer moments) are interpolated; everything else
    (integer buffers, step counts, hyperparameters) is taken from ``start``. Schedulers, precision
    plugin and RNG are left as they are: the two snapshots are meant to be the ends of the same epoch
    trained two ways, where those agree.

    Args:
        trainer: The running Trainer, with as many optimizers as the snapshots hold.
        pl_module: Its LightningModule.
        start: The state at ``fraction = 0``.
        end: The state at ``fraction = 1``.
        fraction: Where on the line between the two.
    """

    def mix(a: Any, b: Any) -> Any:
        if isinstance(a, Tensor):
            return a + fraction * (b - a) if a.is_floating_point() else a.clone()
        if isinstance(a, dict):
            return {key: mix(value, b[key]) for key, value in a.items()}
        if isinstance(a, (list, tuple)):
            return type(a)(mix(x, y) for x, y in zip(a, b))
        return a

    pl_module.load_state_dict(mix(start.model, end.model), strict=True)
    for optimizer, first, last in zip(trainer.optimizers, start.optimizers, end.optimizers, strict=True):
        optimizer.load_state_dict(mix(first, last))
