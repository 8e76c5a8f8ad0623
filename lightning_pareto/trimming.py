"""Influence-based data trimming (seed 000, Algorithms 3 and 6): train, score, remove the most harmful, retrain.

Scores follow one convention: **higher = more harmful = removed first**.

- ``"fi"``: FI^util (:func:`~lightning_pareto.influence.local.fi_util`), exact; the paper removes
  the samples with the largest FI^util (Algorithm 3).
- ``"fi_approx"``: FI^util with both of the paper's approximations (Algorithm 6): KFSVD (K-FAC
  curvature, rank-``k`` SVD of ``d/dx d/dtheta L``) on a fraction ``alpha`` of the samples and a
  random forest predicting the rank of the rest.
- ``"iv"``: minus the influence value IV of Chhabra et al. 2024
  (:func:`~lightning_pareto.influence.influence_value`). IV is positive when up-weighting a sample
  lowers the validation loss (DESIGN.md's sign), so the most harmful samples have the *lowest* IV.
- ``"random"``: uniform scores (seeded): random trimming.

:func:`trim` runs the whole protocol of seed 000 (its Figure 6): train from an initialisation,
score, remove the top ``b``, retrain from the *same* initialisation with the same seed on the
remaining samples, and report test accuracy. Training is done by a :class:`Fitter`:
:class:`LBFGSFit` (full-batch L-BFGS to convergence, for logistic regression: the influence
measures assume the parameters sit at the minimum, and a convex model can be put there exactly) or
:class:`LightningFit` (a quiet Lightning ``Trainer`` run of :class:`~lightning_pareto.ClassifierModule`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_pareto._quiet import quiet_lightning

__all__ = [
    "METHODS",
    "Fitter",
    "LBFGSFit",
    "LightningFit",
    "ScoringOptions",
    "TrimOutcome",
    "TrimMethod",
    "TrimReport",
    "check_budget",
    "check_method",
    "corruption_precision",
    "harm_scores",
    "kept_indices",
    "select_removals",
    "trim",
]

TrimMethod = Literal["fi", "fi_approx", "iv", "random"]
METHODS: tuple[str, ...] = ("fi", "fi_approx", "iv", "random")
# Batch size of the scoring passes (no gradients are kept, so larger is only faster).
_SCORING_BATCH = 512


@dataclass(frozen=True)
class ScoringOptions:
    """How :func:`harm_scores` computes the influence methods' scores.

    Attributes:
        curvature: ``"exact"``, ``"kfac"`` or ``"ekfac"``; ``None``: ``"exact"`` for ``"fi"`` and
            ``"iv"`` (Chhabra et al. and seed 000 invert the exact Hessian), ``"kfac"`` for
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
        if self.damping is not None and not (isinstance(self.damping, (int, float)) and math.isfinite(self.damping)
                                             and self.damping >= 0):
            raise ValueError(f"damping must be None or a finite number >= 0, got {self.damping!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank (KFSVD's k) must be an int >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha (the subsampled fraction) must lie in (0, 1], got {self.alpha!r}")


def check_method(method: str) -> None:
    """Raise a ``ValueError`` naming the known methods unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def check_budget(budget: int, num_train: int | None = None) -> None:
    """Check a trimming budget: an int ``b`` with ``0 <= b < num_train``.

    Raises:
        TypeError: If ``budget`` is not an int.
        ValueError: If ``budget`` is negative, or removes every training sample.
    """
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an int (the number of samples to remove), got {budget!r}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0 (the number of samples to remove), got {budget}")
    if num_train is not None and budget >= num_train:
        raise ValueError(
            f"budget={budget} would remove the whole training set of {num_train} samples; use a budget below {num_train}"
        )


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
                model, train_loader, val_loader, curvature=curvature, damping=options.damping, modules=modules,
                fisher=fisher, seed=seed, progress=False,
            )  # fmt: skip
            return -values.to(torch.float64)
        from lightning_pareto.influence.local import fi_util

        if method == "fi":
            return fi_util(
                model, train_loader, val_loader, curvature=options.curvature or "exact", damping=options.damping,
                modules=modules, seed=seed,
            )  # fmt: skip
        return fi_util(
            model, train_loader, val_loader, curvature=options.curvature or "kfac", damping=options.damping,
            modules=modules, approx=["kfsvd", "subsample"], rank=options.rank, alpha=options.alpha, seed=seed,
        )  # fmt: skip


def select_removals(scores: Tensor, budget: int) -> Tensor:
    """The ``budget`` most harmful training samples: the largest scores, ties broken by lower index.

    Args:
        scores: Float tensor of shape ``(n,)`` from :func:`harm_scores`.
        budget: Number of samples to remove, ``0 <= budget < n``.

    Returns:
        Int64 tensor of shape ``(budget,)`` with dataset indices, most harmful first.

    Raises:
        TypeError: If ``budget`` is not an int.
        ValueError: If ``scores`` is not 1-D or ``budget`` is outside ``[0, n)``.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (n,), got {tuple(scores.shape)}")
    check_budget(budget, scores.numel())
    scores = scores.detach().cpu().to(torch.float64)
    finite = torch.isfinite(scores)
    if not bool(finite.all()):
        warnings.warn(
            f"{int((~finite).sum())} of {scores.numel()} trimming scores are not finite; they are ranked last",
            RuntimeWarning,
            stacklevel=2,
        )
    ranked = torch.where(finite, scores, torch.full_like(scores, -math.inf))
    order = torch.sort(ranked, descending=True, stable=True).indices
    return order[:budget].clone()


