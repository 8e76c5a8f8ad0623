"""``DirectImprovement``: reweight the training set for chosen epochs to raise chosen classes (seed 003, DI)."""

from __future__ import annotations

import math
import re
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lightning_pareto.callbacks._intervention import (
    CurvatureName,
    FitnessMode,
    InterventionCallback,
    InterventionRecord,
    InterventionSettings,
    PresetName,
)
from lightning_pareto.callbacks.monitor import class_indices
from lightning_pareto.weighting import require_sample_weights

__all__ = ["DirectImprovement"]

_WORST = re.compile(r"^worst:(\d+)$")


class DirectImprovement(InterventionCallback):
    """Direct Improvement: at chosen epochs, reweight training samples to raise the target classes' accuracy.

    After the validation of a chosen epoch ``e`` (0-based, as ``trainer.current_epoch``) it computes
    the category-wise influence of every training sample on the current model, reports the Pareto
    ceiling, searches per-sample weights with Pareto-LP-GA (maximise the targets' gain, bound the
    other classes' loss) and trains the next ``apply_epochs`` epochs with them; then the weights are
    uniform again. ``before`` is the per-class validation accuracy after epoch ``e``, ``after`` the
    one after the last weighted epoch; each intervention is a line of ``interventions.jsonl`` in the
    log directory and a table printed at the end of fit.

    Needs :class:`~lightning_pareto.PerClassAccuracy` among the callbacks, a module with the
    sample-weight contract (``ClassifierModule``, or ``SampleWeightedMixin``) and training batches
    with sample indices; validation must run at the chosen epochs. A failed intervention (NaN
    influence, infeasible LP, no improving candidate) leaves the weights uniform and is logged as
    ``"skipped"`` with its reason; it never stops training.

    Args:
        targets: Classes to improve: names or indices (``["3", 8]``), or ``"worst:k"`` for the ``k``
            classes with the lowest validation accuracy at the chosen epoch.
        at_epochs: Epochs after which to intervene (0-based); each must leave at least one epoch to
            train with the weights. Give this or ``every_n_epochs``.
        every_n_epochs: Intervene after every ``n``-th epoch (epochs ``n-1, 2n-1, ...``), never after
            the last one. Give this or ``at_epochs``.
        apply_epochs: Number of epochs trained with the weights before they are cleared.
        curvature: Influence curvature: ``"ekfac"``, ``"kfac"`` or ``"exact"`` (small models only).
        damping: Curvature damping ``lambda >= 0``; ``None`` picks 0.1 times the curvature's largest
            eigenvalue.
        curvature_samples: Fit the curvature on about this many training samples (a seeded subset;
            every sample is still scored), or ``None`` for all. Speeds up large training sets.
        modules: Layers the influence differentiates, e.g. ``["head"]`` for the last layer only
            (names in ``pl_module.net``); ``None`` uses every Linear/Conv2d layer.
        fitness: How the GA scores a candidate: ``"predicted"`` (first-order gains, no training,
            fast) or ``"trial"`` (the paper's: train from the same state with the candidate weights
            and measure per-class validation accuracy).
        trial_batches: Batches per trial with ``fitness="trial"``; ``None`` trains a full epoch.
        preset: GA size: ``"fast"`` (a few evaluations) or ``"paper"`` (20 generations of 24).
        w_min: Smallest sample weight, in ``[0, 1]`` (0 lets a sample be dropped).
        w_max: Largest sample weight, at least 1.
        trust: Trust radius: mean ``|w - 1|`` allowed (the first-order prediction holds near 1).
        time_budget: Wall-clock seconds for one weight search, or ``None`` for no limit.
        seed: Seed of the search and of the trial epochs.
        log_figures: Log the ceiling figure, influence scatter and weights histogram to TensorBoard.
        influence_batch_size: Batch size of the influence passes.

    Example::

        trainer = Trainer(max_epochs=20, callbacks=[
            PerClassAccuracy(),
            DirectImprovement(targets=["3", "8"], at_epochs=[9]),
        ])
    """

    mode = "direct_improvement"

    def __init__(
        self,
        targets: list[int | str] | str,
        at_epochs: list[int] | None = None,
        every_n_epochs: int | None = None,
        apply_epochs: int = 1,
        curvature: CurvatureName = "ekfac",
        damping: float | None = None,
        curvature_samples: int | None = None,
        modules: list[str] | None = None,
        fitness: FitnessMode = "predicted",
        trial_batches: int | None = None,
        preset: PresetName = "fast",
        w_min: float = 0.0,
        w_max: float = 3.0,
        trust: float = 0.5,
        time_budget: float | None = None,
        seed: int = 0,
        log_figures: bool = True,
        influence_batch_size: int = 256,
    ) -> None:
        super().__init__(
            InterventionSettings(
                curvature=curvature, damping=damping, curvature_samples=curvature_samples,
                modules=None if modules is None else tuple(modules),
                fitness=fitness, trial_batches=trial_batches, preset=preset, w_min=w_min, w_max=w_max, trust=trust,
                time_budget=time_budget, seed=seed, log_figures=log_figures, influence_batch_size=influence_batch_size,
            )  # fmt: skip
        )
        self.worst_k = _parse_worst(targets)
        if self.worst_k is None:
            if isinstance(targets, str) or not isinstance(targets, (list, tuple)):
                raise ValueError(f"targets must be a list of class names/indices or 'worst:k', got {targets!r}.")
            if not targets:
                raise ValueError("targets is empty; name at least one class, or use 'worst:k'.")
        if not isinstance(apply_epochs, int) or isinstance(apply_epochs, bool) or apply_epochs < 1:
            raise ValueError(f"apply_epochs must be a positive integer, got {apply_epochs!r}.")
        if (at_epochs is None) == (every_n_epochs is None):
            raise ValueError(
                "give exactly one of at_epochs (a list of epochs) and every_n_epochs (a period); got "
                f"at_epochs={at_epochs!r}, every_n_epochs={every_n_epochs!r}."
            )
        if at_epochs is not None:
            if not at_epochs or any(not isinstance(e, int) or isinstance(e, bool) or e < 0 for e in at_epochs):
                raise ValueError(f"at_epochs must be a non-empty list of epoch indices >= 0, got {at_epochs!r}.")
            ordered = sorted(set(at_epochs))
            close = [(a, b) for a, b in zip(ordered, ordered[1:]) if b - a < apply_epochs]
            if close:
                raise ValueError(
                    f"at_epochs {close[0]} are closer than apply_epochs={apply_epochs}: the weights of one intervention "
                    "are still in use at the next. Space the epochs out or lower apply_epochs."
                )
            at_epochs = ordered
        elif not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < apply_epochs:
            raise ValueError(
                f"every_n_epochs must be an integer >= apply_epochs={apply_epochs} (the weights of one intervention "
                f"are in use for apply_epochs epochs), got {every_n_epochs!r}."
            )
        self.targets = targets
        self.at_epochs = at_epochs
        self.every_n_epochs = every_n_epochs
        self.apply_epochs = apply_epochs
        self._target_indices: list[int] = []
        self._active: InterventionRecord | None = None
        self._remaining = 0

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Validate targets and epochs against the run (raises before training)."""
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        num_classes = len(self.class_names)
        if self.worst_k is None:
            self._target_indices = class_indices(list(self.targets), self.class_names, "targets")
        elif not 1 <= self.worst_k < num_classes:
            raise ValueError(f"targets='worst:{self.worst_k}' needs 1 <= k < {num_classes} (the number of classes).")
        max_epochs = trainer.max_epochs
        if self.at_epochs is not None and max_epochs is not None and max_epochs >= 0:
            late = [e for e in self.at_epochs if e >= max_epochs - 1]
            if late:
                raise ValueError(
                    f"at_epochs {late} leave no epoch to train with the weights (max_epochs={max_epochs}, epochs are "
                    f"0..{max_epochs - 1}); choose epochs <= {max_epochs - 2}."
                )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After the epoch's validation: close a finished weighted window, then intervene if the epoch is chosen."""
        epoch = trainer.current_epoch
        accuracy = self.accuracy_at(epoch)
        if self._active is not None:
            self._active.weighted_epochs.append(epoch)
            self._remaining -= 1
            if self._remaining <= 0:
                self._close(trainer, pl_module, accuracy)
        if self._active is None and self._is_chosen(trainer, epoch):
            self._start(trainer, pl_module, epoch, accuracy)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close an intervention cut short by the end of fit, clear the weights, print the table."""
        if self._active is not None:
            self._active.reason = "the run ended before the weighted epochs finished"
            weighted = self._active.weighted_epochs
            self._close(trainer, pl_module, self.accuracy_at(weighted[-1]) if weighted else None)
        super().on_fit_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """Records, the intervention in progress and its remaining weighted epochs."""
        state = super().state_dict()
        state.update(active=None if self._active is None else self._active.to_dict(), remaining=self._remaining)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the weights themselves are in the module's checkpoint)."""
        super().load_state_dict(state_dict)
        active = state_dict.get("active")
        self._active = None if active is None else InterventionRecord.from_dict(active)
        self._remaining = int(state_dict.get("remaining", 0))

    # ---------------------------------------------------------------- internals
    def _is_chosen(self, trainer: Trainer, epoch: int) -> bool:
        if self.at_epochs is not None:
            return epoch in self.at_epochs
        last = trainer.max_epochs is not None and trainer.max_epochs >= 0 and epoch >= trainer.max_epochs - 1
        return (epoch + 1) % self.every_n_epochs == 0 and not last

    def _start(self, trainer: Trainer, pl_module: LightningModule, epoch: int, before: list[float] | None) -> None:
        record = InterventionRecord(epoch=epoch, mode=self.mode, targets=list(self._target_indices), before=before)
        if before is None:
            record.reason = f"no validation result for epoch {epoch}; validation must run at the chosen epochs"
            rank_zero_warn(f"DirectImprovement: intervention at epoch {epoch} skipped: {record.reason}")
        else:
            if self.worst_k is not None:
                record.targets = _worst(before, self.worst_k)
            if self.intervene(trainer, pl_module, record, reference=before):
                self._active, self._remaining = record, self.apply_epochs
                return
        self.finish(trainer, record)

    def _close(self, trainer: Trainer, pl_module: LightningModule, after: list[float] | None) -> None:
        record, self._active, self._remaining = self._active, None, 0
        require_sample_weights(pl_module, type(self).__name__).clear()
        assert record is not None
        record.after = after
        self.finish(trainer, record)


def _parse_worst(targets: Any) -> int | None:
    if not isinstance(targets, str):
        return None
    match = _WORST.match(targets.strip())
    if match is None:
        raise ValueError(f"targets as a string must be 'worst:k' with k a positive integer, got {targets!r}.")
    return int(match.group(1))


def _worst(accuracy: list[float], k: int) -> list[int]:
    present = [(a, c) for c, a in enumerate(accuracy) if a is not None and not math.isnan(a)]
    return sorted(c for _, c in sorted(present)[:k])
