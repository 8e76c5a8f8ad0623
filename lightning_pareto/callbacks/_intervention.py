"""Shared machinery of the Direct Improvement and Course Correction callbacks.

One intervention ("What Is The Performance Ceiling of My Classifier?", Algorithm 1) on the trainer's own
data and model:

1. category-wise influence of every training sample on every class's validation loss, on the
   current model (a non-shuffled loader over the training set, with indices);
2. the Pareto ceiling report (region counts, PCA ratio, exact criterion);
3. the Pareto-LP-GA weight search with ``"predicted"`` (first-order, no training) or ``"trial"``
   fitness (:class:`TrialFitness`: train from the same state with the candidate weights and measure
   per-class validation accuracy);
4. the weights go into the module's :class:`~lightning_pareto.weighting.SampleWeightStore`.

Everything an intervention does is caught: a failure (NaN influence, infeasible LP, no improving
candidate, any exception) leaves the weights uniform, warns, and is recorded as ``"skipped"`` with its
reason. Each intervention is one JSON line in ``<log dir>/interventions.jsonl`` and, with a
``TensorBoardLogger``, figures, a text summary and scalars under ``pareto/...``.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from lightning_pareto._distributed import broadcast_object, global_rank, world_size
from lightning_pareto.callbacks._budget import EpochBudget
from lightning_pareto.callbacks._snapshot import cpu_copy, preserved_rng
from lightning_pareto.callbacks.monitor import PerClassAccuracy, require_monitor, resolve_class_names
from lightning_pareto.weighting import (
    UNUSED_WEIGHTS,
    require_indexed_batches,
    require_sample_weights,
    require_single_weight_writer,
    unpack_batch,
    weights_unused,
)

if TYPE_CHECKING:
    from lightning_pareto.pareto.ceiling import CeilingReport
    from lightning_pareto.pareto.search import SearchResult

__all__ = [
    "FITNESS_MODES",
    "CurvatureName",
    "FitnessMode",
    "PresetName",
    "RECORDS_FILE",
    "InterventionCallback",
    "InterventionRecord",
    "InterventionSettings",
    "TrialFitness",
    "check_strategy",
    "intervention_table",
    "per_class_accuracy",
]

CurvatureName = Literal["ekfac", "kfac", "exact"]
FitnessMode = Literal["predicted", "trial"]
PresetName = Literal["fast", "paper"]
CURVATURES: tuple[str, ...] = get_args(CurvatureName)
FITNESS_MODES: tuple[str, ...] = get_args(FitnessMode)
PRESETS: tuple[str, ...] = get_args(PresetName)
RECORDS_FILE = "interventions.jsonl"
WEIGHTS_FOLDER = "intervention_weights"
TAG = "pareto"


@dataclass(frozen=True)
class InterventionSettings:
    """The influence and weight-search options both callbacks take (see their docstrings).

    Raises:
        ValueError: If an option is out of range; the message names the argument.
        TypeError: If an option has the wrong type.
    """

    curvature: CurvatureName = "ekfac"
    damping: float | None = None
    curvature_samples: int | None = None
    modules: tuple[str, ...] | None = None
    fitness: FitnessMode = "predicted"
    trial_batches: int | None = None
    preset: PresetName = "fast"
    w_min: float = 0.0
    w_max: float = 3.0
    trust: float = 0.5
    time_budget: float | None = None
    seed: int = 0
    log_figures: bool = True
    influence_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {self.curvature!r}.")
        if self.damping is not None and not (_is_number(self.damping) and math.isfinite(self.damping) and self.damping >= 0):
            raise ValueError(f"damping must be None (automatic) or a finite number >= 0, got {self.damping!r}.")
        if self.curvature_samples is not None and not (_is_int(self.curvature_samples) and self.curvature_samples >= 1):
            raise ValueError(f"curvature_samples must be None (every sample) or a positive integer, got {self.curvature_samples!r}.")
        if self.modules is not None:
            if isinstance(self.modules, str) or not all(isinstance(m, str) for m in self.modules) or not self.modules:
                raise TypeError(f"modules must be None or a non-empty list of layer names such as ['head'], got {self.modules!r}.")
        if self.fitness not in FITNESS_MODES:
            raise ValueError(f"fitness must be one of {FITNESS_MODES}, got {self.fitness!r}.")
        if self.trial_batches is not None and not (_is_int(self.trial_batches) and self.trial_batches >= 1):
            raise ValueError(f"trial_batches must be None (a full epoch) or a positive integer, got {self.trial_batches!r}.")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}.")
        if not (_is_number(self.w_min) and 0.0 <= self.w_min <= 1.0):
            raise ValueError(f"w_min must lie in [0, 1] so that uniform weights stay allowed, got {self.w_min!r}.")
        if not (_is_number(self.w_max) and math.isfinite(self.w_max) and self.w_max >= 1.0):
            raise ValueError(f"w_max must be a finite number >= 1 so that uniform weights stay allowed, got {self.w_max!r}.")
        if not (_is_number(self.trust) and math.isfinite(self.trust) and self.trust > 0):
            raise ValueError(f"trust must be a finite number > 0 (the allowed mean |w - 1|), got {self.trust!r}.")
        if self.time_budget is not None and not (_is_number(self.time_budget) and self.time_budget > 0):
            raise ValueError(f"time_budget must be None or a number of seconds > 0, got {self.time_budget!r}.")
        if not _is_int(self.seed):
            raise TypeError(f"seed must be an integer, got {self.seed!r}.")
        if not _is_int(self.influence_batch_size) or self.influence_batch_size < 1:
            raise ValueError(f"influence_batch_size must be a positive integer, got {self.influence_batch_size!r}.")


@dataclass
class InterventionRecord:
    """One intervention, as written to ``interventions.jsonl``.

    Attributes:
        epoch: The epoch whose state the weights were computed from (DI: the chosen epoch; CC: the
            detrimental epoch that was rolled back).
        mode: ``"direct_improvement"`` or ``"course_correction"``.
        targets: Target class indices.
        before: Per-class validation accuracy before (DI: after epoch ``epoch``; CC: after the epoch
            preceding the detrimental one), NaN for classes without validation samples.
        after: Per-class validation accuracy after the weighted epoch(s), or ``None`` (skipped, or
            the run ended first).
        bad: CC only: per-class validation accuracy after the detrimental epoch.
        status: ``"applied"`` or ``"skipped"``.
        reason: Why it was skipped (empty when applied).
        seconds: Wall-clock seconds of influence, ceiling check and search.
        weighted_epochs: ``trainer.current_epoch`` of every epoch trained with the weights.
        n_weighted: Number of training samples whose weight differs from one.
        ceiling: The ceiling report's summary (``ratio``, ``verdict``, ``pca_ratio``, region counts).
        thresholds: Per-class thresholds ``tau`` of the chosen LP (``None`` at targets).
        trust: Trust radius of the chosen LP.
        predicted_gain: First-order predicted per-class gain of the chosen weights (influence units).
        fitness: Fitness of the chosen candidate.
        search: The search's status, evaluations, trials, generations, seconds and (trial fitness)
            the chosen candidate's trial accuracy.
        guard: One entry per weighted epoch checked on validation: ``epoch``, ``scale`` (the
            fraction of the searched ``|w - 1|`` in force), realised per-class ``change`` against the
            epoch before, ``violations`` (non-targets that fell past the tolerance) and ``action``
            (``"kept"``, ``"rollback"``, ``"shrink"``, ``"dropped"``; CC: ``"accepted"``, ``"rejected"``).
        extra_epochs: Training epochs the intervention added to the run: CC's redo, the paired guard's
            counterfactual epoch, rolled-back or rejected weighted tries (their cost beside ``seconds``).
        weights_file: The searched weights, relative to the log folder: an ``.npz`` with ``index`` (dataset
            index), ``weights``, ``influence`` ``(n, K)``, ``targets`` and ``class_names``
            (``numpy.load``; ``pandas.DataFrame({"index": f["index"], "weight": f["weights"]})``).
    """

    epoch: int
    mode: str
    targets: list[int]
    before: list[float] | None
    after: list[float] | None = None
    bad: list[float] | None = None
    status: str = "skipped"
    reason: str = ""
    seconds: float = 0.0
    weighted_epochs: list[int] = field(default_factory=list)
    n_weighted: int = 0
    ceiling: dict[str, Any] | None = None
    thresholds: list[float | None] | None = None
    trust: float | None = None
    predicted_gain: list[float] | None = None
    fitness: float | None = None
    search: dict[str, Any] | None = None
    guard: list[dict[str, Any]] = field(default_factory=list)
    weights_file: str | None = None
    extra_epochs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-safe builtins (NaN and infinities become ``None``)."""
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> InterventionRecord:
        """Rebuild a record from :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in state.items() if key in names})


def per_class_accuracy(model: nn.Module, loader: DataLoader, num_classes: int) -> np.ndarray:
    """Accuracy of every class on a loader, in eval mode without gradients.

    Args:
        model: Maps a batch's inputs to logits ``(b, num_classes)``.
        loader: Yields ``(x, y)`` or ``(x, y, index)``.
        num_classes: Number of classes ``K``.

    Returns:
        Float64 array of shape ``(K,)``; NaN for classes without samples.
    """
    device = next(model.parameters()).device
    correct = torch.zeros(num_classes, dtype=torch.float64)
    total = torch.zeros(num_classes, dtype=torch.float64)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                x, y, _ = unpack_batch(batch)
                predicted = model(move_data_to_device(x, device)).argmax(dim=-1).cpu()
                y = torch.as_tensor(y).cpu()
                total += torch.bincount(y, minlength=num_classes).double()
                correct += torch.bincount(y[predicted == y], minlength=num_classes).double()
    finally:
        model.train(training)
    return np.where(total.numpy() > 0, correct.numpy() / np.maximum(total.numpy(), 1.0), np.nan)


class TrialFitness:
    """Per-class validation accuracy after training from a fixed state with candidate weights.

    Each call trains ``num_batches`` batches (seeded order and dropout, identical for every
    candidate) with the loss ``sum_i w_i * loss_i / b`` and a fresh copy of the optimizer (its
    ``state_dict`` loaded, momentum included), measures per-class validation accuracy, and puts the
    model back exactly: parameters, buffers, ``.grad`` and training flags. The live optimizer, the
    global random states and Lightning's counters are never touched. LR schedulers, gradient
    clipping, accumulation and mixed precision of the real loop are not replayed: the trial uses the
    optimizer's current learning rate.

    Args:
        model: The classifier trained in place (``pl_module.net`` or the module itself).
        optimizer: The run's optimizer, copied for every trial.
        per_sample_loss: ``(logits (b, K), y (b,)) -> (b,)`` losses.
        train_dataset: Training samples ``(x, y, index)``.
        val_loader: Validation batches.
        num_classes: Number of classes ``K``.
        batch_size: Training batch size of the trial.
        num_batches: Batches per trial; ``None`` trains one full epoch.
        seed: Seed of the batch order and of dropout.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        per_sample_loss: Callable[[Tensor, Tensor], Tensor],
        train_dataset: Dataset,
        val_loader: DataLoader,
        num_classes: int,
        *,
        batch_size: int,
        num_batches: int | None,
        seed: int,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.per_sample_loss = per_sample_loss
        self.train_dataset = train_dataset
        self.val_loader = val_loader
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.calls = 0

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """Train with ``weights`` (float array of shape ``(n,)``) and return per-class accuracy ``(K,)``."""
        self.calls += 1
        with self._restoring_model(), preserved_rng():
            torch.manual_seed(self.seed)
            optimizer = self._optimizer_copy()
            device = next(self.model.parameters()).device
            weight_table = torch.as_tensor(np.asarray(weights), dtype=torch.float32, device=device)
            loader = DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(self.seed))
            self.model.train()
            for step, batch in enumerate(loader):
                if self.num_batches is not None and step >= self.num_batches:
                    break
                x, y, index = unpack_batch(batch)
                x, y = move_data_to_device(x, device), torch.as_tensor(y).to(device)
                losses = self.per_sample_loss(self.model(x), y)
                loss = (weight_table[torch.as_tensor(index).to(device)] * losses).sum() / losses.shape[0]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return _finite_accuracy(per_class_accuracy(self.model, self.val_loader, self.num_classes))

    def _optimizer_copy(self) -> Optimizer:
        groups = [dict(group) for group in self.optimizer.param_groups]
        copy = type(self.optimizer)(groups, **self.optimizer.defaults)
        # A fresh copy of the state: load_state_dict keeps tensors already on the right device.
        copy.load_state_dict(cpu_copy(self.optimizer.state_dict()))
        return copy

    @contextmanager
    def _restoring_model(self) -> Iterator[None]:
        state = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
        grads = [(param, param.grad) for param in self.model.parameters()]
        flags = [(module, module.training) for module in self.model.modules()]
        try:
            for param, _ in grads:
                param.grad = None
            yield
        finally:
            self.model.load_state_dict(state)
            for param, grad in grads:
                param.grad = grad
            for module, flag in flags:
                module.training = flag


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
                tracked_modules(influence_model(pl_module), None if self.settings.modules is None else list(self.settings.modules))
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
        """Print the per-class before/after table of the interventions (rank zero)."""
        if self.records and trainer.is_global_zero:
            print("\n" + intervention_table(self.records, self.class_names))

    def state_dict(self) -> dict[str, Any]:
        """The records so far and the epoch budget's extension (subclasses add their counters)."""
        return {"records": [record.to_dict() for record in self.records], "class_names": list(self.class_names),
                **self.budget.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.records = [InterventionRecord.from_dict(r) for r in state_dict.get("records", [])]
        self.class_names = list(state_dict.get("class_names", self.class_names))
        self.budget.load_state_dict(state_dict)

    # ---------------------------------------------------------------- helpers for subclasses
    def add_epochs(self, trainer: Trainer, record: InterventionRecord, epochs: int) -> None:
        """Extend the run by ``epochs`` redone epochs (negative: give them back) and charge them to ``record``."""
        self.budget.change(trainer, epochs)
        record.extra_epochs += epochs

    def accuracy_at(self, epoch: int) -> list[float] | None:
        """The monitor's latest per-class validation accuracy of ``epoch``, or ``None`` if it did not validate."""
        history = [] if self._monitor is None else self._monitor.history
        record = next((r for r in reversed(history) if r["epoch"] == epoch), None)
        return None if record is None else [float(a) for a in record["accuracy"]]

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Count the weight lookups of the epoch, to notice weights that never reach the loss."""
        self._lookups = require_sample_weights(pl_module, type(self).__name__).lookups

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
        history = [] if self._monitor is None else self._monitor.history
        record = next((r for r in reversed(history) if r["epoch"] == epoch), None)
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
            influence = self._influence_matrix(trainer, pl_module)
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
        weights, decided = broadcast_object((weights, record.to_dict()))
        _update_record(record, decided)
        record.seconds = time.perf_counter() - start
        if weights is None:
            store.clear()
            record.status = "skipped"
            rank_zero_warn(
                f"{type(self).__name__}: intervention at epoch {record.epoch} skipped, training goes on with uniform "
                f"weights: {record.reason}"
            )
            return False
        weight_tensor = torch.as_tensor(weights, dtype=torch.float32)
        store.set(weight_tensor)
        record.status, record.n_weighted = "applied", int((weight_tensor - 1.0).abs().gt(1e-6).sum())
        return True

    def finish(self, trainer: Trainer, record: InterventionRecord) -> None:
        """Keep a completed record, write ``interventions.jsonl`` and log its summary (rank zero).

        The file is rewritten from :attr:`records` (restored from the checkpoint on resume), so it holds one
        line per intervention of this run, however often the run was resumed into the same folder.
        """
        self.records.append(record)
        # Trainer.log_dir is a collective under DDP (rank zero broadcasts it): every rank asks for it.
        self._write(trainer, record, Path(trainer.log_dir or trainer.default_root_dir))

    # ---------------------------------------------------------------- internals
    def _influence_matrix(self, trainer: Trainer, pl_module: LightningModule) -> np.ndarray:
        """The category-wise influence matrix ``(n, K)`` (float64) of the run's training set, on every rank."""
        from lightning_pareto.influence import category_influence

        settings = self.settings
        train_dataset, val_dataset, _ = _trainer_datasets(trainer)
        # Each rank scores a disjoint, unpadded shard (samples rank, rank + world, ...): the engine sums
        # the curvature and query statistics over ranks and joins the rows, as one process would.
        train_loader = DataLoader(train_dataset, batch_size=settings.influence_batch_size,
                                  sampler=_shard(len(train_dataset)))  # fmt: skip
        val_loader = DataLoader(val_dataset, batch_size=settings.influence_batch_size, sampler=_shard(len(val_dataset)))
        show_progress = None if trainer.progress_bar_callback is not None and trainer.is_global_zero else False
        with preserved_rng(), torch.inference_mode(False), torch.enable_grad():
            influence = category_influence(
                influence_model(pl_module), train_loader, val_loader, len(self.class_names),
                curvature=settings.curvature, damping=settings.damping, curvature_samples=settings.curvature_samples,
                modules=None if settings.modules is None else list(settings.modules), seed=settings.seed,
                progress=show_progress,
            )  # fmt: skip
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
        if settings.fitness == "trial":
            train_dataset, val_dataset, train_batch_size = _trainer_datasets(trainer)
            val_loader = DataLoader(val_dataset, batch_size=settings.influence_batch_size, shuffle=False)
            fitness = TrialFitness(
                influence_model(pl_module), trainer.optimizers[0], _loss_function(pl_module), train_dataset,
                val_loader, len(self.class_names), batch_size=train_batch_size, num_batches=settings.trial_batches,
                seed=settings.seed,
            )  # fmt: skip
        show_progress = None if trainer.progress_bar_callback is not None else False
        with preserved_rng(), torch.inference_mode(False), torch.enable_grad():
            result = search_weights(
                influence, record.targets, fitness=fitness,
                reference=_finite_accuracy(reference) if settings.fitness == "trial" else None,
                preset=settings.preset, seed=settings.seed, time_budget=settings.time_budget, progress=show_progress,
                w_min=settings.w_min, w_max=settings.w_max, trust=settings.trust,
            )  # fmt: skip
        try:
            self._log_computation(trainer, record, report, influence, result)
        except Exception as error:  # noqa: BLE001 - a logging failure must not cost the intervention
            rank_zero_warn(f"{type(self).__name__}: could not log the intervention: {type(error).__name__}: {error}")
        return _search_weights_or_reason(result, record)

    def _log_computation(self, trainer: Trainer, record: InterventionRecord, report: CeilingReport,
                         influence: np.ndarray, result: SearchResult) -> None:
        if not trainer.is_global_zero:
            return
        scalars = {f"{TAG}/predicted_gain/{name}": float(g)
                   for name, g in zip(self.class_names, result.predicted_gain) if np.isfinite(g)}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        for experiment in _tensorboards(trainer):
            step = trainer.global_step
            experiment.add_text(f"{TAG}/ceiling", _code_block(str(report)), global_step=step)
            if not self.settings.log_figures:
                continue
            from lightning_pareto.plots import ceiling_figure, influence_scatter, weights_histogram

            weights = result.weights
            experiment.add_figure(f"{TAG}/ceiling", ceiling_figure(report, self.class_names), global_step=step)
            experiment.add_figure(f"{TAG}/influence_scatter",
                                  influence_scatter(influence, record.targets, self.class_names, weights), global_step=step)
            if weights is not None:
                experiment.add_histogram(f"{TAG}/weights", np.asarray(weights), global_step=step)
                experiment.add_figure(f"{TAG}/weights_histogram",
                                      weights_histogram(weights, self.settings.w_min, self.settings.w_max), global_step=step)

    def _save_weights(self, log_dir: Path, record: InterventionRecord, weights: np.ndarray,
                      influence: np.ndarray) -> str | None:
        """Save the searched weights and the influence matrix by dataset index; the file's name, or ``None``."""
        name = f"{WEIGHTS_FOLDER}/{len(self.records) + 1:03d}_{record.mode}_epoch{record.epoch}.npz"
        try:
            (log_dir / WEIGHTS_FOLDER).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(log_dir / name, index=np.arange(weights.shape[0]), weights=weights.astype(np.float32),
                                influence=influence.astype(np.float32), targets=np.asarray(record.targets, dtype=np.int64),
                                class_names=np.asarray(self.class_names))
            return name
        except Exception as error:  # noqa: BLE001 - a logging failure must not cost the intervention
            rank_zero_warn(f"{type(self).__name__}: could not save the weights: {type(error).__name__}: {error}")
            return None

    @rank_zero_only
    def _write(self, trainer: Trainer, record: InterventionRecord, log_dir: Path) -> None:
        try:
            path = log_dir / RECORDS_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in self.records))
            os.replace(partial, path)  # atomic: a crash leaves the previous file whole
            for experiment in _tensorboards(trainer):
                experiment.add_text(f"{TAG}/summary", _code_block(intervention_table([record], self.class_names)),
                                    global_step=trainer.global_step)
        except Exception as error:  # noqa: BLE001 - a logging failure must not stop training
            rank_zero_warn(f"{type(self).__name__}: could not write the intervention record: {type(error).__name__}: {error}")


