"""Acquisition strategies for pool-based active learning: one small interface, seven strategies.

Every strategy scores the unlabelled pool with :meth:`Strategy.score`; **higher = query first**.

- ``"fi"``: FI^active of "Enhancing Prediction Performance through Influence Measure"
  (:func:`~lightning_pareto.influence.fi_active`), exact.
- ``"fi_approx"``: FI^active with KFSVD and pool subsampling plus a random forest (Algorithm 8).
- ``"iv"``: the influence value of Chhabra et al. 2024, recomputed every round (the FI paper's fair
  variant): IV of the labelled samples, a regression tree from their inputs to IV (Chhabra et al.'s
  influence estimator), and the tree's prediction for the pool; the largest predicted IV (the
  points predicted to lower the validation loss most) are queried first.
- ``"bald"``: the mutual information between prediction and parameters under MC dropout (Gal et al. 2017).
- ``"entropy"``: predictive entropy.
- ``"margin"``: minus the gap between the two most probable classes.
- ``"random"``: uniform scores (seeded).

The closed-form parts (:func:`entropy_scores`, :func:`margin_scores`, :func:`bald_scores`) work on
probability tensors and are usable on their own.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lightning_pareto.active._pool import dropout_layers, pool_inputs, pool_probabilities, scoring_mode
from lightning_pareto.influence.batches import unpack_batch

__all__ = [
    "BALD",
    "STRATEGIES",
    "EntropySampling",
    "FIActive",
    "FIActiveApprox",
    "InfluenceValueSampling",
    "MarginSampling",
    "RandomSampling",
    "Strategy",
    "bald_scores",
    "entropy_scores",
    "make_strategy",
    "margin_scores",
]


def entropy_scores(probs: Tensor) -> Tensor:
    """Predictive entropy ``-sum_c p_c log p_c`` (natural log, ``0 log 0 = 0``).

    Args:
        probs: Probabilities ``(N, K)``, rows summing to one.

    Returns:
        Tensor ``(N,)`` of the dtype of ``probs``, in ``[0, log K]``.
    """
    return -torch.special.xlogy(probs, probs).sum(-1)


def margin_scores(probs: Tensor) -> Tensor:
    """Minus the margin between the two most probable classes: ``p_(2) - p_(1)`` (``<= 0``; 0 = a tie).

    Args:
        probs: Probabilities ``(N, K)``, ``K >= 2``.

    Returns:
        Tensor ``(N,)`` of the dtype of ``probs``, in ``[-1, 0]``.
    """
    top = probs.topk(2, dim=-1).values
    return top[:, 1] - top[:, 0]


def bald_scores(probs: Tensor) -> Tensor:
    """BALD: ``H[mean_t p_t] - mean_t H[p_t]``, the mutual information of label and parameters.

    Args:
        probs: MC-dropout probabilities ``(T, N, K)`` (``T`` stochastic forward passes).

    Returns:
        Tensor ``(N,)`` of the dtype of ``probs``, in ``[0, log K]`` (up to rounding).
    """
    if probs.ndim != 3:
        raise ValueError(f"probs must have shape (samples, N, K), got {tuple(probs.shape)}")
    return entropy_scores(probs.mean(0)) - entropy_scores(probs.flatten(0, 1)).reshape(probs.shape[:2]).mean(0)


class Strategy(ABC):
    """Scores an unlabelled pool for acquisition: higher = query first.

    Subclasses set :attr:`name` and implement :meth:`score`; :meth:`check` raises before any
    training when the strategy cannot work with a model or setting.
    """

    name: ClassVar[str]
    needs_validation: ClassVar[bool] = False

    def check(self, model: nn.Module) -> None:  # noqa: B027  (most strategies accept any classifier)
        """Raise a ``ValueError`` if this strategy cannot score ``model``; called before any training.

        Args:
            model: The classifier the loop will train.
        """

    @abstractmethod
    def score(
        self,
        model: nn.Module,
        pool_loader: Iterable,
        labeled_loader: Iterable,
        *,
        val_loader: Iterable | None = None,
        seed: int = 0,
    ) -> Tensor:
        """Score every pool point.

        Args:
            model: The classifier trained on the labelled set (logits out); scored without
                changing its modes or the global random state.
            pool_loader: Unlabelled pool batches ``x`` or ``(x,)``, in a fixed order.
            labeled_loader: Labelled batches ``(x, y, index)``, each sample once, in a fixed order.
            val_loader: Labelled validation batches (used by ``"iv"`` only).
            seed: Seeds any randomness of the strategy (dropout masks, subsampling, ties).

        Returns:
            Float64 CPU tensor ``(|U|,)`` in pool-loader order; higher = query first.
        """

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({options})"


class FIActive(Strategy):
    """FI^active (the FI paper's eq. 4.1): the mean of the middle 80% of ``FI(z_u, z_j)`` over the labelled set.

    Args:
        curvature: ``"exact"`` (default; the paper inverts the Hessian), ``"kfac"`` or ``"ekfac"``.
        damping: Added to the curvature's diagonal (``None``: the exact pseudo-inverse).
        modules: ``None`` (perturb the input: softmax regression) or the logits layer, e.g.
            ``["net.head"]`` for a ``ClassifierModule`` (the paper's choice for CNNs).
        quantile_range: Quantiles of the aggregation (``(0.1, 0.9)``: the paper's).
        chunk_size: Pool points per batched product.
    """

    name = "fi"

    def __init__(
        self,
        curvature: Literal["exact", "kfac", "ekfac"] = "exact",
        damping: float | None = None,
        modules: Sequence[str] | None = None,
        quantile_range: tuple[float, float] = (0.1, 0.9),
        chunk_size: int = 256,
    ) -> None:
        self.curvature = curvature
        self.damping = damping
        self.modules = None if modules is None else list(modules)
        self.quantile_range = tuple(quantile_range)
        self.chunk_size = chunk_size

    def _options(self) -> dict[str, Any]:
        return {
            "curvature": self.curvature,
            "damping": self.damping,
            "modules": self.modules,
            "quantile_range": self.quantile_range,
            "chunk_size": self.chunk_size,
        }

    def score(
        self,
        model: nn.Module,
        pool_loader: Iterable,
        labeled_loader: Iterable,
        *,
        val_loader: Iterable | None = None,
        seed: int = 0,
    ) -> Tensor:
        """FI^active of every pool point at its predicted label (see :class:`Strategy`)."""
        from lightning_pareto.influence import fi_active

        with scoring_mode(model, seed=seed):
            return fi_active(model, labeled_loader, pool_loader, seed=seed, **self._options())


class FIActiveApprox(FIActive):
    """FI^active with both approximations (Algorithm 8).

    KFSVD (K-FAC curvature, rank-``k`` Jacobians) on a fraction ``alpha`` of the pool, a random forest
    predicting the FI rank of the rest.

    Args:
        rank: KFSVD's truncated-SVD rank ``k``.
        alpha: Fraction of the pool scored with FI each round.
        curvature: ``"kfac"`` (default; Algorithm 7's K-FAC), ``"ekfac"`` or ``"exact"``.
        damping: Added to the curvature's diagonal (``None``: the engine's default).
        modules: As in :class:`FIActive`.
        quantile_range: As in :class:`FIActive`.
        chunk_size: As in :class:`FIActive`.
    """

    name = "fi_approx"

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 0.2,
        curvature: Literal["exact", "kfac", "ekfac"] = "kfac",
        damping: float | None = None,
        modules: Sequence[str] | None = None,
        quantile_range: tuple[float, float] = (0.1, 0.9),
        chunk_size: int = 256,
    ) -> None:
        super().__init__(curvature, damping, modules, quantile_range, chunk_size)
        self.rank = rank
        self.alpha = alpha

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "approx": ["kfsvd", "subsample"], "rank": self.rank, "alpha": self.alpha}


class InfluenceValueSampling(Strategy):
    """IV (Chhabra et al. 2024), recomputed each round: a regression tree carries the labelled samples' IV to the pool.

    IV needs labels, which pool points lack; Chhabra et al. fit an influence estimator (a CART
    regression tree from inputs to IV) on the labelled set and query the pool points with the
    largest predicted IV.

    Args:
        curvature: ``"exact"`` (default), ``"kfac"`` or ``"ekfac"``.
        damping: Added to the curvature (``None``: the engine's default).
        modules: Layers to track, e.g. ``["net.head"]``; ``None``: every Linear/Conv2d.
        fisher: IV's curvature matrix; ``None``: ``"ggn"`` with ``"exact"``, ``"sampled"`` otherwise.
        max_depth: Depth of the regression tree (``None``: grown until its leaves are pure).
    """

    name = "iv"
    needs_validation = True

    def __init__(
        self,
        curvature: Literal["exact", "kfac", "ekfac"] = "exact",
        damping: float | None = None,
        modules: Sequence[str] | None = None,
        fisher: Literal["empirical", "sampled", "ggn"] | None = None,
        max_depth: int | None = 4,
    ) -> None:
        if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1):
            raise ValueError(f"max_depth must be None or an int >= 1, got {max_depth!r}")
        self.curvature = curvature
        self.damping = damping
        self.modules = None if modules is None else list(modules)
        self.fisher = fisher
        self.max_depth = max_depth

    def score(
        self,
        model: nn.Module,
        pool_loader: Iterable,
        labeled_loader: Iterable,
        *,
        val_loader: Iterable | None = None,
        seed: int = 0,
    ) -> Tensor:
        """Predicted IV of every pool point (see :class:`Strategy`)."""
        from sklearn.tree import DecisionTreeRegressor

        from lightning_pareto.influence import influence_value

        if val_loader is None:
            raise ValueError("the 'iv' strategy needs a validation set: pass val_loader (val_arrays in the loop)")
        fisher = self.fisher or ("ggn" if self.curvature == "exact" else "sampled")
        with scoring_mode(model, seed=seed):
            values = influence_value(
                model,
                labeled_loader,
                val_loader,
                curvature=self.curvature,
                damping=self.damping,
                modules=self.modules,
                fisher=fisher,
                seed=seed,
                progress=False,
            )
        inputs, index = _labeled_inputs(labeled_loader)
        targets = values[index].double().numpy()
        finite = np.isfinite(targets)
        if not finite.any():
            return torch.full((len(pool_inputs(pool_loader)),), math.nan, dtype=torch.float64)
        tree = DecisionTreeRegressor(max_depth=self.max_depth, random_state=seed)
        tree.fit(inputs[finite].numpy(), targets[finite])
        return torch.from_numpy(tree.predict(pool_inputs(pool_loader).numpy())).double()


class BALD(Strategy):
    """Bayesian active learning by disagreement with MC dropout (Gal, Islam & Ghahramani 2017).

    The model's own dropout layers are switched on for ``samples`` stochastic passes. A model
    without dropout layers (softmax regression) needs ``input_dropout``: dropout on its inputs
    during the passes.

    Args:
        samples: Number of stochastic forward passes ``T``.
        input_dropout: Dropout probability on the inputs during the passes, in ``[0, 1)``.
    """

    name = "bald"

    def __init__(self, samples: int = 20, input_dropout: float = 0.0) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
            raise ValueError(f"samples (MC-dropout forward passes) must be an int >= 2, got {samples!r}")
        if not (isinstance(input_dropout, (int, float)) and 0.0 <= input_dropout < 1.0):
            raise ValueError(f"input_dropout must lie in [0, 1), got {input_dropout!r}")
        self.samples = samples
        self.input_dropout = float(input_dropout)

    def check(self, model: nn.Module) -> None:
        """Raise if nothing is stochastic: no dropout layer with ``p > 0`` and no ``input_dropout``."""
        if not dropout_layers(model) and self.input_dropout == 0.0:
            raise ValueError(
                "strategy 'bald' needs MC dropout but the model has no nn.Dropout layer with p > 0: use a network "
                "with dropout (MnistCNN, MLP(dropout=0.2), ...), give BALD input_dropout=p (dropout on the inputs "
                "during its passes, e.g. for softmax regression), or choose another strategy"
            )

    def score(
        self,
        model: nn.Module,
        pool_loader: Iterable,
        labeled_loader: Iterable,
        *,
        val_loader: Iterable | None = None,
        seed: int = 0,
    ) -> Tensor:
        """BALD of every pool point from ``samples`` MC-dropout passes (see :class:`Strategy`)."""
        self.check(model)
        probs = pool_probabilities(
            model, pool_loader, samples=self.samples, input_dropout=self.input_dropout, seed=seed
        )
        return bald_scores(probs)


class EntropySampling(Strategy):
    """Maximum predictive entropy (the model in eval mode)."""

    name = "entropy"

    def score(
        self,
        model: nn.Module,
        pool_loader: Iterable,
        labeled_loader: Iterable,
        *,
        val_loader: Iterable | None = None,
        seed: int = 0,
    ) -> Tensor:
        """Predictive entropy of every pool point (see :class:`Strategy`)."""
        return entropy_scores(pool_probabilities(model, pool_loader))


class MarginSampling(Strategy):
    """Smallest margin between the two most probable classes (the model in eval mode)."""

    name = "margin"

    def score(
        self,
        model: nn.Module,
        pool_loader: Iterable,
        labeled_loader: Iterable,
        *,
        val_loader: Iterable | None = None,
        seed: int = 0,
    ) -> Tensor:
        """Minus the top-two margin of every pool point (see :class:`Strategy`)."""
        return margin_scores(pool_probabilities(model, pool_loader))


class RandomSampling(Strategy):
    """Uniform random scores from a generator seeded with ``seed``: random acquisition."""

    name = "random"

    def score(
        self,
        model: nn.Module,
        pool_loader: Iterable,
        labeled_loader: Iterable,
        *,
        val_loader: Iterable | None = None,
        seed: int = 0,
    ) -> Tensor:
        """Seeded uniform scores in ``[0, 1)`` (see :class:`Strategy`)."""
        size = len(pool_inputs(pool_loader))
        return torch.rand(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FIActive, FIActiveApprox, InfluenceValueSampling, BALD, EntropySampling, MarginSampling, RandomSampling)
}


def make_strategy(name: str, **options: Any) -> Strategy:
    """Build a strategy by its name.

    Args:
        name: One of ``"fi"``, ``"fi_approx"``, ``"iv"``, ``"bald"``, ``"entropy"``, ``"margin"``, ``"random"``.
        **options: Keyword arguments of that strategy's class.

    Returns:
        The strategy.

    Raises:
        ValueError: On an unknown name.
        TypeError: On an option the strategy does not take.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {list(STRATEGIES)}")
    try:
        return STRATEGIES[name](**options)
    except TypeError as error:
        raise TypeError(f"strategy {name!r}: {error}") from None


def _labeled_inputs(loader: Iterable) -> tuple[Tensor, Tensor]:
    """Flattened inputs ``(n, features)`` and the row of each in an influence result (its index, else its position)."""
    inputs, indices = [], []
    for batch in loader:
        x, _, index = unpack_batch(batch, labels=False)
        inputs.append(x.reshape(len(x), -1).float().cpu())
        indices.append(index)
    x = torch.cat(inputs)
    if indices[0] is None:
        return x, torch.arange(len(x))
    return x, torch.cat([i.reshape(-1).to(torch.int64).cpu() for i in indices])
