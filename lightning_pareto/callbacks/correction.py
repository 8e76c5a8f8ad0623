"""``CourseCorrection``: roll back an epoch that hurt some classes and train it again, reweighted.

"What Is The Performance Ceiling of My Classifier?", Course Correction.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lightning_pareto.callbacks._guard import noise_tolerance, redo_verdict
from lightning_pareto.callbacks._intervention import InterventionCallback
from lightning_pareto.callbacks._record import InterventionRecord
from lightning_pareto.callbacks._settings import InterventionSettings
from lightning_pareto.callbacks._snapshot import TrainingSnapshot, follow_restored_rng, restore_rng_state
from lightning_pareto.callbacks.monitor import class_indices
from lightning_pareto.weighting import require_sample_weights

__all__ = ["CourseCorrection"]


class CourseCorrection(InterventionCallback):
    """Course Correction: undo a detrimental epoch and redo it with influence-based sample weights.

    At every training-epoch start it snapshots the training state (model, optimizers, LR
    schedulers, precision plugin, RNG states of torch/CUDA/numpy/``random``; CPU copies). When the
    validation after an epoch shows a class (among ``classes``) whose accuracy fell by more than
    ``drop_threshold`` against the previous epoch, that epoch is detrimental: at the next epoch start
    the snapshot is restored, the category-wise influence is computed there with the dropped classes
    as targets, Pareto-LP-GA searches weights (trial fitness compares with the detrimental epoch's
    accuracy, as the paper does), and the epoch is trained again with them; afterwards the weights
    are uniform again ("What Is The Performance Ceiling of My Classifier?", Course Correction).

    **A redo never leaves the run worse.** It is kept only if, on validation, it beats the detrimental
    epoch on the dropped classes (mean change > 0) and is not detrimental itself: no other class below
    the epoch before the detrimental one by more than ``drop_threshold`` (and its sampling noise);
    otherwise the state after the detrimental epoch is put back (model,
    optimizer, schedulers, RNG) and training goes on exactly as if no correction had been tried. The
    record's status says which (``"applied"`` or ``"rejected"``, with the reason).

    Lightning's progress counters are not rewound: the redo is an extra epoch, so
    ``trainer.fit_loop.max_epochs`` grows by one per correction as soon as the drop is seen (with
    ``max_steps`` set, it grows by one epoch of steps) and the run still trains its budgeted number of
    epochs; a resumed run re-applies the extension. The redo replays the
    detrimental epoch's batch order and learning rate; an epoch-wise LR schedule therefore runs one
    epoch behind ``trainer.current_epoch`` after each correction. A redo is never corrected itself,
    and at most ``max_corrections`` rollbacks are attempted. If an intervention is skipped (NaN
    influence, infeasible LP, no improving candidate), the state after the detrimental epoch is put
    back and training goes on without a redo (and without the extra epoch). Drops are measured between
    consecutive validation runs and only the last epoch is rolled back, so validate every epoch. Other
    callbacks' state (early stopping, checkpoint bookkeeping) is not rolled back.

    Each correction is a line of ``interventions.jsonl`` in the log directory with ``before`` (the
    epoch preceding the detrimental one), ``bad`` (the detrimental epoch) and ``after`` (the redo),
    and a table printed at the end of fit. Needs :class:`~lightning_pareto.PerClassAccuracy`, a module
    with the sample-weight contract and training batches with sample indices.

    Args:
        drop_threshold: Accuracy drop (a fraction, e.g. ``0.03`` = 3 points) of a class between two
            consecutive validated epochs that makes the later one detrimental; a drop must also exceed
            twice the sampling noise of the class's validation accuracy (``sqrt(2 p (1 - p) / n)``
            for ``n`` samples at accuracy ``p``), so noise on a small validation set is not corrected.
        classes: Classes watched for drops: ``"any"``, or a list of names or indices.
        max_corrections: Most rollbacks attempted in one run (applied or skipped).
        **settings: The influence and weight-search options shared with ``DirectImprovement``
            (``curvature``, ``damping``, ``curvature_samples``, ``modules``, ``fitness`` (``"trial"``
            compares trial epochs with the detrimental one), ``trial_batches``, ``preset``, ``w_min``,
            ``w_max``, ``trust`` (default 0.5), ``time_budget``, ``seed``, ``log_figures``,
            ``influence_batch_size``): see :class:`~lightning_pareto.callbacks.InterventionSettings`.

    Example::

        trainer = Trainer(max_epochs=30, callbacks=[PerClassAccuracy(), CourseCorrection(drop_threshold=0.03)])
    """

    mode = "course_correction"

    def __init__(
        self,
        drop_threshold: float = 0.03,
        classes: str | list[int | str] = "any",
        max_corrections: int = 3,
        **settings: Any,
    ) -> None:
        super().__init__(InterventionSettings(**settings))
        if (
            isinstance(drop_threshold, bool)
            or not isinstance(drop_threshold, (int, float))
            or not 0 < drop_threshold < 1
        ):
            raise ValueError(
                f"drop_threshold must be a fraction in (0, 1) (0.03 = 3 accuracy points), got {drop_threshold!r}."
            )
        if isinstance(classes, str):
            if classes != "any":
                raise ValueError(f"classes must be 'any' or a list of class names/indices, got {classes!r}.")
        elif not isinstance(classes, (list, tuple)) or not classes:
            raise ValueError(f"classes must be 'any' or a non-empty list of class names/indices, got {classes!r}.")
        if isinstance(max_corrections, bool) or not isinstance(max_corrections, int) or max_corrections < 1:
            raise ValueError(f"max_corrections must be a positive integer, got {max_corrections!r}.")
        self.drop_threshold = float(drop_threshold)
        self.classes = classes
        self.max_corrections = max_corrections
        self._watched: list[int] = []
        self.attempts = 0
        self._previous: list[float] | None = None
        self._snapshot: TrainingSnapshot | None = None
        self._pending: InterventionRecord | None = None
        self._redo: InterventionRecord | None = None
        self._in_epoch = False
        self._after_bad: TrainingSnapshot | None = None  # the state after the detrimental epoch, while redoing it
        self._restore = False  # put _after_bad back at the next epoch start (a rejected redo)

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Validate the watched classes against the run (raises before training)."""
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        every = list(range(len(self.class_names)))
        self._watched = (
            every if self.classes == "any" else class_indices(list(self.classes), self.class_names, "classes")
        )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Undo a rejected redo, or roll back and reweight if the last epoch was detrimental; else snapshot."""
        super().on_train_epoch_start(trainer, pl_module)
        self._in_epoch = True
        if self._restore:
            self._undo_redo(trainer, pl_module)
        elif self._pending is not None:
            self._correct(trainer, pl_module)
        else:
            self._snapshot = TrainingSnapshot.take(trainer, pl_module)
        # The epoch's time starts after the correction's work; a redo is an epoch the correction added.
        self.epoch_clock.start(added=self._redo is not None)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After validation: close a redo, or detect a drop and mark a rollback for the next epoch start."""
        super().on_train_epoch_end(trainer, pl_module)
        self._in_epoch = False
        epoch = trainer.current_epoch
        accuracy = self.accuracy_at(epoch)
        if self._redo is not None:
            self._judge_redo(trainer, pl_module, epoch, accuracy)
            return
        if accuracy is None:
            return
        previous, self._previous = self._previous, accuracy
        if previous is None or self.attempts >= self.max_corrections or self._snapshot is None:
            return
        # A drop counts past the threshold and past twice the sampling noise of the class's validation accuracy.
        limits = noise_tolerance(previous, self.support_at(epoch), self.drop_threshold)
        dropped = [c for c in self._watched if _drop(previous, accuracy, c) > limits[c]]
        if dropped and self._snapshot.epoch == epoch:
            self._pending = self.new_record(epoch, dropped, list(previous), bad=list(accuracy))
            self.add_epochs(trainer, self._pending, 1)  # now, so that even the last epoch gets its redo
            names = [self.class_names[c] for c in dropped]
            self.notify(
                trainer,
                f"#{self._pending.number}: epoch {epoch} lowered {names} by more than "
                f"{self.drop_threshold:.3f}; epoch {epoch + 1} is its redo, trained from epoch {epoch}'s "
                f"start with sample weights (an extra epoch: max_epochs is now {trainer.max_epochs}).",
            )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A redo rejected in the last epoch: end with the state after the detrimental epoch, as without the correction."""
        if self._restore:
            self._undo_redo(trainer, pl_module, epoch_start=False)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record a redo or pending rollback cut short by the end of fit, clear weights, print the table."""
        for record in (self._redo, self._pending):
            if record is not None:
                record.reason = record.reason or "the run ended before the redo finished"
                if record is self._pending:
                    record.status = "skipped"
                self.finish(trainer, record)
        if self._redo is not None:
            require_sample_weights(pl_module, type(self).__name__).clear()
        self._redo = self._pending = None
        super().on_fit_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """Records, counters, the pending rollback or redo in progress, and (when needed) the snapshot.

        The snapshot (a copy of the model and optimizer state) is saved only while it may still be
        restored: with a rollback pending, or mid-epoch.
        """
        state = super().state_dict()
        keep_snapshot = self._snapshot is not None and (self._pending is not None or self._in_epoch)
        keep_after_bad = self._after_bad is not None and (self._redo is not None or self._restore)
        state.update(
            attempts=self.attempts,
            previous=self._previous,
            pending=None if self._pending is None else self._pending.to_dict(),
            redo=None if self._redo is None else self._redo.to_dict(),
            snapshot=self._snapshot.state_dict() if keep_snapshot else None,
            after_bad=self._after_bad.state_dict() if keep_after_bad else None,
            restore=self._restore,
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the weights of a redo in progress are in the module's checkpoint)."""
        super().load_state_dict(state_dict)
        self.attempts = int(state_dict.get("attempts", 0))
        self._previous = state_dict.get("previous")
        self._pending = _record_or_none(state_dict.get("pending"))
        self._redo = _record_or_none(state_dict.get("redo"))
        snapshot, after_bad = state_dict.get("snapshot"), state_dict.get("after_bad")
        self._snapshot = None if snapshot is None else TrainingSnapshot.from_state_dict(snapshot)
        self._after_bad = None if after_bad is None else TrainingSnapshot.from_state_dict(after_bad)
        self._restore = bool(state_dict.get("restore", False)) and self._after_bad is not None

    # ---------------------------------------------------------------- internals
    def _correct(self, trainer: Trainer, pl_module: LightningModule) -> None:
        record, self._pending = self._pending, None
        assert record is not None and self._snapshot is not None
        self.attempts += 1
        after_bad_epoch = TrainingSnapshot.take(trainer, pl_module)
        self._snapshot.restore(trainer, pl_module)
        if self.intervene(trainer, pl_module, record, reference=record.bad or []):
            # The redo starts from the detrimental epoch's RNG state, so it replays that epoch's batches.
            restore_rng_state(self._snapshot.rng)
            follow_restored_rng(trainer, self._snapshot.sampler_epoch)
            self._redo, self._after_bad = record, after_bad_epoch
            return
        if not _finite(after_bad_epoch.model):
            # The detrimental epoch left NaN/inf parameters: go on from the finite state it started from
            # (this epoch trains it again without weights) rather than train a broken model.
            record.reason += "; the detrimental epoch left non-finite parameters: restored the state before it"
            rank_zero_warn(
                f"CourseCorrection: epoch {record.epoch} left non-finite parameters and the correction was "
                "skipped; training goes on from the state before that epoch."
            )
            self.discard(trainer, record.epoch, "non-finite parameters: rolled back")
            follow_restored_rng(trainer, self._snapshot.sampler_epoch)
            self._snapshot.epoch = trainer.current_epoch  # this epoch starts from it: a drop rolls back to it
            self.finish(trainer, record)
            return
        after_bad_epoch.restore(trainer, pl_module)
        follow_restored_rng(trainer, after_bad_epoch.sampler_epoch)
        self._snapshot = after_bad_epoch  # this epoch starts from here: the next drop rolls back to it
        self.add_epochs(trainer, record, -1)
        if trainer.fit_loop.max_epochs is not None and 0 <= trainer.fit_loop.max_epochs <= trainer.current_epoch:
            trainer.should_stop = True  # the detrimental epoch was the last one budgeted: end as after it
        self.finish(trainer, record)

    def _judge_redo(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int, accuracy: list[float] | None
    ) -> None:
        """Keep the redo if it beats the detrimental epoch without hurting another class; else undo it next epoch."""
        record, self._redo = self._redo, None
        assert record is not None
        self.weights_unused(pl_module, record)
        require_sample_weights(pl_module, type(self).__name__).clear()
        record.after = accuracy
        record.weighted_epochs.append(epoch)
        before = record.before or []
        verdict = (
            "no validation result for the redo"
            if accuracy is None
            else redo_verdict(
                before,
                record.bad or [],
                accuracy,
                record.targets,
                noise_tolerance(before, self.support_at(epoch), self.drop_threshold),
            )
        )
        if verdict and self._after_bad is None:  # resumed from a checkpoint without that state: nothing to go back to
            record.reason, verdict = (
                f"{verdict}; kept: the state after the detrimental epoch is not in the checkpoint",
                "",
            )
        record.guard.append({"epoch": epoch, "action": "rejected" if verdict else "accepted", "reason": verdict})
        if verdict:
            # The redo's epoch is spent, the detrimental epoch's result stands: the budget keeps its extra epoch.
            record.status, record.reason = "rejected", verdict
            self._restore = True
            self._previous = record.bad
            self.discard(trainer, epoch, f"redo of epoch {record.epoch} rejected")
            self.notify(
                trainer,
                f"#{record.number}: the redo (epoch {epoch}) of epoch {record.epoch} is rejected "
                f"({verdict}); training goes on from the state after epoch {record.epoch}, as without "
                "the correction.",
            )
        else:
            self._after_bad = None
            self._previous = accuracy
            self.discard(trainer, record.epoch, f"rolled back, redone as epoch {epoch}")
            self.notify(trainer, f"#{record.number}: the redo (epoch {epoch}) of epoch {record.epoch} is kept.")
        self.finish(trainer, record)

    def _undo_redo(self, trainer: Trainer, pl_module: LightningModule, epoch_start: bool = True) -> None:
        assert self._after_bad is not None
        self._after_bad.restore(trainer, pl_module)
        if epoch_start:
            follow_restored_rng(trainer, self._after_bad.sampler_epoch)
        # The state it holds is this epoch's start now, so a drop in this epoch can be rolled back to it.
        self._snapshot, self._after_bad, self._restore = self._after_bad, None, False
        self._snapshot.epoch = trainer.current_epoch


def _finite(state: dict[str, Any]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())


def _drop(previous: list[float | None], current: list[float | None], c: int) -> float:
    before, after = previous[c], current[c]
    if before is None or after is None or math.isnan(before) or math.isnan(after):
        return 0.0
    return before - after


def _record_or_none(state: dict[str, Any] | None) -> InterventionRecord | None:
    return None if state is None else InterventionRecord.from_dict(state)
