"""The influence and weight-search options that ``DirectImprovement`` and ``CourseCorrection`` share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from lightning_pareto.influence._precision import MatmulPrecision, check_matmul_precision
from lightning_pareto.pareto._fitness import TRIAL_SCREEN_RATIO

__all__ = ["InterventionSettings"]

CurvatureName = Literal["ekfac", "kfac", "exact"]
FitnessMode = Literal["predicted", "trial"]
PresetName = Literal["fast", "paper"]
CURVATURES: tuple[str, ...] = get_args(CurvatureName)
FITNESS_MODES: tuple[str, ...] = get_args(FitnessMode)
PRESETS: tuple[str, ...] = get_args(PresetName)


@dataclass(frozen=True)
class InterventionSettings:
    """How an intervention computes influence and searches weights; both callbacks take these as keywords.

    ``DirectImprovement(targets=..., at_epochs=..., curvature="kfac", trust=0.3)`` and, in YAML, the same
    keys beside the callback's own under ``init_args``.

    Attributes:
        curvature: Influence curvature: ``"ekfac"``, ``"kfac"`` or ``"exact"`` (small models only).
        damping: Curvature damping ``lambda >= 0``; ``None`` picks 0.1 times the curvature's largest
            eigenvalue.
        curvature_samples: Fit the curvature on about this many training samples (a seeded subset; every
            sample is still scored), ``"auto"`` (default: 10,000 when the training set is larger, else
            all) or ``None`` for all. Speeds up large training sets.
        modules: Layers the influence differentiates, e.g. ``["head"]`` for the last layer only (names in
            ``pl_module.net``); ``None`` uses every Linear/Conv2d layer.
        fitness: How the GA scores a candidate: ``"predicted"`` (first-order gains, no training, fast) or
            ``"trial"`` (the paper's: train from the same state with the candidate weights and measure
            per-class validation accuracy; Course Correction compares with the detrimental epoch).
        trial_batches: Batches per trial with ``fitness="trial"``: ``"auto"`` (default) trains a quarter of
            a training epoch's batches (rounded up, at least one), so a trial costs about a quarter epoch;
            an integer trains that many batches; ``None`` a full epoch (the paper's).
        trial_screen: With ``fitness="trial"``, a candidate whose first-order predicted fitness is below
            this fraction (default 0.5) of the best trialled candidate's is not trained (it cannot win);
            ``None`` trains every candidate, as the paper does.
        preset: GA size: ``"fast"`` (a few evaluations) or ``"paper"`` (20 generations of 24).
        w_min: Smallest sample weight, in ``[0, 1]`` (0 lets a sample be dropped).
        w_max: Largest sample weight, at least 1.
        trust: Trust radius: the mean ``|w - 1|`` allowed (the first-order prediction holds near 1).
            ``DirectImprovement`` defaults to 0.2, ``CourseCorrection`` to 0.5.
        time_budget: Wall-clock seconds for one weight search, or ``None`` for no limit.
        seed: Seed of the search and of the trial epochs.
        log_figures: Log the ceiling figure, influence scatter and weights histogram to TensorBoard.
        influence_batch_size: Batch size of the influence passes.
        matmul_precision: ``torch.set_float32_matmul_precision`` during the influence passes only (the
            training keeps its own): ``"medium"`` (default) lets their float32 products use bfloat16
            internally where the hardware has it fast (oneDNN on CPUs with AMX, CUDA), scores
            agreeing with ``"highest"`` at Spearman 0.999; ``"highest"`` for full float32; ``None``
            keeps the run's setting.

    Raises:
        ValueError: If an option is out of range; the message names the argument.
        TypeError: If an option has the wrong type.
    """

    curvature: CurvatureName = "ekfac"
    damping: float | None = None
    curvature_samples: int | Literal["auto"] | None = "auto"
    modules: Sequence[str] | None = None
    fitness: FitnessMode = "predicted"
    trial_batches: int | Literal["auto"] | None = "auto"
    trial_screen: float | None = TRIAL_SCREEN_RATIO
    preset: PresetName = "fast"
    w_min: float = 0.0
    w_max: float = 3.0
    trust: float = 0.5
    time_budget: float | None = None
    seed: int = 0
    log_figures: bool = True
    influence_batch_size: int = 256
    matmul_precision: MatmulPrecision | None = "medium"

    def __post_init__(self) -> None:
        if self.curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {self.curvature!r}.")
        if self.damping is not None and not (
            _is_number(self.damping) and math.isfinite(self.damping) and self.damping >= 0
        ):
            raise ValueError(f"damping must be None (automatic) or a finite number >= 0, got {self.damping!r}.")
        if self.curvature_samples not in (None, "auto") and not (
            _is_int(self.curvature_samples) and self.curvature_samples >= 1
        ):
            raise ValueError(
                "curvature_samples must be 'auto', None (every sample) or a positive integer, "
                f"got {self.curvature_samples!r}."
            )
        if self.modules is not None:
            if isinstance(self.modules, str) or not all(isinstance(m, str) for m in self.modules) or not self.modules:
                raise TypeError(
                    f"modules must be None or a non-empty list of layer names such as ['head'], got {self.modules!r}."
                )
            object.__setattr__(self, "modules", tuple(self.modules))  # frozen: a list would stay mutable
        if self.fitness not in FITNESS_MODES:
            raise ValueError(f"fitness must be one of {FITNESS_MODES}, got {self.fitness!r}.")
        if self.trial_batches not in (None, "auto") and not (_is_int(self.trial_batches) and self.trial_batches >= 1):
            raise ValueError(
                "trial_batches must be 'auto' (a quarter epoch), None (a full epoch) or a positive integer, "
                f"got {self.trial_batches!r}."
            )
        if self.trial_screen is not None and not (_is_number(self.trial_screen) and 0 < self.trial_screen <= 1):
            raise ValueError(
                f"trial_screen must be None (train every candidate) or a fraction in (0, 1], got {self.trial_screen!r}."
            )
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}.")
        if not (_is_number(self.w_min) and 0.0 <= self.w_min <= 1.0):
            raise ValueError(f"w_min must lie in [0, 1] so that uniform weights stay allowed, got {self.w_min!r}.")
        if not (_is_number(self.w_max) and math.isfinite(self.w_max) and self.w_max >= 1.0):
            raise ValueError(
                f"w_max must be a finite number >= 1 so that uniform weights stay allowed, got {self.w_max!r}."
            )
        if not (_is_number(self.trust) and math.isfinite(self.trust) and self.trust > 0):
            raise ValueError(f"trust must be a finite number > 0 (the allowed mean |w - 1|), got {self.trust!r}.")
        if self.time_budget is not None and not (_is_number(self.time_budget) and self.time_budget > 0):
            raise ValueError(f"time_budget must be None or a number of seconds > 0, got {self.time_budget!r}.")
        if not _is_int(self.seed):
            raise TypeError(f"seed must be an integer, got {self.seed!r}.")
        if not _is_int(self.influence_batch_size) or self.influence_batch_size < 1:
            raise ValueError(f"influence_batch_size must be a positive integer, got {self.influence_batch_size!r}.")
        check_matmul_precision(self.matmul_precision)

    @property
    def module_names(self) -> list[str] | None:
        """``modules`` as the influence engine takes it (a list, or ``None`` for every supported layer)."""
        return None if self.modules is None else list(self.modules)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
