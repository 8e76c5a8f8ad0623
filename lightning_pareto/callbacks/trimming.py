"""``InfluenceTrimming``: remove the most harmful training samples at a chosen epoch.

"Enhancing Prediction Performance through Influence Measure", Algorithm 3.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_pareto._run_data import has_validation_data, train_collate, train_dataset, validation_batches
from lightning_pareto.trimming import (
    ScoringOptions,
    TrimMethod,
    check_budget,
    check_method,
    corruption_precision,
    harm_scores,
    select_removals,
)
from lightning_pareto.weighting import require_indexed_batches, require_sample_weights, require_single_weight_writer

__all__ = ["InfluenceTrimming"]


class InfluenceTrimming(Callback):
    """At the start of epoch ``at_epoch``, score the training samples and remove the ``budget`` most harmful.

    Removal goes through the sample-weight contract: removed samples get weight 0 and the others
    are scaled so the total weight is unchanged (all ones become ``n / (n - b)``, mean one), so a
    full-batch gradient equals the mean-loss gradient of the remaining samples exactly. The
    weights persist for the rest of training and in checkpoints (the module's weight store).

    Scores come from :func:`~lightning_pareto.trimming.harm_scores` on the module in eval mode,
    over the training set in index order and the trainer's validation data; the global random
    state is not consumed, so the rest of the run is as if it had trained on the subset from
    then on. Logged at the trimming step: ``trim/removed`` (count), ``trim/score_seconds`` and, when
    the datamodule exposes ``flipped_indices`` / ``noisy_feature_indices``, ``trim/flipped_precision``
    / ``trim/noisy_precision`` (share of removed samples that were corrupted); with a TensorBoard
    logger also the text ``trim/removed_indices``. The indices are kept in :attr:`removed`.

    Args:
        method: ``"fi"``, ``"fi_approx"``, ``"iv"`` or ``"random"``.
        budget: Number of training samples to remove, ``0 <= budget < n``.
        at_epoch: Epoch (0-based) at whose start the samples are removed. After a resume past it
            without this callback's state, trimming happens at the first epoch started.
        curvature: See :class:`~lightning_pareto.trimming.ScoringOptions`.
        damping: See :class:`~lightning_pareto.trimming.ScoringOptions`.
        modules: Layers, named within the LightningModule (e.g. ``["net.head"]`` for
            :class:`~lightning_pareto.ClassifierModule`'s last layer).
        fisher: See :class:`~lightning_pareto.trimming.ScoringOptions`.
        rank: KFSVD rank ``k >= 1`` (``"fi_approx"``).
        alpha: Fraction scored exactly by ``"fi_approx"``, in ``(0, 1]``.
        seed: Seed of ``"random"`` and ``"fi_approx"``.
        batch_size: Batch size of the scoring passes.

    Raises:
        ValueError: On an unknown method, ``budget < 0``, ``at_epoch < 0``, ``rank < 1`` or ``alpha``
            outside ``(0, 1]`` (at construction); at ``setup``: a budget that is not below the
            training-set size, or no validation data for an influence method.
        TypeError: At ``setup``, if the module has no ``sample_weights`` store.

    Example:
        >>> trimming = InfluenceTrimming(method="iv", budget=20, at_epoch=5, curvature="ekfac")
    """

    writes_sample_weights = True

    def __init__(
        self,
        method: TrimMethod = "fi",
        budget: int = 10,
        at_epoch: int = 1,
        *,
        curvature: str | None = None,
        damping: float | None = None,
        modules: Sequence[str] | None = None,
        fisher: str | None = None,
        rank: int = 8,
        alpha: float = 0.2,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        check_method(method)
        check_budget(budget)
        for name, value, low in (("at_epoch", at_epoch, 0), ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.options = ScoringOptions(
            curvature=curvature,
            damping=damping,
            modules=None if modules is None else list(modules),
            fisher=fisher,
            rank=rank,
            alpha=alpha,
        )
        self.method, self.budget, self.at_epoch, self.seed, self.batch_size = method, budget, at_epoch, seed, batch_size
        self.removed: Tensor | None = None

    @property
    def done(self) -> bool:
        """Whether the samples have been removed in this run."""
        return self.removed is not None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the module, the batches and the budget before training starts."""
        if stage != "fit":
            return
        require_sample_weights(pl_module, "InfluenceTrimming")
        require_indexed_batches(trainer, "InfluenceTrimming")
        require_single_weight_writer(trainer, self, "InfluenceTrimming")
        dataset = train_dataset(trainer)
        if dataset is not None:
            check_budget(self.budget, len(dataset))
        if self.method != "random" and not has_validation_data(trainer):
            raise ValueError(
                f"InfluenceTrimming(method={self.method!r}) scores samples against the validation loss, but the "
                "Trainer has no validation data: pass val_dataloaders to fit() (or give the datamodule a "
                "val_dataloader), or use method='random'."
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Score and remove the samples at the first epoch start at or after ``at_epoch``."""
        if self.done or trainer.current_epoch < self.at_epoch or self.budget == 0:
            return
        dataset = train_dataset(trainer)
        if dataset is None:
            raise RuntimeError("InfluenceTrimming found no training data to score")
        started = time.perf_counter()
        train_loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=train_collate(trainer))
        scores = harm_scores(
            pl_module, train_loader, validation_batches(trainer), self.method, options=self.options, seed=self.seed
        )
        removed = select_removals(scores, self.budget)
        seconds = time.perf_counter() - started
        store = require_sample_weights(pl_module, "InfluenceTrimming")
        store.set(_trimmed_weights(store.weights, len(dataset), removed))
        self.removed = removed
        metrics = {"trim/removed": float(removed.numel()), "trim/score_seconds": seconds}
        metrics.update(
            {f"trim/{key}": value for key, value in corruption_precision(removed, trainer.datamodule).items()}
        )
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(
                    "trim/removed_indices", ", ".join(map(str, removed.tolist())), trainer.global_step
                )
        rank_zero_info(
            f"InfluenceTrimming: removed {removed.numel()} of {len(dataset)} training samples by {self.method} "
            f"at epoch {trainer.current_epoch} ({seconds:.2f} s)"
        )

    def state_dict(self) -> dict[str, Any]:
        """The removed indices (``None`` before trimming)."""
        return {"removed": None if self.removed is None else self.removed.tolist()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the removed indices, so a resumed run does not trim again."""
        removed = state_dict.get("removed")
        self.removed = None if removed is None else torch.tensor(removed, dtype=torch.int64)


def _trimmed_weights(current: Tensor | None, num_train: int, removed: Tensor) -> Tensor:
    """Zero the removed samples' weights and rescale the rest to keep the total weight."""
    weights = torch.ones(num_train) if current is None else current.detach().float().cpu().clone()
    total = weights.sum()
    weights[removed] = 0.0
    remaining = weights.sum()
    return weights * (total / remaining) if remaining > 0 else weights
