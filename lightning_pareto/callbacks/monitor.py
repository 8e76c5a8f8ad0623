"""``PerClassAccuracy``: per-class validation accuracy each epoch, its history, and TensorBoard views."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassStatScores

from lightning_pareto.plots import accuracy_heatmap, per_class_curves
from lightning_pareto.weighting import unpack_batch

__all__ = ["PerClassAccuracy", "class_indices", "find_monitor", "require_monitor", "resolve_class_names"]

TAG_PREFIX = "val_acc"
DISCARDED_PREFIX = "val_acc_discarded"
CURVES_FILE = "per_class_curves.png"
HEATMAP_FILE = "val_acc_heatmap.png"


def resolve_class_names(
    trainer: Trainer, pl_module: LightningModule, class_names: Sequence[str] | None = None
) -> list[str]:
    """The class names of a run: given ones, else the module's, else the datamodule's, else ``"0"``, ``"1"``, ...

    Args:
        trainer: The Trainer (its ``datamodule`` is consulted).
        pl_module: The module (its ``class_names`` / ``num_classes`` are consulted).
        class_names: Names given explicitly, e.g. to a callback.

    Returns:
        One unique name per class.

    Raises:
        ValueError: If the names are not unique, disagree with the module's ``num_classes``, or
            cannot be determined.
    """
    num_classes = getattr(pl_module, "num_classes", None)
    names = class_names
    for source in (pl_module, getattr(trainer, "datamodule", None)):
        if names is None and source is not None:
            names = getattr(source, "class_names", None)
    if names is None:
        if not isinstance(num_classes, int):
            raise ValueError(
                "cannot tell the classes: pass class_names=[...] to the callback, or give the LightningModule a "
                "`num_classes` or `class_names` attribute."
            )
        names = [str(c) for c in range(num_classes)]
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}.")
    if isinstance(num_classes, int) and len(names) != num_classes:
        raise ValueError(f"{len(names)} class names {names} given but the module has num_classes={num_classes}.")
    return names


def class_indices(targets: Sequence[str | int], class_names: Sequence[str], argument: str) -> list[int]:
    """Turn class names (or indices) into sorted unique class indices, with a clear error for unknown ones.

    Args:
        targets: Class names or integer indices.
        class_names: All class names, in class-index order.
        argument: The argument's name for the message (e.g. ``"targets"``).

    Returns:
        Sorted unique indices.

    Raises:
        ValueError: If ``targets`` is empty or names an unknown class.

    Example:
        >>> class_indices(["cat", 0], ["plane", "car", "cat"], "targets")
        [0, 2]
    """
    if not targets:
        raise ValueError(f"{argument} is empty; name at least one class from {list(class_names)}.")
    indices = set()
    for target in targets:
        if isinstance(target, int) and not isinstance(target, bool):
            if not 0 <= target < len(class_names):
                raise ValueError(f"{argument}: class index {target} out of range [0, {len(class_names)}).")
            indices.add(target)
        elif str(target) in class_names:
            indices.add(list(class_names).index(str(target)))
        else:
            raise ValueError(f"{argument}: unknown class {target!r}; known classes are {list(class_names)}.")
    return sorted(indices)


class PerClassAccuracy(Callback):
    """Logs the validation accuracy of every class each epoch and keeps its history.

    Logs ``val_acc/<class name>`` for each class with validation samples, ``val_acc/mean`` (mean
    over those classes) and ``val_acc/worst`` through ``pl_module.log``, so every logger receives
    them. A class without validation samples is reported missing (a warning, NaN in the history),
    never logged as 0. Sanity-check runs are skipped. With a ``TensorBoardLogger`` it registers a
    custom-scalars layout (all classes as lines of one chart) and, every ``log_figure_every_n_epochs``
    epochs and at the end of fit, logs two figures: ``val_acc_curves`` (one coloured line per class,
    interventions as dashed vertical lines, rolled-back epochs hatched) and ``val_acc_heatmap`` (epochs x
    classes); with any logger both are also saved as ``per_class_curves.png`` and
    ``val_acc_heatmap.png`` in the log folder.

    Intervention callbacks report through :meth:`mark_intervention` and :meth:`discard`: an epoch whose
    training they rolled back keeps its ``val_acc/<class>`` points (a logged scalar cannot be taken back)
    and is logged again under ``val_acc_discarded/<class>``, so the two can be told apart.

    The logits come from the validation step's output when it returns a mapping with ``"logits"``
    (as ``ClassifierModule`` does); otherwise the callback runs ``pl_module(x)`` again.

    Other callbacks read :attr:`history`, :meth:`latest` and :meth:`accuracy_matrix` (find the
    instance with :func:`find_monitor`). The history is part of the checkpoint.

    Args:
        class_names: Class names (default: the module's or datamodule's ``class_names``).
        log_figure_every_n_epochs: Figure period in epochs; 0 logs the figures only at the end of fit.
    """

    def __init__(self, class_names: list[str] | None = None, log_figure_every_n_epochs: int = 5) -> None:
        if not isinstance(log_figure_every_n_epochs, int) or log_figure_every_n_epochs < 0:
            raise ValueError(
                "log_figure_every_n_epochs must be a non-negative integer (0 disables it), "
                f"got {log_figure_every_n_epochs!r}."
            )
        self._given_names = None if class_names is None else [str(n) for n in class_names]
        self.log_figure_every_n_epochs = log_figure_every_n_epochs
        self.class_names: list[str] = list(self._given_names or [])
        self._history: list[dict[str, Any]] = []
        self._metrics: MetricCollection | None = None
        self._updated = False
        self._warned_missing: set[str] = set()
        self._layout_dirs: set[str] = set()
        self._discarded: dict[int, str] = {}  # epoch -> why its training was rolled back
        self._interventions: dict[int, dict[str, Any]] = {}  # intervention number -> {"x": float, "label": str}
        self._figure_dir: str | None = None

    # ---------------------------------------------------------------- read access for other callbacks
    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per validation run: ``{"epoch": int, "step": int, "accuracy": list[float],
        "support": list[int]}``, lists in class order, accuracy NaN for classes without samples."""
        return [dict(record) for record in self._history]

    def latest(self) -> dict[str, Any] | None:
        """The most recent history record, or ``None`` before the first validation epoch."""
        return dict(self._history[-1]) if self._history else None

    def accuracy_matrix(self) -> np.ndarray:
        """The history's accuracies as a float64 array of shape ``(E, K)`` (NaN = missing class)."""
        return np.array([r["accuracy"] for r in self._history], dtype=np.float64).reshape(-1, len(self.class_names))

    @property
    def discarded(self) -> dict[int, str]:
        """Epochs whose training an intervention rolled back, with the reason."""
        return dict(self._discarded)

    def discard(self, trainer: Trainer, epoch: int, reason: str) -> None:
        """Mark ``epoch``'s training as rolled back: logged again under ``val_acc_discarded/<class>``, hatched in the figures.

        Args:
            trainer: The running Trainer (its loggers receive the discarded accuracies).
            epoch: ``trainer.current_epoch`` of the discarded epoch.
            reason: Why, for the figures' readers (e.g. ``"redo rejected"``).
        """
        self._discarded[epoch] = reason
        record = next((r for r in reversed(self._history) if r["epoch"] == epoch), None)
        if record is None or not trainer.is_global_zero:
            return
        metrics = {
            f"{DISCARDED_PREFIX}/{name}": float(a)
            for name, a in zip(self.class_names, record["accuracy"])
            if not math.isnan(a)
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=record["step"])

    def mark_intervention(self, number: int, epoch: int, label: str) -> None:
        """Draw intervention ``number`` (made from ``epoch``'s state) as a vertical line after that epoch, labelled ``label``."""
        self._interventions[number] = {"x": epoch + 0.5, "label": label}

    def curves_figure(self) -> Any:
        """The per-class curves of the history so far, interventions and discarded epochs marked (a matplotlib Figure)."""
        marks = [(mark["x"], mark["label"]) for _, mark in sorted(self._interventions.items())]
        return per_class_curves(
            self.accuracy_matrix(),
            self.class_names,
            [r["epoch"] for r in self._history],
            discarded=sorted(self._discarded),
            interventions=marks,
        )

    def summary_table(self) -> str:
        """A text table of each class's accuracy at the first and the last recorded epoch."""
        if not self._history:
            return "PerClassAccuracy: no validation epoch recorded."
        first, last = self._history[0], self._history[-1]
        width = max(len("class"), *(len(n) for n in self.class_names))
        lines = [f"{'class':<{width}}  epoch {first['epoch']:>3}  epoch {last['epoch']:>3}  change", "-" * (width + 32)]
        for c, name in enumerate(self.class_names):
            a, b = first["accuracy"][c], last["accuracy"][c]
            lines.append(f"{name:<{width}}  {_percent(a):>9}  {_percent(b):>9}  {_percent(b - a, signed=True):>6}")
        a, b = _nanmean(first["accuracy"]), _nanmean(last["accuracy"])
        lines.append(f"{'mean':<{width}}  {_percent(a):>9}  {_percent(b):>9}  {_percent(b - a, signed=True):>6}")
        a, b = _nanmin(first["accuracy"]), _nanmin(last["accuracy"])
        lines.append(f"{'worst':<{width}}  {_percent(a):>9}  {_percent(b):>9}  {_percent(b - a, signed=True):>6}")
        return "\n".join(lines)

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.class_names = resolve_class_names(trainer, pl_module, self._given_names)
        num_classes = len(self.class_names)
        self._metrics = MetricCollection(
            {
                "accuracy": MulticlassAccuracy(num_classes, average=None),
                "stats": MulticlassStatScores(num_classes, average=None),  # its last column is the support
            }
        )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Trainer.log_dir is a collective under DDP: every rank asks, here, where every rank runs.
        log_dir = trainer.log_dir if trainer.loggers else None
        if not trainer.is_global_zero:
            return
        self._figure_dir = log_dir
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and logger.log_dir not in self._layout_dirs:
                logger.experiment.add_custom_scalars(self._layout())
                self._layout_dirs.add(logger.log_dir)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = self._require_metrics()
        metrics.reset()
        self._metrics = metrics.to(pl_module.device)
        self._updated = False

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or dataloader_idx != 0:
            return
        x, y, _ = unpack_batch(batch)
        if isinstance(outputs, Mapping) and "logits" in outputs:
            logits = outputs["logits"]
        else:
            with torch.no_grad():
                logits = pl_module(x)
        self._require_metrics().update(logits, y)
        self._updated = True

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._updated:
            return
        results = self._require_metrics().compute()
        accuracy = results["accuracy"].double().cpu()
        support = results["stats"][:, -1].long().cpu()
        record = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "accuracy": [float(a) if n > 0 else math.nan for a, n in zip(accuracy.tolist(), support.tolist())],
            "support": support.tolist(),
        }
        self._history.append(record)
        self._log(pl_module, record)
        epoch_number = trainer.current_epoch + 1
        if self.log_figure_every_n_epochs and epoch_number % self.log_figure_every_n_epochs == 0:
            self._log_figures(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """The figures once more at the end of fit, after every callback's ``on_fit_end`` (loggers still open)."""
        if stage == "fit" and self._history:
            self._log_figures(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [dict(r) for r in self._history],
            "class_names": list(self.class_names),
            "discarded": dict(self._discarded),
            "interventions": dict(self._interventions),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._history = [dict(r) for r in state_dict.get("history", [])]
        if state_dict.get("class_names"):
            self.class_names = list(state_dict["class_names"])
        self._discarded = {int(e): str(reason) for e, reason in state_dict.get("discarded", {}).items()}
        self._interventions = {int(n): dict(mark) for n, mark in state_dict.get("interventions", {}).items()}

    # ---------------------------------------------------------------- internals
    def _require_metrics(self) -> MetricCollection:
        if self._metrics is None:
            raise RuntimeError("PerClassAccuracy is used before Trainer.setup; add it to Trainer(callbacks=[...]).")
        return self._metrics

    def _log(self, pl_module: LightningModule, record: dict[str, Any]) -> None:
        present = [(name, acc) for name, acc in zip(self.class_names, record["accuracy"]) if not math.isnan(acc)]
        missing = [name for name, acc in zip(self.class_names, record["accuracy"]) if math.isnan(acc)]
        if set(missing) - self._warned_missing:
            rank_zero_warn(
                f"PerClassAccuracy: no validation samples for class(es) {missing}; they are reported missing, "
                "not logged as 0 accuracy."
            )
            self._warned_missing.update(missing)
        for name, acc in present:
            pl_module.log(f"{TAG_PREFIX}/{name}", acc)
        if present:
            values = [acc for _, acc in present]
            pl_module.log(f"{TAG_PREFIX}/mean", sum(values) / len(values))
            pl_module.log(f"{TAG_PREFIX}/worst", min(values))

    def _layout(self) -> dict[str, dict[str, list[Any]]]:
        # Multiline entries take regular expressions: match each tag exactly.
        per_class = [f"^{TAG_PREFIX}/{re.escape(name)}$" for name in self.class_names]
        return {
            "per-class accuracy": {
                "validation accuracy, every class": ["Multiline", per_class],
                "validation accuracy, mean and worst class": [
                    "Multiline",
                    [f"^{TAG_PREFIX}/mean$", f"^{TAG_PREFIX}/worst$"],
                ],
            }
        }

    def _log_figures(self, trainer: Trainer) -> None:
        """Curves and heatmap to TensorBoard and as PNG files in the log folder (rank zero); a failure only warns."""
        if not trainer.is_global_zero or not self._history:
            return
        tensorboards = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not tensorboards and self._figure_dir is None:
            return
        try:
            epochs = [r["epoch"] for r in self._history]
            figures = {
                "curves": (self.curves_figure(), CURVES_FILE),
                "heatmap": (
                    accuracy_heatmap(
                        self.accuracy_matrix(), self.class_names, epochs, discarded=sorted(self._discarded)
                    ),
                    HEATMAP_FILE,
                ),
            }
            for name, (figure, file_name) in figures.items():
                if self._figure_dir is not None:
                    Path(self._figure_dir).mkdir(parents=True, exist_ok=True)
                    figure.savefig(Path(self._figure_dir) / file_name, dpi=100)
                for experiment in tensorboards:
                    experiment.add_figure(f"{TAG_PREFIX}_{name}", figure, global_step=trainer.global_step, close=False)
        except Exception as error:  # noqa: BLE001 - a figure must not stop training
            rank_zero_warn(f"PerClassAccuracy: could not draw the per-class figures: {type(error).__name__}: {error}")


def _percent(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "missing"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}%"


def _nanmean(values: Sequence[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def _nanmin(values: Sequence[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return min(present) if present else math.nan


def find_monitor(trainer: Trainer) -> PerClassAccuracy | None:
    """The trainer's :class:`PerClassAccuracy` callback, or ``None`` if it has none."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, PerClassAccuracy)), None)


def require_monitor(trainer: Trainer, who: str) -> PerClassAccuracy:
    """The trainer's :class:`PerClassAccuracy`, or a ``ValueError`` telling ``who`` needs it and how to add it."""
    monitor = find_monitor(trainer)
    if monitor is None:
        raise ValueError(
            f"{who} reads per-class validation accuracy: add lightning_pareto.PerClassAccuracy() to "
            "Trainer(callbacks=[...]) (in YAML: trainer.callbacks with class_path: PerClassAccuracy)."
        )
    return monitor
