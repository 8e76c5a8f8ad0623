"""Extra epochs for redone epochs: a rolled-back epoch is trained again as one more epoch."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Trainer

__all__ = ["EpochBudget"]


class EpochBudget:
    """The epochs (and steps) a callback added to the Trainer's budget for the epochs it redid.

    Lightning's progress counters are never rewound: an epoch that is rolled back and trained again
    counts as one more epoch, so ``max_epochs`` (and ``max_steps``, by one epoch of steps) grows by one
    per redo and the run still trains the number of epochs it was given. The Trainer's limits are not
    checkpointed; :meth:`reapply` puts a resumed run's extension back.
    """

    def __init__(self) -> None:
        self.extra_epochs = 0
        self.extra_steps = 0
        self._applied_epochs = 0
        self._applied_steps = 0

    def reset(self) -> None:
        """A new Trainer starts without the extension (call in ``setup``)."""
        self._applied_epochs = self._applied_steps = 0

    def reapply(self, trainer: Trainer) -> None:
        """Extend a (resumed) Trainer by what was added and is not applied to it yet (call in ``on_fit_start``)."""
        self._extend(trainer, self.extra_epochs - self._applied_epochs, self.extra_steps - self._applied_steps)

    def change(self, trainer: Trainer, epochs: int) -> None:
        """Add ``epochs`` (negative: give back) to the Trainer's budget and remember it for a resume."""
        steps = epochs * _steps_per_epoch(trainer) if trainer.max_steps >= 0 else 0
        self.extra_epochs += epochs
        self.extra_steps += steps
        self._extend(trainer, epochs, steps)

    def state_dict(self) -> dict[str, int]:
        """The extension so far."""
        return {"extra_epochs": self.extra_epochs, "extra_steps": self.extra_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.extra_epochs = int(state_dict.get("extra_epochs", 0))
        self.extra_steps = int(state_dict.get("extra_steps", 0))

    def _extend(self, trainer: Trainer, epochs: int, steps: int) -> None:
        fit_loop = trainer.fit_loop
        if epochs and fit_loop.max_epochs is not None and fit_loop.max_epochs >= 0:
            fit_loop.max_epochs += epochs
        if steps and fit_loop.epoch_loop.max_steps >= 0:
            fit_loop.epoch_loop.max_steps += steps
        self._applied_epochs += epochs
        self._applied_steps += steps


def _steps_per_epoch(trainer: Trainer) -> int:
    batches = trainer.num_training_batches
    if not isinstance(batches, int) and not (isinstance(batches, float) and math.isfinite(batches)):
        return 0
    return math.ceil(int(batches) / max(1, trainer.accumulate_grad_batches))
