"""How trimming trains a network: a :class:`Fitter` is called for the first training and every retraining.

:class:`LBFGSFit` trains full-batch to convergence (for logistic regression: the influence measures
assume the parameters sit at the minimum, and a convex model can be put there exactly);
:class:`LightningFit` is a quiet Lightning ``Trainer`` run of :class:`~lightning_pareto.ClassifierModule`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_pareto._quiet import fit_quietly
from lightning_pareto.trimming._arrays import stack

__all__ = ["Fitter", "LBFGSFit", "LightningFit"]


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
        x, y = stack(train)
        first = next(net.parameters())
        # Solved in float64, where a tight gradient tolerance is reachable, then cast back.
        dtype, device = first.dtype, first.device
        net.to(torch.float64)
        x, y = x.to(device=device, dtype=torch.float64), y.to(device)
        parameters = [p for p in net.parameters() if p.requires_grad]
        optimizer = torch.optim.LBFGS(
            parameters,
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=self.tolerance,
            tolerance_change=1e-12,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

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
        self.lr, self.weight_decay, self.momentum, self.accelerator = (
            float(lr),
            float(weight_decay),
            momentum,
            accelerator,
        )

    def _make_optimizer(self, parameters: Iterable[Tensor]) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def fit(self, net: nn.Module, train: Dataset, *, num_classes: int, seed: int) -> None:
        """Train for ``max_epochs`` epochs (see :class:`Fitter`)."""
        from lightning_pareto.module import ClassifierModule

        module = ClassifierModule(net, num_classes, optimizer=self._make_optimizer)
        fit_quietly(
            module,
            DataLoader(train, batch_size=self.batch_size, shuffle=True),
            max_epochs=self.max_epochs,
            seed=seed,
            trainer_kwargs={"accelerator": self.accelerator},
        )