def corruption_precision(removed: Tensor, source: object) -> dict[str, float]:
    """Share of the removed samples that the data set corrupted on purpose.

    Args:
        removed: Int64 dataset indices of the removed training samples, shape ``(b,)``, ``b >= 1``.
        source: Anything with ``flipped_indices`` and/or ``noisy_feature_indices`` (int64 tensors
            of training indices), e.g. a :mod:`lightning_pareto.data` datamodule after ``setup()``.

    Returns:
        ``{"flipped_precision": ..., "noisy_precision": ...}`` for the attributes present and
        non-empty (empty dict when none applies or ``removed`` is empty).
    """
    precision = {}
    if removed.numel() == 0:
        return precision
    for attribute, key in (("flipped_indices", "flipped_precision"), ("noisy_feature_indices", "noisy_precision")):
        corrupted = getattr(source, attribute, None)
        if isinstance(corrupted, Tensor) and corrupted.numel():
            precision[key] = float(torch.isin(removed.cpu(), corrupted.cpu()).double().mean())
    return precision


class Fitter(ABC):
    """Trains a network in place on a training set; :func:`trim` calls it for every (re)training.

    Attributes:
        weight_decay: L2 strength of the training objective (``weight_decay / 2 * ||theta||^2``);
            :func:`trim` uses it as the curvature damping when none is given.
    """

    weight_decay: float = 0.0

    @abstractmethod
    def fit(self, net: nn.Module, train: Dataset, *, num_classes: int, seed: int) -> None:
        """Train ``net`` in place.

        Args:
            net: Classifier returning logits ``(batch, num_classes)``.
            train: Map-style dataset of ``(x, y, index)`` samples (possibly a ``Subset``).
            num_classes: Number of classes.
            seed: Seeds every random choice of the training run (batch order, dropout).
        """


class LBFGSFit(Fitter):
    """Full-batch L-BFGS (strong-Wolfe line search) on mean cross-entropy + ``weight_decay/2 ||theta||^2``.

    Deterministic and run to convergence (in float64; the parameters are cast back afterwards): the setting of the paper's logistic-regression
    experiments (Chhabra et al. fit scikit-learn's L-BFGS logistic regression), where the
    influence measures' "parameters at the minimum" assumption holds. All parameters, biases
    included, are penalised, so the objective's Hessian is the data Hessian plus ``weight_decay * I``.

    Args:
        weight_decay: L2 strength, ``>= 0`` (``> 0`` keeps separable data from diverging).
        max_iter: L-BFGS iterations.
        tolerance: Stop when the largest gradient entry is below this.

    Raises:
        ValueError: On a negative ``weight_decay``, ``max_iter < 1`` or ``tolerance <= 0``.
    """

    def __init__(self, weight_decay: float = 1e-2, max_iter: int = 500, tolerance: float = 1e-9) -> None:
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        if not (isinstance(tolerance, (int, float)) and tolerance > 0):
            raise ValueError(f"tolerance must be a number > 0, got {tolerance!r}")
        self.weight_decay, self.max_iter, self.tolerance = float(weight_decay), max_iter, float(tolerance)

    def fit(self, net: nn.Module, train: Dataset, *, num_classes: int, seed: int) -> None:
        """Minimise the full-batch objective (see :class:`Fitter`)."""
        x, y = _stack(train)
        first = next(net.parameters())
        # Solved in float64, where a tight gradient tolerance is reachable, then cast back.
        dtype, device = first.dtype, first.device
        net.to(torch.float64)
        x, y = x.to(device=device, dtype=torch.float64), y.to(device)
        parameters = [p for p in net.parameters() if p.requires_grad]
        optimizer = torch.optim.LBFGS(
            parameters, lr=1.0, max_iter=self.max_iter, tolerance_grad=self.tolerance, tolerance_change=1e-12,
            history_size=50, line_search_fn="strong_wolfe",
        )  # fmt: skip

        def closure() -> Tensor:
            optimizer.zero_grad()
            penalty = sum(p.square().sum() for p in parameters)
            loss = F.cross_entropy(net(x), y) + 0.5 * self.weight_decay * penalty
            loss.backward()
            return loss

        net.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            optimizer.step(closure)
        optimizer.zero_grad(set_to_none=True)
        net.to(dtype)


