"""``InterventionCallback``: the base of ``DirectImprovement`` and ``CourseCorrection``.

One intervention ("What Is The Performance Ceiling of My Classifier?", Algorithm 1) on the trainer's own
data and model:

1. category-wise influence of every training sample on every class's validation loss, on the
   current model (a non-shuffled loader over the training set, with indices);
2. the Pareto ceiling report (region counts, PCA ratio, exact criterion);
3. the Pareto-LP-GA weight search with ``"predicted"`` (first-order, no training) or ``"trial"``
   fitness (:class:`~lightning_pareto.callbacks._trials.TrialFitness`);
4. the weights go into the module's :class:`~lightning_pareto.weighting.SampleWeightStore`.

Everything an intervention does is caught: a failure (NaN influence, infeasible LP, no improving
candidate, any exception) leaves the weights uniform, warns, and is recorded as ``"skipped"`` with its
reason. Each intervention is one JSON line in ``<log dir>/interventions.jsonl`` and, with a
``TensorBoardLogger``, figures, a text summary and scalars under ``pareto/...``. The callback times the
fit's epochs itself, so each record also says what the intervention cost in epochs of this fit.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader

from lightning_pareto.callbacks._accuracy import finite_accuracy
from lightning_pareto.callbacks._budget import EpochBudget
from lightning_pareto.callbacks._cost import EpochClock, cost_in_epochs
from lightning_pareto.callbacks._record import RECORDS_FILE, InterventionRecord, save_weights, write_records
from lightning_pareto.callbacks._report import (
    intervention_label,
    intervention_table,
    log_outcome,
    log_search,
    log_start,
    notify,
    outcome_figure,
)
from lightning_pareto.callbacks._run import check_strategy, influence_model, loss_function, rank_shard, trainer_datasets
from lightning_pareto.callbacks._settings import InterventionSettings
from lightning_pareto.callbacks._snapshot import preserved_rng
from lightning_pareto.callbacks._trials import TrialFitness, trial_batch_count
from lightning_pareto.callbacks.monitor import PerClassAccuracy, require_monitor, resolve_class_names
from lightning_pareto.weighting import (
    UNUSED_WEIGHTS,
    require_indexed_batches,
    require_sample_weights,
    require_single_weight_writer,
    weights_unused,
)

if TYPE_CHECKING:
    from lightning_pareto.pareto.search import SearchResult

__all__ = ["InterventionCallback"]

OUTCOME_FILE = "predicted_vs_realised.png"


class InterventionCallback(Callback):
    """Base of :class:`DirectImprovement` and :class:`CourseCorrection`: validation, one intervention, records.

    Subclasses decide *when* to intervene and on which classes; this class computes and applies the
    weights, keeps :attr:`records`, writes them, and prints the before/after table at the end of fit.

    Args:
        settings: The influence and search options.
    """

    mode: ClassVar[str] = ""
    writes_sample_weights: ClassVar[bool] = True

    def __init__(self, settings: InterventionSettings) -> None:
        self.settings = settings
        self.budget = EpochBudget()
        self.epoch_clock = EpochClock()
        self.records: list[InterventionRecord] = []
        self.class_names: list[str] = []
        self._monitor: PerClassAccuracy | None = None
        self._lookups = -1  # the weight store's lookup count at the epoch's start
        self._warned_unused = False

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the run before training: weight contract, indexed batches, monitor, layers, one intervention callback."""
        if stage != "fit":
            return
        who = type(self).__name__
        self.budget.reset()
        check_strategy(trainer, who)
        require_sample_weights(pl_module, who)
        require_indexed_batches(trainer, who)
        self._monitor = require_monitor(trainer, who)
        self.class_names = resolve_class_names(trainer, pl_module)
        require_single_weight_writer(trainer, self, who)
        from lightning_pareto.influence import tracked_modules

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the engine warns about untracked layers when it runs
                tracked_modules(influence_model(pl_module), self.settings.module_names)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{who}(modules={self.settings.modules!r}): {error}") from None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the optimizers for trial fitness; re-extend the epoch budget by the epochs a resumed run already
        redid (the Trainer's limits are not checkpointed)."""
        self.budget.reapply(trainer)
        if self.settings.fitness == "trial" and len(trainer.optimizers) != 1:
            raise ValueError(
                f"{type(self).__name__}(fitness='trial') trains trial epochs with a copy of the optimizer and needs "
                f"exactly one; the module configures {len(trainer.optimizers)}. Use fitness='predicted'."
            )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Print why the run trained more epochs than ``max_epochs`` said and the before/after table; save the
        predicted-vs-realised figure beside the logs (rank zero)."""
        log_dir = Path(trainer.log_dir or trainer.default_root_dir) if trainer.loggers else None  # every rank asks
        if not self.records or not trainer.is_global_zero:
            return
        extra = [(r, r.extra_epochs) for r in self.records if r.extra_epochs]
        if extra and trainer.max_epochs is not None and trainer.max_epochs >= 0:
            added = sum(epochs for _, epochs in extra)
            parts = ", ".join(f"#{r.number}: {epochs}" for r, epochs in extra)
            print(
                f"\n{type(self).__name__} trained {added} redone epoch(s) on top of max_epochs="
                f"{trainer.max_epochs - self.budget.extra_epochs} ({parts}): rolled-back epochs are trained again as "
                f"extra epochs, hence max_epochs={trainer.max_epochs} at the end."
            )
        print("\n" + intervention_table(self.records, self.class_names))
        figure = outcome_figure(self.records, self.class_names) if log_dir is not None else None
        if figure is not None:
            try:
                figure.savefig(log_dir / OUTCOME_FILE, dpi=100)
            except Exception as error:  # noqa: BLE001 - a figure must not fail the run
                rank_zero_warn(f"{type(self).__name__}: could not save {OUTCOME_FILE}: {type(error).__name__}: {error}")

    def state_dict(self) -> dict[str, Any]:
        """The records so far, the epoch budget's extension and the epoch times (subclasses add their counters)."""
        return {
            "records": [record.to_dict() for record in self.records],
            "class_names": list(self.class_names),
            **self.budget.state_dict(),
            "epoch_clock": self.epoch_clock.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.records = [InterventionRecord.from_dict(r) for r in state_dict.get("records", [])]
        self.class_names = list(state_dict.get("class_names", self.class_names))
        self.budget.load_state_dict(state_dict)
        self.epoch_clock.load_state_dict(state_dict.get("epoch_clock", {}))

    # ---------------------------------------------------------------- helpers for subclasses
    def new_record(
        self, epoch: int, targets: list[int], before: list[float] | None, bad: list[float] | None = None
    ) -> InterventionRecord:
        """The record of the next intervention, numbered in the run's order (one is open at a time)."""
        return InterventionRecord(
            epoch=epoch, mode=self.mode, targets=targets, before=before, bad=bad, number=len(self.records) + 1
        )

    def notify(self, trainer: Trainer, message: str) -> None:
        """Tell the user what an intervention does, on its own console line (rank zero)."""
        notify(trainer, f"{type(self).__name__}: {message}")

    def discard(self, trainer: Trainer, epoch: int, reason: str) -> None:
        """Mark ``epoch``'s training as rolled back in the monitor's figures and ``val_acc_discarded/*``."""
        if self._monitor is not None:
            self._monitor.discard(trainer, epoch, reason)

    def add_epochs(self, trainer: Trainer, record: InterventionRecord, epochs: int) -> None:
        """Extend the run by ``epochs`` redone epochs (negative: give them back) and charge them to ``record``."""
        self.budget.change(trainer, epochs)
        record.extra_epochs += epochs

    def accuracy_at(self, epoch: int) -> list[float] | None:
        """The monitor's latest per-class validation accuracy of ``epoch``, or ``None`` if it did not validate."""
        record = self._validation_of(epoch)
        return None if record is None else [float(a) for a in record["accuracy"]]

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Count the weight lookups of the epoch, to notice weights that never reach the loss; start its clock.

        A subclass that works at the epoch's start restarts :attr:`epoch_clock` after that work, saying
        whether the epoch is one an intervention added.
        """
        self._lookups = require_sample_weights(pl_module, type(self).__name__).lookups
        self.epoch_clock.start()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A validation inside a training epoch ended: the epoch's clock stops here unless another follows."""
        if not trainer.sanity_checking:
            self.epoch_clock.validation_end()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop the epoch's clock (subclasses call this first: an intervention made at the end is not the epoch's)."""
        self.epoch_clock.stop()

    def weights_unused(self, pl_module: LightningModule, record: InterventionRecord) -> bool:
        """Whether weights were in force for a whole epoch without one lookup (call at the epoch's end).

        A module whose ``training_step`` reduces its loss without
        :meth:`~lightning_pareto.weighting.SampleWeightedMixin.weighted_mean` never looks the weights up:
        they do not reach the loss. Warns once per run and notes it in the record's reason.
        """
        if not weights_unused(require_sample_weights(pl_module, type(self).__name__), self._lookups):
            return False
        note = UNUSED_WEIGHTS
        if note not in record.reason:
            record.reason = f"{record.reason}; {note}" if record.reason else note
        if not self._warned_unused:
            self._warned_unused = True
            rank_zero_warn(f"{type(self).__name__}: {note}.")
        return True

    def support_at(self, epoch: int) -> list[int]:
        """Validation samples per class of ``epoch``'s validation (zeros if it did not validate)."""
        record = self._validation_of(epoch)
        return [0] * len(self.class_names) if record is None else [int(n) for n in record["support"]]

    def intervene(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        record: InterventionRecord,
        reference: Sequence[float | None],
    ) -> bool:
        """Compute weights for ``record.targets`` on the current model and set them on the module.

        Fills ``record`` (status, reason, seconds, ceiling, LP and search details). Never raises:
        any failure leaves the weights uniform, warns and marks the record ``"skipped"``.

        Under DDP every rank scores its shard of the training set and gets the whole influence
        matrix (see :func:`~lightning_pareto.influence.category_influence`); rank zero alone checks the
        ceiling, searches the weights (trial fitness trains there while the others wait) and logs;
        its weights and record then reach every rank, so all ranks train with the same weights.

        Args:
            trainer: The running Trainer.
            pl_module: Its module, holding the weight store.
            record: The intervention being made (``targets`` set).
            reference: Per-class accuracy ``(K,)`` the trial fitness compares with (the paper's: DI
                the chosen epoch's, CC the detrimental epoch's); unused by predicted fitness.

        Returns:
            Whether weights were set.
        """
        start = time.perf_counter()
        store = require_sample_weights(pl_module, type(self).__name__)
        influence: np.ndarray | None = None
        try:
            influence = self._influence_matrix(trainer, pl_module, record)
        except Exception as error:  # noqa: BLE001 - nothing an intervention does may crash the run
            record.reason = f"error: {type(error).__name__}: {error}"
        weights: np.ndarray | None = None
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank asks
        if trainer.is_global_zero and influence is not None:
            try:
                weights = self._decide(trainer, pl_module, record, reference, influence)
            except Exception as error:  # noqa: BLE001
                record.reason = f"error: {type(error).__name__}: {error}"
            if weights is not None:
                record.weights_file = self._save_weights(log_dir, record, weights, influence)
        # Every rank reaches this broadcast, whatever happened above: rank zero's decision is the run's.
        weights, decided = trainer.strategy.broadcast((weights, record.to_dict()), src=0)
        record.update_from(decided)
        record.seconds = time.perf_counter() - start
        if weights is None:
            store.clear()
            record.status = "skipped"
            rank_zero_warn(
                f"{type(self).__name__}: intervention #{record.number} at epoch {record.epoch} skipped, training goes on "
                f"with uniform weights: {record.reason}"
            )
            self._mark(trainer, record, start=True)
            return False
        weight_tensor = torch.as_tensor(weights, dtype=torch.float32)
        store.set(weight_tensor)
        record.status, record.n_weighted = "applied", int((weight_tensor - 1.0).abs().gt(1e-6).sum())
        self._mark(trainer, record, start=True)
        return True

    def finish(self, trainer: Trainer, record: InterventionRecord) -> None:
        """Keep a completed record, write ``interventions.jsonl`` and log its summary (rank zero).

        The file is rewritten from :attr:`records` (restored from the checkpoint on resume), so it holds one
        line per intervention of this run, however often the run was resumed into the same folder.
        """
        self.records.append(record)
        record.realise()
        self._charge(record)
        self._mark(trainer, record)
        # Trainer.log_dir is a collective under DDP (rank zero broadcasts it): every rank asks for it.
        self._write(trainer, record, Path(trainer.log_dir or trainer.default_root_dir))

    # ---------------------------------------------------------------- internals
    def _charge(self, record: InterventionRecord) -> None:
        """Fill the record's epoch time and cost in epochs (``None`` if they cannot be had; never raises)."""
        try:
            record.epoch_seconds = self.epoch_clock.epoch_seconds()
            record.cost_epochs = cost_in_epochs(record, record.epoch_seconds)
        except Exception as error:  # noqa: BLE001 - a cost that cannot be counted must not cost the run
            record.epoch_seconds = record.cost_epochs = None
            rank_zero_warn(f"{type(self).__name__}: could not count the intervention's cost: {error}")

    def _mark(self, trainer: Trainer, record: InterventionRecord, start: bool = False) -> None:
        """Draw the intervention in the monitor's figures; at its start, also log ``pareto/interventions``."""
        if self._monitor is not None:
            self._monitor.mark_intervention(record.number, record.epoch, intervention_label(record))
        if start:
            try:
                log_start(trainer, record, self.class_names)
            except Exception as error:  # noqa: BLE001 - a logging failure must not cost the intervention
                rank_zero_warn(
                    f"{type(self).__name__}: could not log the intervention: {type(error).__name__}: {error}"
                )

    def _validation_of(self, epoch: int) -> dict[str, Any] | None:
        """The monitor's latest history record of ``epoch`` (a redone epoch validates twice), or ``None``."""
        history = [] if self._monitor is None else self._monitor.history
        return next((r for r in reversed(history) if r["epoch"] == epoch), None)

    def _influence_matrix(self, trainer: Trainer, pl_module: LightningModule, record: InterventionRecord) -> np.ndarray:
        """The category-wise influence matrix ``(n, K)`` (float64) of the run's training set, on every rank.

        Its phases' seconds go to ``record.influence_seconds``.
        """
        from lightning_pareto.influence import InfluenceTimings, category_influence

        settings = self.settings
        train_dataset, val_dataset, _ = trainer_datasets(trainer)
        # Each rank scores a disjoint, unpadded shard (samples rank, rank + world, ...): the engine sums
        # the curvature and query statistics over ranks and joins the rows, as one process would.
        train_loader = DataLoader(
            train_dataset, batch_size=settings.influence_batch_size, sampler=rank_shard(trainer, len(train_dataset))
        )
        val_loader = DataLoader(
            val_dataset, batch_size=settings.influence_batch_size, sampler=rank_shard(trainer, len(val_dataset))
        )
        show_progress = None if trainer.progress_bar_callback is not None and trainer.is_global_zero else False
        timings = InfluenceTimings()
        with preserved_rng(), torch.inference_mode(False), torch.enable_grad():
            influence = category_influence(
                influence_model(pl_module),
                train_loader,
                val_loader,
                len(self.class_names),
                curvature=settings.curvature,
                damping=settings.damping,
                curvature_samples=settings.curvature_samples,
                modules=settings.module_names,
                seed=settings.seed,
                matmul_precision=settings.matmul_precision,
                progress=show_progress,
                timings=timings,
            )
        record.influence_seconds = {name: value for name, value in vars(timings).items() if value > 0.0}
        return influence.double().numpy()

    def _decide(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        record: InterventionRecord,
        reference: Sequence[float | None],
        influence: np.ndarray,
    ) -> np.ndarray | None:
        """Ceiling check, weight search and logging (rank zero); the weights, or ``None`` with a reason."""
        from lightning_pareto.influence.kfac.category import non_finite_cause
        from lightning_pareto.pareto.ceiling import ceiling_report
        from lightning_pareto.pareto.search import search_weights

        settings = self.settings
        cause = non_finite_cause(torch.from_numpy(influence))
        if cause:
            record.reason = f"{cause}; scores not used"
            return None
        report = ceiling_report(influence, record.targets)
        record.ceiling = {
            "ratio": report.ratio,
            "verdict": report.verdict,
            "pca_ratio": report.pca_ratio,
            "counts": vars(report.counts).copy(),
            "target_counts": None if report.target_counts is None else vars(report.target_counts).copy(),
        }
        fitness: str | TrialFitness = "predicted"
        trial_batches: int | None = None
        if settings.fitness == "trial":
            train_dataset, val_dataset, train_batch_size = trainer_datasets(trainer)
            val_loader = DataLoader(val_dataset, batch_size=settings.influence_batch_size, shuffle=False)
            trial_batches = trial_batch_count(
                settings.trial_batches, trainer.num_training_batches, len(train_dataset), train_batch_size
            )
            fitness = TrialFitness(
                influence_model(pl_module),
                trainer.optimizers[0],
                loss_function(pl_module),
                train_dataset,
                val_loader,
                len(self.class_names),
                batch_size=train_batch_size,
                num_batches=trial_batches,
                seed=settings.seed,
            )
        show_progress = None if trainer.progress_bar_callback is not None else False
        with preserved_rng(), torch.inference_mode(False), torch.enable_grad():
            result = search_weights(
                influence,
                record.targets,
                fitness=fitness,
                reference=finite_accuracy(reference) if settings.fitness == "trial" else None,
                preset=settings.preset,
                seed=settings.seed,
                time_budget=settings.time_budget,
                progress=show_progress,
                w_min=settings.w_min,
                w_max=settings.w_max,
                trust=settings.trust,
                trial_screen=settings.trial_screen,
            )
        try:
            log_search(
                trainer,
                self.class_names,
                record,
                report,
                influence,
                result,
                log_figures=settings.log_figures,
                w_min=settings.w_min,
                w_max=settings.w_max,
            )
        except Exception as error:  # noqa: BLE001 - a logging failure must not cost the intervention
            rank_zero_warn(f"{type(self).__name__}: could not log the intervention: {type(error).__name__}: {error}")
        weights = _search_weights_or_reason(result, record)
        if isinstance(fitness, TrialFitness) and record.search is not None:
            record.search["trial_batches"] = trial_batches  # None: a full epoch
        return weights

    def _save_weights(
        self, log_dir: Path, record: InterventionRecord, weights: np.ndarray, influence: np.ndarray
    ) -> str | None:
        """Save the searched weights and the influence matrix by dataset index; the file's name, or ``None``."""
        try:
            return save_weights(log_dir, record, weights, influence, self.class_names)
        except Exception as error:  # noqa: BLE001 - a logging failure must not cost the intervention
            rank_zero_warn(f"{type(self).__name__}: could not save the weights: {type(error).__name__}: {error}")
            return None

    @rank_zero_only
    def _write(self, trainer: Trainer, record: InterventionRecord, log_dir: Path) -> None:
        try:
            write_records(log_dir / RECORDS_FILE, self.records)
            log_outcome(trainer, record, self.records, self.class_names)
        except Exception as error:  # noqa: BLE001 - a logging failure must not stop training
            rank_zero_warn(
                f"{type(self).__name__}: could not write the intervention record: {type(error).__name__}: {error}"
            )


def _search_weights_or_reason(result: SearchResult, record: InterventionRecord) -> np.ndarray | None:
    """Copy the search result into the record; its weights, or ``None`` with ``record.reason`` set."""
    record.thresholds = [float(t) if np.isfinite(t) else None for t in result.thresholds]
    record.trust = float(result.trust)
    record.predicted_gain = [float(g) for g in result.predicted_gain]
    record.fitness = float(result.fitness)
    record.search = {
        key: value
        for key, value in result.to_dict().items()
        if key not in ("thresholds", "trust", "predicted_gain", "fitness", "reason")
    }
    if result.status != "improved" or result.weights is None:
        record.reason = f"{result.status}: {result.reason}"
        return None
    return np.asarray(result.weights, dtype=np.float64)
