"""The pool-based acquisition loop of "Enhancing Prediction Performance through Influence Measure" (Algorithms 4 and 8).

Round 0 trains on the initial labelled set and tests. Every later round scores the unlabelled pool
with the model of the previous round, "queries" the labels of the top ``acquisition_size`` points
through a labelling function (in a benchmark: the known labels), retrains with a fresh quiet
``Trainer`` (from the stored initial weights, or continuing from the current ones) and tests.

Scoring runs over the pool in batches of ``pool_batch_size``; strategies keep nothing quadratic in
the pool (FI^active's pairs are reduced chunk by chunk).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto._quiet import fit_quietly
from lightning_pareto.active.strategies import Strategy
from lightning_pareto.data.indexed import IndexedDataset
from lightning_pareto.trimming._arrays import accuracy
from lightning_pareto.trimming.selection import top_scores

__all__ = ["LabelFunction", "RoundResult", "check_plan", "random_initial_pool", "run_active_learning"]

LabelFunction = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class RoundResult:
    """One round of :func:`run_active_learning`.

    Attributes:
        round: ``0`` for the initial labelled set, ``r`` after ``r`` acquisitions.
        n_labeled: Size of the labelled set the model was trained on.
        test_acc: Test accuracy of that model, in ``[0, 1]``.
        seconds: Wall time of the acquisition that completed this labelled set (scoring the pool
            and choosing the top points; ``0.0`` in round 0): the cost the FI paper's Table 9 compares.
        train_seconds: Wall time of this round's training.
        queried: Int64 pool positions labelled by that acquisition, best score first (empty in round 0).
    """

    round: int
    n_labeled: int
    test_acc: float
    seconds: float
    train_seconds: float
    queried: Tensor


def random_initial_pool(pool_size: int, initial_size: int, seed: int) -> Tensor:
    """A uniformly drawn initial labelled set.

    Args:
        pool_size: Number of pool points ``N``.
        initial_size: Number to draw, ``1 <= initial_size < N``.
        seed: Seed of the draw.

    Returns:
        Sorted int64 tensor of ``initial_size`` distinct positions in ``[0, N)``.

    Raises:
        ValueError: If ``initial_size`` is not in ``[1, N)``.
    """
    if isinstance(initial_size, bool) or not isinstance(initial_size, int) or not 1 <= initial_size < pool_size:
        raise ValueError(
            f"initial_size must be an int in [1, {pool_size}) for a pool of {pool_size} points, got {initial_size!r}"
        )
    order = torch.randperm(pool_size, generator=torch.Generator().manual_seed(seed))
    return order[:initial_size].sort().values


def run_active_learning(
    module: LightningModule,
    strategy: Strategy,
    pool: Tensor,
    label_fn: LabelFunction,
    test_arrays: tuple[Tensor, Tensor],
    *,
    initial: Tensor,
    acquisition_size: int,
    rounds: int,
    val_arrays: tuple[Tensor, Tensor] | None = None,
    num_classes: int | None = None,
    max_epochs: int = 50,
    batch_size: int = 64,
    pool_batch_size: int = 512,
    restart: bool = True,
    trainer_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    on_round: Callable[[RoundResult], None] | None = None,
) -> list[RoundResult]:
    """Run ``rounds`` acquisitions of ``acquisition_size`` points each and test after every training.

    Args:
        module: A LightningModule classifier returning logits (e.g.
            :class:`~lightning_pareto.ClassifierModule`), trained on batches ``(x, y, index)``. It is
            trained in place; its weights when the call starts are the "initial weights".
        strategy: Scores the unlabelled pool (higher = query first).
        pool: Inputs of every pool point ``(N, ...)``: the initial labelled set and the unlabelled pool.
        label_fn: The oracle: int64 pool positions ``(m,)`` -> int64 labels ``(m,)`` in ``[0, K)``.
        test_arrays: ``(X, y)`` test inputs and labels.
        initial: Int64 pool positions of the initial labelled set (see :func:`random_initial_pool`).
        acquisition_size: Points queried per round ``N_acq >= 1``.
        rounds: Number of acquisitions ``>= 1``; ``rounds * acquisition_size`` must not exceed the
            unlabelled pool.
        val_arrays: ``(X, y)`` validation data, needed by strategies with ``needs_validation`` (``"iv"``).
        num_classes: ``K``; default ``module.num_classes``.
        max_epochs: Training epochs per round.
        batch_size: Training batch size (shuffled, seeded).
        pool_batch_size: Batch size of every scoring and test pass.
        restart: ``True``: every round trains from the initial weights (the paper's retraining);
            ``False``: continue from the previous round's weights. The optimizer is always new.
        trainer_kwargs: Extra ``Trainer`` arguments (e.g. ``{"accelerator": "gpu"}``); the loop
            sets ``max_epochs`` and switches off logging, checkpoints, progress bars and validation.
        seed: Seeds training (``seed_everything(seed + round)``) and each round's strategy.
        on_round: Called with every :class:`RoundResult` as soon as it is complete.

    Returns:
        ``rounds + 1`` results, round 0 first.

    Raises:
        ValueError: Before any training, on ``rounds < 1``, ``acquisition_size < 1``, an
            acquisition size larger than the unlabelled pool, more rounds than the pool can
            supply, repeated or out-of-range ``initial`` positions, missing ``val_arrays`` for a
            strategy that needs them, labels outside ``[0, K)``, or a model the strategy rejects
            (``"bald"`` without dropout).
        TypeError: On a ``strategy`` that is not a :class:`Strategy`.

    Warns:
        UserWarning: If the initial labelled set lacks some classes.
    """
    initial = torch.as_tensor(initial)
    num_classes = check_plan(module, strategy, pool, initial, acquisition_size, rounds, val_arrays, num_classes)
    for name, value in (("max_epochs", max_epochs), ("batch_size", batch_size), ("pool_batch_size", pool_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    x_test, y_test = test_arrays
    if len(x_test) != len(y_test) or len(x_test) == 0:
        raise ValueError(f"test_arrays must be (X, y) of one non-empty length, got {len(x_test)} and {len(y_test)}")

    labeled = initial.to(torch.int64).cpu()
    labels = _ask(label_fn, labeled, num_classes)
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        warnings.warn(
            f"the initial labelled set of {len(labeled)} points has no sample of classes {missing}; the first model "
            "cannot predict them (draw a larger or another initial set if that is not intended)",
            UserWarning,
            stacklevel=2,
        )
    unlabeled = _complement(len(pool), labeled)
    val_loader = None
    if val_arrays is not None:
        val_loader = DataLoader(IndexedDataset(TensorDataset(*val_arrays)), batch_size=pool_batch_size)
    initial_state = copy.deepcopy(module.state_dict())
    results: list[RoundResult] = []
    for round_number in range(rounds + 1):
        queried = torch.empty(0, dtype=torch.int64)
        seconds = 0.0
        if round_number > 0:
            started = time.perf_counter()
            scores = strategy.score(
                module,
                DataLoader(TensorDataset(pool[unlabeled]), batch_size=pool_batch_size),
                DataLoader(IndexedDataset(TensorDataset(pool[labeled], labels)), batch_size=pool_batch_size),
                val_loader=val_loader,
                seed=seed * 1_000_003 + round_number,
            )
            queried = unlabeled[_top(scores, acquisition_size, len(unlabeled), strategy.name)]
            seconds = time.perf_counter() - started
            labeled = torch.cat([labeled, queried])
            labels = torch.cat([labels, _ask(label_fn, queried, num_classes)])
            unlabeled = unlabeled[~torch.isin(unlabeled, queried)]
        if restart:
            module.load_state_dict(initial_state)
        started = time.perf_counter()
        loader = DataLoader(
            IndexedDataset(TensorDataset(pool[labeled], labels)),
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed + round_number),
        )
        device = fit_quietly(
            module, loader, max_epochs=max_epochs, seed=seed + round_number, trainer_kwargs=trainer_kwargs
        )
        train_seconds = time.perf_counter() - started
        module.to(device)  # score and test where the Trainer trained
        result = RoundResult(
            round_number,
            len(labeled),
            accuracy(module, x_test, y_test, pool_batch_size),
            seconds,
            train_seconds,
            queried,
        )
        results.append(result)
        if on_round is not None:
            on_round(result)
    return results


def check_plan(
    module: LightningModule,
    strategy: Strategy,
    pool: Tensor,
    initial: Tensor,
    acquisition_size: int,
    rounds: int,
    val_arrays: tuple[Tensor, Tensor] | None = None,
    num_classes: int | None = None,
) -> int:
    """Check an acquisition plan without training: what :func:`run_active_learning` checks first.

    Args:
        module: The classifier to be trained.
        strategy: The acquisition strategy.
        pool: Pool inputs ``(N, ...)``.
        initial: Int64 pool positions of the initial labelled set.
        acquisition_size: Points queried per round.
        rounds: Number of acquisitions.
        val_arrays: Validation data, or ``None``.
        num_classes: ``K``; default ``module.num_classes``.

    Returns:
        ``K``.

    Raises:
        ValueError: On any of the problems listed in :func:`run_active_learning`, except labels.
        TypeError: On a ``strategy`` that is not a :class:`Strategy`.
    """
    initial = torch.as_tensor(initial)
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a Strategy (see lightning_pareto.active.make_strategy), got {strategy!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1 (the number of acquisitions), got {rounds!r}")
    if isinstance(acquisition_size, bool) or not isinstance(acquisition_size, int) or acquisition_size < 1:
        raise ValueError(f"acquisition_size must be an int >= 1, got {acquisition_size!r}")
    if initial.ndim != 1 or initial.numel() == 0 or initial.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"initial must be a non-empty 1-D int tensor of pool positions, got {tuple(initial.shape)}")
    if len(torch.unique(initial)) != len(initial) or int(initial.min()) < 0 or int(initial.max()) >= len(pool):
        raise ValueError(f"initial must hold distinct pool positions in [0, {len(pool)})")
    available = len(pool) - len(initial)
    if acquisition_size > available:
        raise ValueError(
            f"acquisition_size={acquisition_size} is larger than the unlabelled pool ({available} points = "
            f"{len(pool)} in the pool - {len(initial)} initially labelled); lower acquisition_size or enlarge the pool"
        )
    if rounds * acquisition_size > available:
        raise ValueError(
            f"rounds={rounds} x acquisition_size={acquisition_size} = {rounds * acquisition_size} exceeds the "
            f"unlabelled pool of {available} points; use at most {available // acquisition_size} rounds"
        )
    if strategy.needs_validation and val_arrays is None:
        raise ValueError(f"strategy {strategy.name!r} needs a validation set: pass val_arrays=(X_val, y_val)")
    strategy.check(module)
    num_classes = getattr(module, "num_classes", None) if num_classes is None else num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (or the module must have num_classes), got {num_classes!r}")
    return num_classes


def _ask(label_fn: LabelFunction, positions: Tensor, num_classes: int) -> Tensor:
    """The oracle's labels for ``positions``, checked."""
    labels = torch.as_tensor(label_fn(positions))
    if labels.shape != positions.shape or labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"label_fn must return int labels of shape {tuple(positions.shape)}, "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"label_fn returned labels outside [0, {num_classes})")
    return labels.to(torch.int64).cpu()


def _complement(size: int, taken: Tensor) -> Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[taken] = False
    return torch.nonzero(keep).flatten()


def _top(scores: Tensor, count: int, pool_size: int, name: str) -> Tensor:
    """Positions (into the unlabelled pool) of the ``count`` largest scores; ties to the lower position."""
    scores = torch.as_tensor(scores)
    if scores.shape != (pool_size,):
        raise ValueError(f"strategy {name!r} returned scores of shape {tuple(scores.shape)}, expected ({pool_size},)")
    return top_scores(scores, count, what=f"scores of strategy {name!r} (queried last)")