def check_strategy(trainer: Trainer, who: str) -> None:
    """Raise unless the run uses one device or one of Lightning's DDP strategies.

    Args:
        trainer: The Trainer.
        who: The callback's name, for the message.

    Raises:
        ValueError: For FSDP, DeepSpeed or any other strategy that shards or wraps the parameters.
    """
    strategy = trainer.strategy
    if isinstance(strategy, SingleDeviceStrategy) or (
        isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy)
    ):
        return
    raise ValueError(
        f"{who} supports single-device training and Lightning's DDP strategies (strategy='ddp', 'ddp_spawn', "
        f"'ddp_fork', ...), not {type(strategy).__name__}: FSDP and DeepSpeed shard the parameters, and the influence "
        "passes need the whole model on every rank. Train with strategy='ddp'."
    )


def influence_model(pl_module: LightningModule) -> nn.Module:
    """The network influence is computed on: ``pl_module.net`` when it is a module (so ``modules=["head"]``
    names its layers), else the LightningModule itself."""
    net = getattr(pl_module, "net", None)
    return net if isinstance(net, nn.Module) else pl_module


def _loss_function(pl_module: LightningModule) -> Callable[[Tensor, Tensor], Tensor]:
    loss = getattr(pl_module, "per_sample_loss", None)
    if callable(loss):
        return loss
    return lambda logits, y: F.cross_entropy(logits, y, reduction="none")


