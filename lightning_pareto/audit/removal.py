"""The removal check of "What Is The Performance Ceiling of My Classifier?" (section 5.1, Figures 3-4).

For each class ``t``, remove the training samples that help ``t`` most (then those that hurt it most),
retrain from the same initialisation and seed, and record every class's test-accuracy change. Beside
it, the cumulative influence of the removed samples on every class: ``S[t, c] = sum_{i removed for t}
I[i, c]``. To first order removing them changes class ``c``'s loss by ``+S[t, c] / n``, so the
*predicted* effect on accuracy has the sign of ``-S[t, c]``; :func:`rank_correlation` is the Spearman
correlation of ``-S`` with the accuracy changes over all ``K x K`` cells (the paper reports above 0.8
for its scatter of cumulative influence against performance change).

The bookkeeping here is numpy only; the retraining is a callable the caller supplies (run in
worker processes when ``workers > 1``).
"""

from __future__ import annotations

import math
import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import spearmanr

__all__ = ["KINDS", "RemovalCheck", "rank_correlation", "removal_sets", "run_removal_check"]

Kind = Literal["beneficial", "detrimental"]
KINDS: tuple[Kind, ...] = ("beneficial", "detrimental")


def removal_sets(influence: np.ndarray, fraction: float, kind: Kind) -> list[np.ndarray]:
    """For every class, the sorted training indices to remove: its top ``fraction`` beneficial (or detrimental) samples.

    For class ``t`` the candidates are the samples with ``I[i, t] > 0`` (beneficial) or ``< 0``
    (detrimental); the ``ceil(fraction * candidates)`` with the largest ``|I[i, t]|`` are removed.

    Example:
        >>> influence = np.array([[3.0, -1.0], [1.0, -2.0], [-1.0, 4.0], [2.0, 1.0]])
        >>> [s.tolist() for s in removal_sets(influence, 0.5, "beneficial")]
        [[0, 3], [2]]
        >>> [s.tolist() for s in removal_sets(influence, 0.5, "detrimental")]
        [[2], [1]]
    """
    influence = np.asarray(influence, dtype=np.float64)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}.")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    sign = 1.0 if kind == "beneficial" else -1.0
    sets = []
    for t in range(influence.shape[1]):
        signed = sign * influence[:, t]
        candidates = np.flatnonzero(np.isfinite(signed) & (signed > 0))
        count = math.ceil(fraction * candidates.size)
        chosen = candidates[np.argsort(-signed[candidates], kind="stable")[:count]]
        sets.append(np.sort(chosen))
    return sets


def rank_correlation(cumulative: np.ndarray, change: np.ndarray) -> float:
    """Spearman correlation of the predicted effect ``-cumulative`` with the accuracy ``change`` over finite cells.

    NaN when fewer than three cells are finite or either side is constant.

    Example:
        >>> rank_correlation(np.array([[3.0, -1.0], [0.5, -2.0]]), np.array([[-0.2, 0.1], [0.0, 0.3]]))
        1.0
    """
    predicted, change = -np.asarray(cumulative, dtype=np.float64).ravel(), np.asarray(change, dtype=np.float64).ravel()
    finite = np.isfinite(predicted) & np.isfinite(change)
    if finite.sum() < 3 or np.ptp(predicted[finite]) == 0 or np.ptp(change[finite]) == 0:
        return float("nan")
    return float(spearmanr(predicted[finite], change[finite]).statistic)