class LightningFit(Fitter):
    """Mini-batch training of :class:`~lightning_pareto.ClassifierModule` with a quiet Lightning ``Trainer``.

    No progress bar, checkpoints, logger, model summary or validation; ``seed_everything(seed)``
    before the run, so two fits with the same seed see the same batch order and dropout masks.

    Args:
        max_epochs: Training epochs.
        batch_size: Training batch size (shuffled).
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``).
        lr: Learning rate.
        weight_decay: The optimizer's L2 weight decay.
        momentum: SGD momentum (unused by Adam).
        accelerator: Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``).

    Raises:
        ValueError: On non-positive ``max_epochs``/``batch_size``/``lr``, an unknown optimizer or
            a negative ``weight_decay``.
    """

    def __init__(
        self,
        max_epochs: int = 100,
        batch_size: int = 64,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        accelerator: str = "cpu",
    ) -> None:
        for name, value in (("max_epochs", max_epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if not lr > 0 or not weight_decay >= 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got lr={lr!r}, weight_decay={weight_decay!r}")
        self.max_epochs, self.batch_size, self.optimizer = max_epochs, batch_size, optimizer
        self.lr, self.weight_decay, self.momentum, self.accelerator = float(lr), float(weight_decay), momentum, accelerator

    def _make_optimizer(self, parameters: Iterable[Tensor]) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def fit(self, net: nn.Module, train: Dataset, *, num_classes: int, seed: int) -> None:
        """Train for ``max_epochs`` epochs (see :class:`Fitter`)."""
        from lightning.pytorch import Trainer, seed_everything

        from lightning_pareto.module import ClassifierModule

        module = ClassifierModule(net, num_classes, optimizer=self._make_optimizer)
        with quiet_lightning():
            seed_everything(seed, verbose=False)
            trainer = Trainer(
                max_epochs=self.max_epochs, accelerator=self.accelerator, devices=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                limit_val_batches=0, num_sanity_val_steps=0,
            )  # fmt: skip
            trainer.fit(module, train_dataloaders=DataLoader(train, batch_size=self.batch_size, shuffle=True))


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
    """Seed 000's data-trimming protocol: train, score, remove the top ``b``, retrain, test.

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
    x_test, y_test = _stack(datamodule.test_dataset)

    initial = copy.deepcopy(net)
    started = time.perf_counter()
    trained = copy.deepcopy(initial)
    fitter.fit(trained, train_data, num_classes=num_classes, seed=seed)
    train_seconds = time.perf_counter() - started
    baseline_acc = _accuracy(trained, x_test, y_test)

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
            fitter.fit(retrained, Subset(train_data, kept_indices(len(train_data), removed).tolist()),
                       num_classes=num_classes, seed=seed)
            retrain_seconds = time.perf_counter() - started
            outcomes.append(TrimOutcome(method, budget, removed, _accuracy(retrained, x_test, y_test), score_seconds,
                                        retrain_seconds, corruption_precision(removed, datamodule)))
    return TrimReport(seed, baseline_acc, train_seconds, outcomes)


def kept_indices(num_train: int, removed: Tensor) -> Tensor:
    """The training indices not in ``removed``, ascending (int64, shape ``(num_train - len(removed),)``)."""
    keep = torch.ones(num_train, dtype=torch.bool)
    keep[removed] = False
    return keep.nonzero().squeeze(1)


def _dataset_size(loader: Iterable) -> int:
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return sum(len(batch[0]) for batch in loader)


def _stack(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """All ``(x, y)`` of a map-style dataset as two tensors (one batch of the default collate)."""
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset), shuffle=False)))
    return batch[0], batch[1]


def _accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    device = next(net.parameters()).device
    net.eval()
    with torch.no_grad():
        predicted = net(x.to(device)).argmax(dim=-1).cpu()
    return float((predicted == y).double().mean())


@contextlib.contextmanager
def _scoring_state(model: nn.Module) -> Iterator[None]:
    """Eval mode and a forked global RNG during scoring; the modes are restored afterwards."""
    modes = {module: module.training for module in model.modules()}
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        for module, training in modes.items():
            module.train(training)