def _trainer_datasets(trainer: Trainer) -> tuple[Dataset, Dataset, int]:
    """The training and (first) validation datasets of the run, and the training batch size."""
    train = trainer.train_dataloader
    val = trainer.val_dataloaders
    if isinstance(val, (list, tuple)):
        val = val[0] if val else None
    if not isinstance(train, DataLoader) or not isinstance(val, DataLoader):
        raise RuntimeError(
            "the interventions need one training and one validation DataLoader on the Trainer, got "
            f"{type(train).__name__} and {type(val).__name__}"
        )
    return train.dataset, val.dataset, int(train.batch_size or 1)


def _shard(size: int) -> range:
    """This rank's sample indices: every ``world_size``-th from its rank, no padding (all of them alone)."""
    return range(global_rank(), size, world_size())


def _update_record(record: InterventionRecord, state: dict[str, Any]) -> None:
    """Copy a record's :meth:`~InterventionRecord.to_dict` (rank zero's) into ``record`` on this rank."""
    decided = InterventionRecord.from_dict(state)
    for item in fields(InterventionRecord):
        setattr(record, item.name, getattr(decided, item.name))


def _search_weights_or_reason(result: SearchResult, record: InterventionRecord) -> np.ndarray | None:
    """Copy the search result into the record; its weights, or ``None`` with ``record.reason`` set."""
    record.thresholds = [float(t) if np.isfinite(t) else None for t in result.thresholds]
    record.trust = float(result.trust)
    record.predicted_gain = [float(g) for g in result.predicted_gain]
    record.fitness = float(result.fitness)
    record.search = {key: value for key, value in result.to_dict().items()
                     if key not in ("thresholds", "trust", "predicted_gain", "fitness", "reason")}
    if result.status != "improved" or result.weights is None:
        record.reason = f"{result.status}: {result.reason}"
        return None
    return np.asarray(result.weights, dtype=np.float64)