@dataclass
class RemovalCheck:
    """One half of the check (beneficial or detrimental removals).

    Attributes:
        kind: ``"beneficial"`` or ``"detrimental"``.
        removed: Per target class, the removed training indices.
        cumulative: ``(K, K)``: ``[t, c]`` = summed influence on class ``c`` of the samples removed for ``t``.
        change: ``(K, K)``: ``[t, c]`` = class ``c``'s test accuracy after removing them minus the baseline's.
        spearman: :func:`rank_correlation` of ``cumulative`` and ``change``.
    """

    kind: Kind
    removed: list[np.ndarray]
    cumulative: np.ndarray
    change: np.ndarray
    spearman: float = field(init=False)

    def __post_init__(self) -> None:
        self.spearman = rank_correlation(self.cumulative, self.change)

    @property
    def diagonal_agreement(self) -> float:
        """Share of target classes whose own accuracy moved the way the paper reports (down after removing
        beneficial samples, up after removing detrimental ones); no change counts as disagreement."""
        diagonal = np.diag(self.change)
        sign = -1.0 if self.kind == "beneficial" else 1.0
        finite = np.isfinite(diagonal)
        return float(np.mean(sign * diagonal[finite] > 0)) if finite.any() else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (removed indices as lists)."""
        return {
            "kind": self.kind,
            "spearman": self.spearman,
            "diagonal_agreement": self.diagonal_agreement,
            "removed_counts": [int(s.size) for s in self.removed],
            "cumulative": self.cumulative.tolist(),
            "change": self.change.tolist(),
            "removed": [s.tolist() for s in self.removed],
        }


def _run_all(
    retrain: Callable[[np.ndarray, int], np.ndarray],
    jobs: Sequence[tuple[np.ndarray, int]],
    labels: Sequence[str],
    workers: int,
    progress: bool,
) -> list[np.ndarray]:
    """``retrain(keep, seed)`` for every job, in ``workers`` spawned processes (1: in this process), with progress."""
    results: list[np.ndarray | None] = [None] * len(jobs)

    def report(done: int, label: str) -> None:
        if progress:
            print(f"removal check: retrain {done}/{len(jobs)} done ({label})", file=sys.stderr, flush=True)

    if workers <= 1:
        for done, (number, job) in enumerate(enumerate(jobs), start=1):
            results[number] = np.asarray(retrain(*job), dtype=np.float64)
            report(done, labels[number])
    else:
        # spawn, not fork: a forked child of a process that already ran torch's thread pools can hang.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures: dict[Future, int] = {pool.submit(retrain, *job): number for number, job in enumerate(jobs)}
            for done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = np.asarray(future.result(), dtype=np.float64)
                report(done, labels[futures[future]])
    return [r for r in results if r is not None]


def run_removal_check(
    influence: np.ndarray,
    retrain: Callable[[np.ndarray, int], np.ndarray],
    *,
    fraction: float = 0.1,
    seeds: Sequence[int] = (0,),
    workers: int = 1,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, RemovalCheck]]:
    """Per seed, retrain once on all samples and once per (class, kind) without that class's removal set.

    Args:
        influence: ``(n, K)`` category-wise influence of the training samples.
        retrain: ``retrain(keep, seed) -> (K,)`` per-class test accuracy of a model trained on the
            training samples ``keep`` (sorted indices) from the initialisation and shuffling that
            ``seed`` gives. Must be picklable (a module-level function or a ``functools.partial`` of
            one) when ``workers > 1``.
        fraction: Share of each class's beneficial (detrimental) samples to remove (the paper: 0.1).
        seeds: Every removal is compared with the baseline of the same seed; changes are averaged over seeds.
        workers: Retrains run at once, each in its own process (1: one after the other, in this process).
        progress: Print a line to stderr as each retrain finishes.

    Returns:
        ``(baseline, checks)``: the baseline's ``(K,)`` per-class accuracy (mean over seeds) and a
        :class:`RemovalCheck` per kind (``"beneficial"``, ``"detrimental"``).
    """
    influence = np.asarray(influence, dtype=np.float64)
    if influence.ndim != 2:
        raise ValueError(f"influence must have shape (n, K), got {influence.shape}.")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed.")
    n, num_classes = influence.shape
    everything = np.arange(n)
    sets = {kind: removal_sets(influence, fraction, kind) for kind in KINDS}
    keeps, names = [everything], ["baseline"]
    for kind in KINDS:
        for t, removed in enumerate(sets[kind]):
            keeps.append(np.setdiff1d(everything, removed))
            names.append(f"class {t}, {kind}")
    jobs = [(keep, seed) for seed in seeds for keep in keeps]
    labels = [f"seed {seed}, {name}" for seed in seeds for name in names]
    accuracies = np.stack(_run_all(retrain, jobs, labels, workers, progress)).reshape(len(seeds), len(keeps), -1)
    changes = accuracies[:, 1:] - accuracies[:, :1]  # each seed against its own baseline
    checks = {}
    for number, kind in enumerate(KINDS):
        change = changes[:, number * num_classes : (number + 1) * num_classes].mean(axis=0)
        cumulative = np.stack([influence[removed].sum(axis=0) for removed in sets[kind]])
        checks[kind] = RemovalCheck(kind, sets[kind], cumulative, change)
    return accuracies[:, 0].mean(axis=0), checks
