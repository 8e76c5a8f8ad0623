"""Trimming scores: how harmful each training sample is (higher = more harmful = removed first).

- ``"fi"``: FI^util of "Enhancing Prediction Performance through Influence Measure"
  (:func:`~lightning_pareto.influence.fi_util`), exact; the paper removes the samples with the
  largest FI^util (Algorithm 3).
- ``"fi_approx"``: FI^util with both of the paper's approximations (Algorithm 6): KFSVD (K-FAC
  curvature, rank-``k`` SVD of ``d/dx d/dtheta L``) on a fraction ``alpha`` of the samples and a
  random forest predicting the rank of the rest.
- ``"iv"``: minus the influence value IV of Chhabra et al. 2024
  (:func:`~lightning_pareto.influence.influence_value`). IV is positive when up-weighting a sample
  lowers the validation loss (the package's influence sign), so the most harmful samples have the
  *lowest* IV.
- ``"random"``: uniform scores (seeded): random trimming.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_pareto._modes import eval_mode

__all__ = ["METHODS", "ScoringOptions", "TrimMethod", "check_method", "harm_scores"]

TrimMethod = Literal["fi", "fi_approx", "iv", "random"]
METHODS: tuple[str, ...] = ("fi", "fi_approx", "iv", "random")


@dataclass(frozen=True)
class ScoringOptions:
    """How :func:`harm_scores` computes the influence methods' scores.

    Attributes:
        curvature: ``"exact"``, ``"kfac"`` or ``"ekfac"``; ``None``: ``"exact"`` for ``"fi"`` and
            ``"iv"`` (Chhabra et al. and the FI paper invert the exact Hessian), ``"kfac"`` for
            ``"fi_approx"`` (Algorithm 5's K-FAC).
        damping: Added to the curvature's diagonal; ``None``: FI's exact curvature is
            pseudo-inverted and the other cases use the influence engine's default damping.
            :func:`trim` replaces ``None`` by its fitter's ``weight_decay`` when that is positive,
            which makes the damped curvature the Hessian of the objective actually minimised.
        modules: ``None`` (every Linear/Conv2d; FI perturbs the model's input) or the qualified
            name of the layer producing the logits, e.g. ``["head"]`` (``["net.head"]`` for a
            :class:`~lightning_pareto.ClassifierModule`): the last layer only, FI perturbing its input.
        fisher: IV's curvature matrix (``"empirical"``, ``"sampled"`` or ``"ggn"``); ``None``:
            ``"ggn"`` with the exact curvature (the Hessian, for softmax regression), ``"sampled"``
            with K-FAC/EKFAC (whose expectation is the GGN).
        rank: KFSVD's truncated-SVD rank ``k >= 1`` for ``"fi_approx"``.
        alpha: Fraction of training samples scored exactly by ``"fi_approx"``, in ``(0, 1]``.

    Raises:
        ValueError: On an unknown ``curvature``/``fisher``, ``rank < 1``, ``alpha`` outside
            ``(0, 1]`` or a negative ``damping``.
    """

    curvature: Literal["exact", "kfac", "ekfac"] | None = None
    damping: float | None = None
    modules: list[str] | None = None
    fisher: Literal["empirical", "sampled", "ggn"] | None = None
    rank: int = 8
    alpha: float = 0.2

    def __post_init__(self) -> None:
        if self.curvature not in (None, "exact", "kfac", "ekfac"):
            raise ValueError(f"curvature must be None, 'exact', 'kfac' or 'ekfac', got {self.curvature!r}")
        if self.fisher not in (None, "empirical", "sampled", "ggn"):
            raise ValueError(f"fisher must be None, 'empirical', 'sampled' or 'ggn', got {self.fisher!r}")
        if self.damping is not None and not (
            isinstance(self.damping, (int, float)) and math.isfinite(self.damping) and self.damping >= 0
        ):
            raise ValueError(f"damping must be None or a finite number >= 0, got {self.damping!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank (KFSVD's k) must be an int >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha (the subsampled fraction) must lie in (0, 1], got {self.alpha!r}")


def check_method(method: str) -> None:
    """Raise a ``ValueError`` naming the known methods unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def harm_scores(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    method: TrimMethod,
    *,
    options: ScoringOptions | None = None,
    seed: int = 0,
) -> Tensor:
    """Score every training sample for trimming: higher = more harmful = removed first.

    The model is scored in eval mode (its modes are restored afterwards) and the global random
    state is left untouched, so scoring does not change a training run's randomness.

    Args:
        model: Trained classifier returning logits ``(batch, K)``.
        train_loader: Training batches ``(x, y, index)`` (or ``(x, y)`` in a fixed order), each
            sample once.
        val_loader: Validation batches ``(x, y)`` or ``(x, y, index)``; unused by ``"random"``.
        method: ``"fi"``, ``"fi_approx"``, ``"iv"`` or ``"random"`` (see the module docstring).
        options: Curvature, damping, layers and the approximations' ``rank``/``alpha``.
        seed: Seeds ``"random"`` and ``"fi_approx"``'s subsample, forest and SVD start.

    Returns:
        Float64 CPU tensor of shape ``(n,)``, ``n = len(train_loader.dataset)``, row ``i`` = dataset
        index ``i``. Non-finite entries (reported by the influence functions) are left as they are;
        :func:`select_removals` never prefers them.

    Raises:
        ValueError: On an unknown ``method`` or bad options.
    """
    check_method(method)
    options = options or ScoringOptions()
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(_dataset_size(train_loader), generator=generator, dtype=torch.float64)
    modules = list(options.modules) if options.modules is not None else None
    with _scoring_state(model):
        if method == "iv":
            from lightning_pareto.influence import influence_value

            curvature = options.curvature or "exact"
            fisher = options.fisher or ("ggn" if curvature == "exact" else "sampled")
            values = influence_value(
                model,
                train_loader,
                val_loader,
                curvature=curvature,
                damping=options.damping,
                modules=modules,
                fisher=fisher,
                seed=seed,
                progress=False,
            )
            return -values.to(torch.float64)
        from lightning_pareto.influence.local import fi_util

        if method == "fi":
            return fi_util(
                model,
                train_loader,
                val_loader,
                curvature=options.curvature or "exact",
                damping=options.damping,
                modules=modules,
                seed=seed,
            )
        return fi_util(
            model,
            train_loader,
            val_loader,
            curvature=options.curvature or "kfac",
            damping=options.damping,
            modules=modules,
            approx=["kfsvd", "subsample"],
            rank=options.rank,
            alpha=options.alpha,
            seed=seed,
        )


def _dataset_size(loader: Iterable) -> int:
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return sum(len(batch[0]) for batch in loader)


@contextlib.contextmanager
def _scoring_state(model: nn.Module) -> Iterator[None]:
    """Eval mode and a forked global RNG during scoring, so scoring leaves a run's randomness alone."""
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        yield