def _finite_accuracy(accuracy: Sequence[float | None] | np.ndarray) -> np.ndarray:
    # A class without validation samples has no accuracy; 0 in both trial and reference means "no change".
    return np.nan_to_num(np.array(accuracy, dtype=np.float64), nan=0.0)


def _tensorboards(trainer: Trainer) -> list[Any]:
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _code_block(text: str) -> str:
    # TensorBoard renders text as markdown; indenting keeps the table's columns.
    return "\n".join("    " + line for line in text.splitlines())


def intervention_table(records: Sequence[InterventionRecord], class_names: Sequence[str]) -> str:
    """Per-class validation accuracy before and after each intervention, as a text table.

    Args:
        records: The interventions, in order.
        class_names: One name per class.

    Returns:
        One block per intervention: a header line (mode, epoch, targets, status) and, per class,
        the accuracy before, after the detrimental epoch (CC), after the weighted epoch(s) and the
        change; target classes are starred. Skipped interventions show their reason.
    """
    blocks = ["Interventions: per-class validation accuracy (%), * = target"]
    width = max([len("mean targets"), *(len(str(n)) + 2 for n in class_names)])
    for number, record in enumerate(records, start=1):
        names = [class_names[t] for t in record.targets if t < len(class_names)]
        header = f"#{number} {record.mode} at epoch {record.epoch}, targets {names}: {record.status}"
        if record.status != "applied":
            blocks.append(f"{header} ({record.reason})")
            continue
        epochs = ",".join(str(e) for e in record.weighted_epochs)
        has_bad = record.bad is not None
        columns = ["before", *(["bad"] if has_bad else []), f"after{' ' + epochs if epochs else ''}", "change"]
        lines = [f"{header} ({record.seconds:.1f} s, {record.n_weighted} samples reweighted)",
                 f"{'class':<{width}}" + "".join(f"  {c:>10}" for c in columns)]
        reference = record.bad if has_bad else record.before
        rows = [(f"{'*' if c in record.targets else ' '} {name}", c) for c, name in enumerate(class_names)]
        for label, c in rows:
            values = [_at(record.before, c), *([_at(record.bad, c)] if has_bad else []), _at(record.after, c)]
            change = _at(record.after, c) - _at(reference, c)
            lines.append(f"{label:<{width}}" + "".join(f"  {_percent(v):>10}" for v in values)
                         + f"  {_percent(change, signed=True):>10}")
        for label, group in (("targets", record.targets), ("others", [c for c in range(len(class_names)) if c not in record.targets])):
            if not group:
                continue
            values = [_mean(record.before, group), *([_mean(record.bad, group)] if has_bad else []), _mean(record.after, group)]
            change = _mean(record.after, group) - _mean(reference, group)
            lines.append(f"{'mean ' + label:<{width}}" + "".join(f"  {_percent(v):>10}" for v in values)
                         + f"  {_percent(change, signed=True):>10}")
        if has_bad:
            lines.append("(change: after the weighted redo minus the detrimental epoch it replaced)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _at(values: Sequence[float | None] | None, c: int) -> float:
    if values is None or c >= len(values) or values[c] is None:
        return math.nan
    return float(values[c])


def _mean(values: Sequence[float | None] | None, classes: Sequence[int]) -> float:
    present = [v for v in (_at(values, c) for c in classes) if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def _percent(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "-"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
