"""``DirectImprovement``: reweight the training set to raise chosen classes, guarded on validation.

"What Is The Performance Ceiling of My Classifier?", Direct Improvement.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from lightning_pareto.callbacks._accuracy import per_class_accuracy
from lightning_pareto.callbacks._guard import accuracy_change, noise_tolerance, shrink_weights, violations
from lightning_pareto.callbacks._intervention import InterventionCallback
from lightning_pareto.callbacks._record import InterventionRecord
from lightning_pareto.callbacks._run import influence_model, trainer_datasets
from lightning_pareto.callbacks._settings import InterventionSettings
from lightning_pareto.callbacks._snapshot import TrainingSnapshot, blend_training_states, follow_restored_rng
from lightning_pareto.callbacks._targets import check_targets, worst_classes
from lightning_pareto.callbacks.monitor import class_indices
from lightning_pareto.weighting import require_sample_weights

__all__ = ["DirectImprovement"]

_DROPPED = "the guard dropped the weights: they lowered a non-target class against the same epoch trained without them"

GuardMode = Literal["paired_on_drop", "paired", "rollback", "shrink", "off"]
GUARD_MODES: tuple[str, ...] = get_args(GuardMode)
RetryMode = Literal["train", "blend"]
RETRY_MODES: tuple[str, ...] = get_args(RetryMode)


class DirectImprovement(InterventionCallback):
    """Direct Improvement: reweight training samples to raise the target classes, without trading the others.

    After the validation of a chosen epoch ``e`` (0-based, as ``trainer.current_epoch``) it computes
    the category-wise influence of every training sample on the current model, reports the Pareto
    ceiling and searches per-sample weights with Pareto-LP-GA (maximise the targets' gain, bound the
    other classes' loss; "What Is The Performance Ceiling of My Classifier?"). The weights stay in
    force until the next intervention or the end of training (``apply_epochs=None``), since the gain
    of a single reweighted epoch fades within a few epochs; ``every_n_epochs`` re-estimates them
    from a fresh influence matrix on that schedule.

    **The guard.** A weighted epoch is checked on validation: a non-target class that fell by more
    than ``tolerance``, and by more than twice the sampling noise of its validation accuracy
    (``sqrt(2 p (1 - p) / n)`` for ``n`` samples at accuracy ``p``), is a violation. By default
    (``guard="paired_on_drop"``) the first weighted epoch is checked against the epoch before it and
    stands at no extra cost when nothing fell. When a class fell, the guard tells the weights' part
    from the epoch's: it rolls back (model, optimizer, schedulers, RNG: the same batches are replayed)
    and trains the same epoch without the weights, the counterfactual the run would have had. The
    weighted epoch stands (the run goes back to its end) if no non-target class is below the
    counterfactual past the tolerance; else it is retried with the weights moved ``shrink`` of the way
    back towards one (a smaller trust radius) and judged against the counterfactual again, and after
    ``max_retries`` the unweighted epoch is kept and the weights dropped. A retry is not trained by
    default (``retry="blend"``): the run moves to the same fraction of the way from the counterfactual's
    end state to the weighted epoch's, what the retried epoch gives to first order, and a validation
    pass judges it. Later epochs are not checked. ``guard="paired"`` always trains the counterfactual first
    and the weighted epoch after it (one extra epoch per intervention, more on violations).
    ``guard="rollback"`` checks every weighted epoch against the epoch before and, on a violation,
    redoes it with shrunk weights (after ``max_retries`` violations in a row, without them).
    ``guard="shrink"`` shrinks the weights for the next epoch without rolling back; ``"off"`` trusts
    the LP. An added epoch (a counterfactual, a redo) is one more epoch: ``max_epochs`` grows by one
    for each, so the run still trains the epochs it was given, and ``at_epochs`` /
    ``every_n_epochs`` count the epochs that stand (a rolled-back epoch and its redo are one). Each
    check is an entry of the record's ``guard`` list.

    ``before`` is the per-class validation accuracy after epoch ``e``, ``after`` the one after the
    last weighted epoch; each intervention is a line of ``interventions.jsonl`` in the log directory
    and a table printed at the end of fit.

    Needs :class:`~lightning_pareto.PerClassAccuracy` among the callbacks, a module with the
    sample-weight contract (``ClassifierModule``, or ``SampleWeightedMixin``) and training batches
    with sample indices; validation must run every epoch while weights are in force. A failed
    intervention (NaN influence, infeasible LP, no improving candidate) leaves the weights uniform
    and is logged as ``"skipped"`` with its reason; it never stops training.

    Args:
        targets: Classes to improve: names or indices (``["3", 8]``), or ``"worst:k"`` for the ``k``
            classes with the lowest validation accuracy at the chosen epoch.
        at_epochs: Epochs after which to intervene (0-based); each must leave at least one epoch to
            train with the weights. Give this or ``every_n_epochs``.
        every_n_epochs: Intervene after every ``n``-th epoch (epochs ``n-1, 2n-1, ...``), never after
            the last one; each intervention replaces the weights of the one before. Give this or
            ``at_epochs``.
        apply_epochs: Epochs trained with the weights before they are cleared; ``None`` keeps them
            until the next intervention or the end of training.
        guard: What a weighted epoch that lowers a non-target class past ``tolerance`` causes:
            ``"rollback"`` (redo the epoch with shrunk weights), ``"paired"`` (compare the first
            weighted epoch with the same epoch trained without weights; retry it with shrunk weights),
            ``"paired_on_drop"`` (the same comparison, made only when the first weighted epoch lowered
            a non-target class against the epoch before), ``"shrink"`` (shrink the weights from the
            next epoch on) or ``"off"``.
        tolerance: Validation accuracy drop (a fraction: 0.03 = 3 points) of a non-target class in
            one weighted epoch that the guard accepts.
        shrink: Factor on ``|w - 1|`` after a violation, in ``(0, 1)``.
        max_retries: Violations in a row before the guard drops the weights.
        retry: How ``guard="paired_on_drop"`` retries a weighted epoch that fell below its counterfactual:
            ``"blend"`` (default) moves the run to ``plain + s (weighted - plain)`` between the two
            epochs' end states (model and optimizer), ``s = shrink, shrink^2, ...``, what a retry with
            ``|w - 1|`` scaled by ``s`` gives to first order in ``w - 1``, and judges each by a
            validation pass instead of a training epoch (single-process runs; under DDP it trains);
            ``"train"`` trains the epoch again with ``|w - 1|`` shrunk, an extra epoch per retry.
            In ``benchmarks/effect.py`` "blend" ends as well as "train" with fewer epochs.
        trust: Trust radius: the mean ``|w - 1|`` allowed. The default 0.2 did best at the end of training
            in ``benchmarks/effect.py`` (0.15-0.5 tried).
        **settings: The influence and weight-search options shared with ``CourseCorrection``
            (``curvature``, ``damping``, ``curvature_samples``, ``modules``, ``fitness``, ``trial_batches``,
            ``preset``, ``w_min``, ``w_max``, ``time_budget``, ``seed``, ``log_figures``,
            ``influence_batch_size``, ``matmul_precision``): see :class:`~lightning_pareto.callbacks.InterventionSettings`.

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
        apply_epochs: int | None = None,
        guard: GuardMode = "paired_on_drop",
        tolerance: float = 0.03,
        shrink: float = 0.5,
        max_retries: int = 2,
        retry: RetryMode = "blend",
        trust: float = 0.2,
        **settings: Any,
    ) -> None:
        super().__init__(InterventionSettings(trust=trust, **settings))
        self.worst_k = check_targets(targets)
        if apply_epochs is not None and (
            not isinstance(apply_epochs, int) or isinstance(apply_epochs, bool) or apply_epochs < 1
        ):
            raise ValueError(
                f"apply_epochs must be None (until the next intervention) or a positive integer, got {apply_epochs!r}."
            )
        if guard not in GUARD_MODES:
            raise ValueError(f"guard must be one of {GUARD_MODES}, got {guard!r}.")
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
            raise ValueError(f"tolerance must be a fraction in [0, 1) (0.03 = 3 accuracy points), got {tolerance!r}.")
        if isinstance(shrink, bool) or not isinstance(shrink, (int, float)) or not 0 < shrink < 1:
            raise ValueError(f"shrink must lie in (0, 1) (the factor on |w - 1| after a violation), got {shrink!r}.")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}.")
        if retry not in RETRY_MODES:
            raise ValueError(f"retry must be one of {RETRY_MODES}, got {retry!r}.")
        if (at_epochs is None) == (every_n_epochs is None):
            raise ValueError(
                "give exactly one of at_epochs (a list of epochs) and every_n_epochs (a period); got "
                f"at_epochs={at_epochs!r}, every_n_epochs={every_n_epochs!r}."
            )
        span = 1 if apply_epochs is None else apply_epochs
        if at_epochs is not None:
            if not at_epochs or any(not isinstance(e, int) or isinstance(e, bool) or e < 0 for e in at_epochs):
                raise ValueError(f"at_epochs must be a non-empty list of epoch indices >= 0, got {at_epochs!r}.")
            ordered = sorted(set(at_epochs))
            close = [(a, b) for a, b in zip(ordered, ordered[1:]) if b - a < span]
            if close:
                raise ValueError(
                    f"at_epochs {close[0]} are closer than apply_epochs={apply_epochs}: the weights of one intervention "
                    "are still in use at the next. Space the epochs out or lower apply_epochs."
                )
            at_epochs = ordered
        elif not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < span:
            raise ValueError(
                f"every_n_epochs must be an integer >= {span} (apply_epochs={apply_epochs}: the weights of one "
                f"intervention are in use for that many epochs), got {every_n_epochs!r}."
            )
        self.targets = targets
        self.at_epochs = at_epochs
        self.every_n_epochs = every_n_epochs
        self.apply_epochs = apply_epochs
        self.guard = guard
        self.tolerance = float(tolerance)
        self.shrink = float(shrink)
        self.max_retries = max_retries
        self.retry = retry
        self._target_indices: list[int] = []
        self._active: InterventionRecord | None = None
        self._remaining: int | None = None
        self._reference: list[float] | None = None  # validation accuracy before the weighted epoch
        self._scale = 1.0  # fraction of the searched |w - 1| in force
        self._retries = 0
        self._snapshot: TrainingSnapshot | None = None
        self._rollback = False
        self._in_epoch = False
        # The paired guards: "first" (paired_on_drop's first weighted epoch runs), "plain" (the counterfactual
        # epoch runs), "weighted" (a weighted try runs), "done"
        self._phase: str | None = None
        self._next: str | None = None  # what the next epoch start does: "weighted_try" or "keep_plain"
        self._held = None  # the weights held back during the counterfactual epoch
        self._plain: list[float] | None = None  # validation accuracy of the counterfactual epoch
        self._plain_end: TrainingSnapshot | None = None  # the state after it
        # guard="paired_on_drop": the first weighted epoch, when it lowered a class and waits for its counterfactual
        self._tried: list[float] | None = None  # its validation accuracy
        self._tried_epoch: int | None = None
        self._tried_end: TrainingSnapshot | None = None  # the state after it (before the epoch's scheduler step)

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

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Warn about chosen epochs that a resumed run starts after and whose interventions its checkpoint lacks."""
        if self.at_epochs is None:
            return
        start = trainer.current_epoch - self.budget.extra_epochs
        passed = [e for e in self.at_epochs if e < start]
        made = len(self.records) + (self._active is not None)
        if len(passed) > made:
            rank_zero_warn(
                f"DirectImprovement: this run starts at epoch {start} (resumed), after at_epochs {passed[made:]} whose "
                f"interventions the checkpoint does not hold; they are not made. Choose epochs >= {start}."
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Carry out a rollback the guard asked for, or snapshot the start of a weighted epoch."""
        super().on_train_epoch_start(trainer, pl_module)
        self._in_epoch = True
        action, self._next = self._next, None
        redo = False
        if action is not None:
            self._paired_start(trainer, pl_module, action)
        elif self._rollback and self._snapshot is not None:
            self._rollback, redo = False, True
            self._snapshot.restore(trainer, pl_module)  # RNG included: the same batches again
            follow_restored_rng(trainer, self._snapshot.sampler_epoch)
            if self._scale == 0.0:
                self._drop(trainer, pl_module, "the guard dropped the weights after repeated violations")
            else:  # the state it holds is this epoch's start now: the retry can be rolled back too
                self._snapshot.epoch = trainer.current_epoch
        elif self._active is not None and (self.guard == "rollback" or self._phase in ("plain", "first")):
            self._snapshot = TrainingSnapshot.take(trainer, pl_module)
        # The epoch's time starts after the guard's work; its redos and the paired guard's epochs are added ones.
        self.epoch_clock.start(added=redo or self._phase in ("plain", "weighted"))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After the epoch's validation: check a weighted epoch, close a finished window, intervene if chosen."""
        super().on_train_epoch_end(trainer, pl_module)
        self._in_epoch = False
        epoch = trainer.current_epoch
        accuracy = self.accuracy_at(epoch)
        if self._active is not None:
            self.weights_unused(pl_module, self._active)
            stood = self._check(trainer, pl_module, epoch, accuracy)
            if stood is None:
                return  # rolled back, or a counterfactual: this epoch does not count
            # The weighted epoch that stands: this one, or the one a counterfactual epoch just confirmed.
            weighted_epoch, accuracy = stood
            if self._active is not None:  # (the shrink guard may have dropped the weights)
                self._active.weighted_epochs.append(weighted_epoch)
                if self._remaining is not None:
                    self._remaining -= 1
                if self._remaining == 0 or (self._remaining is None and self._is_chosen(trainer, epoch)):
                    self._close(trainer, pl_module, accuracy)
        if self._active is None and self._is_chosen(trainer, epoch):
            self._start(trainer, pl_module, epoch, accuracy)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close the intervention in force at the end of fit, clear the weights, print the table."""
        if self._active is not None:
            if self._phase in ("plain", "weighted"):
                self._active.reason = "the run ended before the guard's paired check finished"
                if self._tried_epoch is not None:  # its counterfactual never ran: that weighted epoch stands
                    self._active.weighted_epochs.append(self._tried_epoch)
            elif self._remaining:
                self._active.reason = "the run ended before the weighted epochs finished"
            weighted = self._active.weighted_epochs
            self._close(trainer, pl_module, self.accuracy_at(weighted[-1]) if weighted else None)
        super().on_fit_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """Records, the intervention in force, the guard's state and (while it may be restored) its snapshot."""
        state = super().state_dict()
        keep_snapshot = self._snapshot is not None and (self._rollback or self._in_epoch)
        state.update(
            active=None if self._active is None else self._active.to_dict(),
            remaining=self._remaining,
            reference=self._reference,
            scale=self._scale,
            retries=self._retries,
            rollback=self._rollback,
            snapshot=self._snapshot.state_dict()
            if keep_snapshot or (self._snapshot is not None and self._phase in ("plain", "weighted"))
            else None,
            phase=self._phase,
            next=self._next,
            held=self._held,
            plain=self._plain,
            plain_end=None if self._plain_end is None else self._plain_end.state_dict(),
            tried=self._tried,
            tried_epoch=self._tried_epoch,
            tried_end=None if self._tried_end is None else self._tried_end.state_dict(),
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the weights themselves are in the module's checkpoint)."""
        super().load_state_dict(state_dict)
        active = state_dict.get("active")
        self._active = None if active is None else InterventionRecord.from_dict(active)
        remaining = state_dict.get("remaining")
        self._remaining = None if remaining is None else int(remaining)
        self._reference = state_dict.get("reference")
        self._scale = float(state_dict.get("scale", 1.0))
        self._retries = int(state_dict.get("retries", 0))
        self._rollback = bool(state_dict.get("rollback", False))
        self._phase, self._next = state_dict.get("phase"), state_dict.get("next")
        self._held, self._plain = state_dict.get("held"), state_dict.get("plain")
        plain_end = state_dict.get("plain_end")
        self._plain_end = None if plain_end is None else TrainingSnapshot.from_state_dict(plain_end)
        self._tried, self._tried_epoch = state_dict.get("tried"), state_dict.get("tried_epoch")
        tried_end = state_dict.get("tried_end")
        self._tried_end = None if tried_end is None else TrainingSnapshot.from_state_dict(tried_end)
        snapshot = state_dict.get("snapshot")
        self._snapshot = None if snapshot is None else TrainingSnapshot.from_state_dict(snapshot)

    # ---------------------------------------------------------------- internals
    def _is_chosen(self, trainer: Trainer, epoch: int) -> bool:
        # Chosen epochs count the epochs that stand: a rolled-back epoch and its redo are one epoch.
        epoch -= self.budget.extra_epochs
        if self.at_epochs is not None:
            return epoch in self.at_epochs
        budget = None if trainer.max_epochs is None else trainer.max_epochs - self.budget.extra_epochs
        last = budget is not None and trainer.max_epochs >= 0 and epoch >= budget - 1
        return (epoch + 1) % self.every_n_epochs == 0 and not last

    def _start(self, trainer: Trainer, pl_module: LightningModule, epoch: int, before: list[float] | None) -> None:
        record = self.new_record(epoch, list(self._target_indices), before)
        if before is None:
            record.reason = f"no validation result for epoch {epoch}; validation must run at the chosen epochs"
            rank_zero_warn(f"DirectImprovement: intervention at epoch {epoch} skipped: {record.reason}")
        else:
            if self.worst_k is not None:
                record.targets = worst_classes(before, self.worst_k)
            if self.intervene(trainer, pl_module, record, reference=before):
                self._active, self._remaining, self._reference = record, self.apply_epochs, list(before)
                self._scale, self._retries = 1.0, 0
                self._phase = "first" if self.guard == "paired_on_drop" else None
                if self.guard == "paired":
                    # The next epoch runs without the weights: the counterfactual the weighted try is judged by.
                    store = require_sample_weights(pl_module, type(self).__name__)
                    self._held, self._phase, self._plain, self._plain_end = store.weights.clone(), "plain", None, None
                    store.clear()
                    self.add_epochs(trainer, record, 1)
                    self.notify(
                        trainer,
                        f"#{record.number} after epoch {epoch}: weights found for {self._names(record)}; "
                        f"epoch {epoch + 1} is trained without them and then redone with them (the "
                        f"paired guard; an extra epoch: max_epochs is now {trainer.max_epochs}).",
                    )
                else:
                    check = (
                        " (the paired guard checks the first against the same epoch trained without them if it "
                        "lowers another class)"
                        if self.guard == "paired_on_drop"
                        else ""
                    )
                    self.notify(
                        trainer,
                        f"#{record.number} after epoch {epoch}: weights found for {self._names(record)} "
                        f"are in force from the next epoch on{check}.",
                    )
                return
        self.finish(trainer, record)

    def _check(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int, accuracy: list[float] | None
    ) -> tuple[int, list[float] | None] | None:
        """The guard on a weighted epoch: the weighted epoch that stands and its accuracy, or ``None`` (none yet)."""
        record = self._active
        assert record is not None
        if self._phase == "first":
            return self._check_first(trainer, pl_module, epoch, accuracy)
        if self._phase == "plain" and self._tried is not None:
            return self._check_counterfactual(trainer, pl_module, epoch, accuracy)
        if self.guard in ("paired", "paired_on_drop") and self._phase not in (None, "done"):
            return (epoch, accuracy) if self._check_paired(trainer, epoch, accuracy) else None
        if accuracy is None or self._reference is None or self.guard in ("off", "paired", "paired_on_drop"):
            self._reference = accuracy if accuracy is not None else self._reference
            return epoch, accuracy
        entry = self._judge(record, epoch, self._reference, accuracy)
        hurt = entry["violations"]
        if not hurt:
            self._retries, self._reference = 0, list(accuracy)
            return epoch, accuracy
        self._retries += 1
        give_up = self._retries > self.max_retries
        names = [self.class_names[c] for c in hurt]
        if self.guard == "rollback" and self._snapshot is not None and self._snapshot.epoch == epoch:
            entry["action"] = "dropped" if give_up else "rollback"
            self._scale = 0.0 if give_up else self._scale * self.shrink
            if not give_up:
                store = require_sample_weights(pl_module, type(self).__name__)
                store.set(shrink_weights(store.weights, self.shrink))
            self._rollback = True
            self.add_epochs(trainer, self._active, 1)  # the redo is one more epoch
            self.discard(trainer, epoch, "guard: rolled back")
            self.notify(
                trainer,
                f"#{record.number}: weighted epoch {epoch} lowered {names} by more than {self.tolerance:.3f}; epoch "
                f"{epoch + 1} is its redo "
                + ("without the weights" if give_up else f"with |w - 1| x{self._scale:g}")
                + f" (an extra epoch: max_epochs is now {trainer.max_epochs}).",
            )
            return None
        self._reference = list(accuracy)
        if give_up:
            entry["action"] = "dropped"
            self._drop(trainer, pl_module, "the guard dropped the weights after repeated violations", accuracy)
        else:
            entry["action"] = "shrink"
            self._scale *= self.shrink
            store = require_sample_weights(pl_module, type(self).__name__)
            store.set(shrink_weights(store.weights, self.shrink))
        return epoch, accuracy

    def _judge(
        self, record: InterventionRecord, epoch: int, reference: list[float], accuracy: list[float]
    ) -> dict[str, Any]:
        """The guard's entry for a weighted epoch against ``reference``: change, violations, action ``"kept"`` so far."""
        hurt = violations(
            reference, accuracy, record.targets, noise_tolerance(reference, self.support_at(epoch), self.tolerance)
        )
        entry = {
            "epoch": epoch,
            "scale": self._scale,
            "change": accuracy_change(reference, accuracy),
            "violations": hurt,
            "action": "kept",
        }
        record.guard.append(entry)
        return entry

    def _check_paired(self, trainer: Trainer, epoch: int, accuracy: list[float] | None) -> bool:
        """``guard="paired"``: the counterfactual epoch, then weighted tries judged against it; ``True`` once one stands."""
        record = self._active
        assert record is not None
        if self._phase == "plain":
            self._plain = accuracy
            record.guard.append({"epoch": epoch, "action": "counterfactual"})
            self._phase, self._next = "weighted", "weighted_try"
            return False
        plain_epoch = next((g["epoch"] for g in reversed(record.guard) if g.get("action") == "counterfactual"), None)
        if accuracy is None or self._plain is None:
            self._phase = "done"  # nothing to compare with: the weighted epoch stands
            self._discard_counterfactual(trainer, plain_epoch)
            return True
        entry = self._judge(record, epoch, self._plain, accuracy)
        hurt = entry["violations"]
        if not hurt:
            self._phase, self._plain_end, self._held = "done", None, None
            self._reference = list(accuracy)
            self._discard_counterfactual(trainer, plain_epoch)
            self.notify(
                trainer,
                f"#{record.number}: weighted epoch {epoch} kept (no other class below the same epoch "
                f"trained without the weights, epoch {plain_epoch}, past the tolerance).",
            )
            return True
        self._retries += 1
        names = [self.class_names[c] for c in hurt]
        self.discard(trainer, epoch, "guard: weighted try rejected")
        if self._retries > self.max_retries:  # the counterfactual epoch counts instead of this try: no extra epoch
            entry["action"], self._next = "dropped", "keep_plain"
            self.notify(
                trainer,
                f"#{record.number}: weighted epoch {epoch} lowered {names} against the same epoch "
                f"without the weights (epoch {plain_epoch}); keeping that epoch and dropping the weights.",
            )
        else:
            self._retry(trainer, entry, epoch, plain_epoch, names)
        return False

    def _retry(
        self, trainer: Trainer, entry: dict[str, Any], tried_epoch: int, plain_epoch: int | None, names: list[str]
    ) -> None:
        """A rejected weighted try: the next epoch retries it from the same start with ``|w - 1|`` shrunk."""
        record = self._active
        assert record is not None
        entry["action"], self._next = "retry", "weighted_try"
        self.add_epochs(trainer, record, 1)  # the rejected try does not count
        self._scale *= self.shrink
        self._held = shrink_weights(self._held, self.shrink)
        self.notify(
            trainer,
            f"#{record.number}: weighted epoch {tried_epoch} lowered {names} against the same epoch without the "
            f"weights (epoch {plain_epoch}); epoch {trainer.current_epoch + 1} redoes it with |w - 1| "
            f"x{self._scale:g} (an extra epoch: max_epochs is now {trainer.max_epochs}).",
        )

    def _check_first(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int, accuracy: list[float] | None
    ) -> tuple[int, list[float] | None] | None:
        """``guard="paired_on_drop"``: the first weighted epoch against the one before; a drop calls for its counterfactual."""
        record = self._active
        assert record is not None
        self._phase = "done"
        if accuracy is None or self._reference is None:
            return epoch, accuracy
        entry = self._judge(record, epoch, self._reference, accuracy)
        if not entry["violations"]:
            self._reference = list(accuracy)
            return epoch, accuracy
        # Its end state is kept before the epoch's scheduler step, to come back to at the end of the counterfactual.
        entry["action"] = "confirm"
        self._tried, self._tried_epoch = list(accuracy), epoch
        self._tried_end = TrainingSnapshot.take(trainer, pl_module)
        store = require_sample_weights(pl_module, type(self).__name__)
        self._held, self._phase, self._plain, self._plain_end = store.weights.clone(), "plain", None, None
        self._next = "counterfactual"
        self.add_epochs(trainer, record, 1)
        names = [self.class_names[c] for c in entry["violations"]]
        self.notify(
            trainer,
            f"#{record.number}: weighted epoch {epoch} lowered {names} against epoch {epoch - 1}; epoch {epoch + 1} "
            f"trains it again without the weights to tell the weights' part from the epoch's (the paired guard; "
            f"an extra epoch: max_epochs is now {trainer.max_epochs}).",
        )
        return None

    def _check_counterfactual(
        self, trainer: Trainer, pl_module: LightningModule, epoch: int, accuracy: list[float] | None
    ) -> tuple[int, list[float] | None] | None:
        """``guard="paired_on_drop"``: the weighted epoch that lowered a class, judged against its counterfactual."""
        record = self._active
        assert record is not None and self._tried is not None and self._tried_epoch is not None
        record.guard.append({"epoch": epoch, "action": "counterfactual"})
        tried, tried_epoch = self._tried, self._tried_epoch
        entry: dict[str, Any] = {}
        if accuracy is not None:
            entry = self._judge(record, tried_epoch, accuracy, tried)
            entry["against"] = epoch
        hurt = entry.get("violations", [])
        if not hurt:
            self.discard(trainer, epoch, "counterfactual of the paired guard")
            self._keep_tried(trainer, pl_module)
            self.notify(
                trainer,
                f"#{record.number}: weighted epoch {tried_epoch} kept (no other class below the same epoch trained "
                f"without the weights, epoch {epoch}, past the tolerance).",
            )
            return tried_epoch, tried
        weighted_end = self._tried_end
        self._tried = self._tried_epoch = self._tried_end = None
        self.discard(trainer, tried_epoch, "guard: weighted try rejected")
        self._retries += 1
        names = [self.class_names[c] for c in hurt]
        if self._retries > self.max_retries:  # the counterfactual, the latest epoch, stands: nothing to restore
            entry["action"], self._plain_end, self._held = "dropped", None, None
            self._drop(trainer, pl_module, _DROPPED, accuracy)
            return None
        if self.retry == "blend" and trainer.world_size == 1 and accuracy is not None and weighted_end is not None:
            entry["action"] = "blend"
            return self._blend(trainer, pl_module, weighted_end, epoch, accuracy)
        # From here on as guard="paired" after a rejected try: retries from the start, judged against this epoch.
        self._plain, self._phase = accuracy, "weighted"
        self._retry(trainer, entry, tried_epoch, epoch, names)
        return None

    def _keep_tried(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Back to the end of the weighted epoch that its counterfactual confirmed, its weights in force again.

        Restored at the counterfactual's end, before Lightning's epoch-end scheduler step, as the
        snapshot was taken before the weighted epoch's: the run goes on as after that epoch.
        """
        assert self._tried_end is not None
        self._tried_end.restore(trainer, pl_module)
        store = require_sample_weights(pl_module, type(self).__name__)
        if self._held is not None:
            store.set(self._held)
        self._reference = self._tried
        self._phase, self._held, self._tried, self._tried_epoch, self._tried_end = "done", None, None, None, None

    def _blend(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        weighted_end: TrainingSnapshot,
        plain_epoch: int,
        monitored: list[float],
    ) -> tuple[int, list[float]] | None:
        """``retry="blend"``: the retries of a weighted epoch that fell below its counterfactual, without training.

        Both epochs started from the same state and drew the same batches, so to first order in
        ``w - 1`` the epoch trained with ``|w - 1|`` scaled by ``s`` ends at ``plain + s (weighted -
        plain)``. Each retry sets that state (``s = shrink, shrink^2, ...``) and judges its validation
        accuracy against the counterfactual's, as a trained retry is judged. The first that passes
        stands, with its scaled weights in force; when none does, the counterfactual's end is put
        back and the weights are dropped. The counterfactual is measured by the same validation pass
        as the blends (``monitored`` is its accuracy as the monitor logged it), so that both sides of
        each comparison see the same samples even when Lightning validates on fewer
        (``limit_val_batches``).

        Returns:
            ``(plain_epoch, accuracy of the blend that stands)``, or ``None`` when the weights were dropped.
        """
        record = self._active
        assert record is not None and self._held is not None
        plain_end = TrainingSnapshot.take(trainer, pl_module)
        _, val_dataset, _ = trainer_datasets(trainer)
        val_loader = DataLoader(val_dataset, batch_size=self.settings.influence_batch_size)
        model, classes = influence_model(pl_module), len(self.class_names)
        plain = per_class_accuracy(model, val_loader, classes).tolist()
        fraction = 1.0
        while True:
            fraction *= self.shrink
            blend_training_states(trainer, pl_module, plain_end, weighted_end, fraction)
            accuracy = per_class_accuracy(model, val_loader, classes).tolist()
            entry = self._judge(record, plain_epoch, plain, accuracy)
            entry["blend"], entry["scale"] = fraction, self._scale * fraction
            if not entry["violations"]:
                break
            self._retries += 1
            if self._retries > self.max_retries:
                entry["action"], self._held = "dropped", None
                plain_end.restore(trainer, pl_module)
                self._drop(trainer, pl_module, _DROPPED, monitored)
                return None
            entry["action"] = "retry"
        self._scale *= fraction
        require_sample_weights(pl_module, type(self).__name__).set(shrink_weights(self._held, fraction))
        self._reference, self._phase, self._held = accuracy, "done", None
        self.notify(
            trainer,
            f"#{record.number}: the run goes on between the weighted epoch and its counterfactual (epoch "
            f"{plain_epoch}), {fraction:g} of the way to the weighted one, with |w - 1| x{self._scale:g}: no other "
            "class below the counterfactual past the tolerance on validation (no extra epoch).",
        )
        return plain_epoch, accuracy

    def _discard_counterfactual(self, trainer: Trainer, plain_epoch: int | None) -> None:
        """The weighted try stands: the counterfactual epoch it was judged against was rolled back."""
        if plain_epoch is not None:
            self.discard(trainer, plain_epoch, "counterfactual of the paired guard")

    def _names(self, record: InterventionRecord) -> list[str]:
        return [self.class_names[c] for c in record.targets]

    def _paired_start(self, trainer: Trainer, pl_module: LightningModule, action: str) -> None:
        """Start a counterfactual or a weighted try from the snapshot epoch's start, or go back to the counterfactual's end and drop."""
        assert self._snapshot is not None
        store = require_sample_weights(pl_module, type(self).__name__)
        if action == "counterfactual":  # guard="paired_on_drop": the weighted epoch again, without the weights
            self._snapshot.restore(trainer, pl_module)  # RNG included: the weighted epoch's batches again
            follow_restored_rng(trainer, self._snapshot.sampler_epoch)
            store.clear()
            return
        if self._plain_end is None:  # right after the counterfactual epoch: keep its end state
            self._plain_end = TrainingSnapshot.take(trainer, pl_module)
        if action == "weighted_try":
            self._snapshot.restore(trainer, pl_module)  # RNG included: the counterfactual's batches again
            follow_restored_rng(trainer, self._snapshot.sampler_epoch)
            store.set(self._held)
            return
        self._plain_end.restore(trainer, pl_module)
        follow_restored_rng(trainer, self._plain_end.sampler_epoch)
        self._plain_end = self._held = None
        self._drop(trainer, pl_module, _DROPPED)

    def _drop(
        self, trainer: Trainer, pl_module: LightningModule, reason: str, after: list[float] | None = None
    ) -> None:
        assert self._active is not None
        self._active.status, self._active.reason = "dropped", reason
        rank_zero_warn(f"DirectImprovement: intervention at epoch {self._active.epoch}: {reason}.")
        self._close(trainer, pl_module, after)

    def _close(self, trainer: Trainer, pl_module: LightningModule, after: list[float] | None) -> None:
        record, self._active, self._remaining = self._active, None, None
        self._reference, self._snapshot, self._rollback = None, None, False
        self._phase = self._next = self._held = self._plain = self._plain_end = None
        self._tried = self._tried_epoch = self._tried_end = None
        require_sample_weights(pl_module, type(self).__name__).clear()
        assert record is not None
        record.after = after
        self.finish(trainer, record)
