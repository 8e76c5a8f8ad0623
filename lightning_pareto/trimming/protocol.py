"""The data-trimming protocol of "Enhancing Prediction Performance through Influence Measure" (its Figure 6).

:func:`trim` trains from an initialisation, scores, removes the top ``b``, retrains from the *same*
initialisation with the same seed on the remaining samples, and reports test accuracy.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from lightning_pareto.trimming._arrays import accuracy, stack
from lightning_pareto.trimming.fitters import Fitter, LBFGSFit
from lightning_pareto.trimming.scores import ScoringOptions, TrimMethod, check_method, harm_scores
from lightning_pareto.trimming.selection import check_budget, corruption_precision, kept_indices, select_removals

__all__ = ["TrimOutcome", "TrimReport", "trim"]

# Batch size of the scoring passes (no gradients are kept, so larger is only faster).
_SCORING_BATCH = 512


@dataclass(frozen=True)
class TrimOutcome:
    """One (method, budget) of :func:`trim`.

    Attributes:
        method: The scoring method.
        budget: Number of samples removed.
        removed: Int64 tensor ``(budget,)`` of removed training indices, most harmful first.
        test_acc: Test accuracy after retraining on the rest, in ``[0, 1]``.
        score_seconds: Wall time of scoring (shared by the method's budgets).
        retrain_seconds: Wall time of the retraining (0 for ``budget == 0``: that is the baseline).
        precision: :func:`corruption_precision` of ``removed`` (empty when the data has no corruption).
    """

    method: str
    budget: int
    removed: Tensor
    test_acc: float
    score_seconds: float
    retrain_seconds: float
    precision: dict[str, float]


@dataclass(frozen=True)
class TrimReport:
    """What :func:`trim` found for one seed.

    Attributes:
        seed: The seed of initialisation, training and scoring.
        baseline_acc: Test accuracy of the model trained on the whole training set.
        train_seconds: Wall time of that first training.
        outcomes: One :class:`TrimOutcome` per (method, budget), methods in the order given.
    """

    seed: int
    baseline_acc: float
    train_seconds: float
    outcomes: list[TrimOutcome]


def trim(
    net: nn.Module,
    datamodule: object,
    *,
    methods: TrimMethod | Sequence[TrimMethod],
    budgets: int | Sequence[int],
    seed: int = 0,
    fitter: Fitter | None = None,
    scoring: ScoringOptions | None = None,
) -> TrimReport:
    """The data-trimming protocol of "Enhancing Prediction Performance through Influence Measure": train, score, remove the top ``b``, retrain, test.

    ``net``'s current parameters are the initialisation of every training run (``net`` itself is
    not modified), and every run gets the same ``seed``, so a retrained model differs from the
    baseline only by the removed samples. Each method scores once, on the baseline model.

    Args:
        net: Untrained classifier (logits ``(batch, K)``), e.g. ``LogisticRegression(2, 2)`` built
            after ``torch.manual_seed(seed)``.
        datamodule: A :mod:`lightning_pareto.data` datamodule (anything with ``setup()``,
            ``num_classes`` and ``train_dataset``/``val_dataset``/``test_dataset`` of
            ``(x, y, index)`` samples); ``setup("fit")`` is called.
        methods: One method or several of ``"fi"``, ``"fi_approx"``, ``"iv"``, ``"random"``.
        budgets: One or several numbers of samples to remove, each in ``[0, n)``; 0 reports the baseline.
        seed: Seed of training, of ``"random"`` and of ``"fi_approx"``.
        fitter: How to train (default :class:`LBFGSFit`).
        scoring: Scoring options; a ``damping`` of ``None`` becomes ``fitter.weight_decay`` when that
            is positive.

    Returns:
        The :class:`TrimReport`.

    Raises:
        ValueError: On an unknown method, a budget outside ``[0, n)``, or bad scoring options.
        TypeError: If a budget is not an int.
    """
    method_list = [methods] if isinstance(methods, str) else list(methods)
    budget_list = [budgets] if isinstance(budgets, int) else list(budgets)
    if not method_list or not budget_list:
        raise ValueError("methods and budgets must each name at least one entry")
    for method in method_list:
        check_method(method)
    for budget in budget_list:
        check_budget(budget)
    fitter = fitter or LBFGSFit()
    scoring = scoring or ScoringOptions()
    if scoring.damping is None and fitter.weight_decay > 0:
        scoring = dataclasses.replace(scoring, damping=fitter.weight_decay)
    datamodule.setup("fit")
    train_data = datamodule.train_dataset
    for budget in budget_list:
        check_budget(budget, len(train_data))
    num_classes = datamodule.num_classes
    x_test, y_test = stack(datamodule.test_dataset)

    initial = copy.deepcopy(net)
    started = time.perf_counter()
    trained = copy.deepcopy(initial)
    fitter.fit(trained, train_data, num_classes=num_classes, seed=seed)
    train_seconds = time.perf_counter() - started
    baseline_acc = accuracy(trained, x_test, y_test)

    train_loader = DataLoader(train_data, batch_size=_SCORING_BATCH, shuffle=False)
    val_loader = DataLoader(datamodule.val_dataset, batch_size=_SCORING_BATCH, shuffle=False)
    outcomes = []
    for method in method_list:
        started = time.perf_counter()
        scores = harm_scores(trained, train_loader, val_loader, method, options=scoring, seed=seed)
        score_seconds = time.perf_counter() - started
        for budget in budget_list:
            removed = select_removals(scores, budget)
            if budget == 0:
                outcomes.append(TrimOutcome(method, 0, removed, baseline_acc, score_seconds, 0.0, {}))
                continue
            started = time.perf_counter()
            retrained = copy.deepcopy(initial)
            fitter.fit(
                retrained,
                Subset(train_data, kept_indices(len(train_data), removed).tolist()),
                num_classes=num_classes,
                seed=seed,
            )
            retrain_seconds = time.perf_counter() - started
            outcomes.append(
                TrimOutcome(
                    method,
                    budget,
                    removed,
                    accuracy(retrained, x_test, y_test),
                    score_seconds,
                    retrain_seconds,
                    corruption_precision(removed, datamodule),
                )
            )
    return TrimReport(seed, baseline_acc, train_seconds, outcomes)
