"""K-FAC factor statistics gathered from the training passes a model already runs, as K-FAC optimizers do.

Attach a ``FactorAccumulator`` for the training epoch(s) before an intervention: forward hooks record
each tracked layer's input and tensor hooks its output gradient in the backward pass the training
step runs anyway; the batch is added to the factor sums when the next forward starts (a forward
whose outputs took no gradient, such as validation, is dropped). ``curvature()`` then eigendecomposes
the factors and runs only the EKFAC correction pass (which needs the final eigenbasis), so no factor
pass over the training set is left.

The factors describe the model as it was during those epochs (in training mode: dropout active),
not the model scored afterwards: ``python benchmarks/influence.py --part tradeoffs`` measures the
agreement of the scores with factors fitted on the final model. The gradients are per-sample ones
when the training loss is the unweighted mean of per-sample losses (they are multiplied by the batch
size); a loss scaled otherwise (sample weights, gradient accumulation, AMP loss scaling) scales ``G``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_pareto.influence._passes import CapturedBatch
from lightning_pareto.influence._timings import InfluenceTimings
from lightning_pareto.influence.capture import LayerCapture, tracked_modules
from lightning_pareto.influence.curvature import fit_tracked_curvature
from lightning_pareto.influence.kfac.curvature import KroneckerCurvature
from lightning_pareto.influence.kfac.factors import FactorSums

__all__ = ["FactorAccumulator"]


class FactorAccumulator:
    """Accumulate K-FAC factors from a model's own training steps between ``attach()`` and ``detach()``.

    Args:
        model: The classifier being trained.
        modules: Qualified names of the layers to track; ``None`` tracks every Linear/Conv2d (as
            ``category_influence`` does).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> accumulator = FactorAccumulator(model)
        >>> with accumulator:  # attach() ... detach()
        ...     for _ in range(3):
        ...         optimizer.zero_grad()
        ...         nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,))).backward()
        ...         optimizer.step()
        >>> accumulator.samples
        48
    """

    def __init__(self, model: nn.Module, modules: Sequence[str] | None = None) -> None:
        self.model = model
        self.tracked = tracked_modules(model, modules)
        self._sums = FactorSums(self.tracked)
        self._capture: LayerCapture | None = None
        self._handle: RemovableHandle | None = None

    @property
    def samples(self) -> int:
        """Training samples added so far (on this rank)."""
        return self._sums.samples

    @property
    def attached(self) -> bool:
        """Whether the hooks are in place."""
        return self._capture is not None

    def attach(self) -> None:
        """Start recording the model's training steps (no-op when attached)."""
        if self._capture is not None:
            return
        self._capture = LayerCapture(self.tracked).__enter__()
        self._handle = self.model.register_forward_pre_hook(lambda module, args: self._flush())

    def detach(self) -> None:
        """Add the last recorded step and remove the hooks (no-op when detached)."""
        if self._capture is None:
            return
        self._flush()
        self._handle.remove()
        self._capture.__exit__(None, None, None)
        self._capture, self._handle = None, None

    def __enter__(self) -> FactorAccumulator:
        self.attach()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.detach()

    def reset(self) -> None:
        """Forget the sums (for the epochs before the next intervention)."""
        self._sums = FactorSums(self.tracked)

    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The accumulated ``(A, G)`` by layer (see ``FactorSums.factors``); detaches and resets.

        Raises:
            ValueError: If no training step was recorded.
        """
        self.detach()
        factors = self._sums.factors()
        self.reset()
        return factors

    def curvature(
        self,
        train_loader: Iterable,
        *,
        curvature: str = "ekfac",
        damping: float | None = None,
        seed: int = 0,
        correction_samples: int | str | None = "auto",
        progress: bool | None = None,
        timings: InfluenceTimings | None = None,
    ) -> KroneckerCurvature:
        """The K-FAC/EKFAC curvature of the model now, its factors from the recorded steps; detaches and resets.

        Args:
            train_loader: The training set, for the EKFAC correction pass (not used for K-FAC).
            curvature: ``"kfac"`` or ``"ekfac"``.
            damping: As in ``fit_curvature``.
            seed: Seed of the correction subset.
            correction_samples: As in ``fit_curvature``.
            progress: Progress bars: ``True``, ``False`` or ``None`` (only when stderr is a terminal).
            timings: Filled with the ``eigen`` and ``correction`` phases.

        Returns:
            A fitted ``KroneckerCurvature``, to pass to ``category_influence(curvature=...)``.

        Raises:
            ValueError: If ``curvature`` is not ``"kfac"``/``"ekfac"`` or no training step was recorded.
        """
        if curvature not in ("kfac", "ekfac"):
            raise ValueError(f"in-training factors give curvature='kfac' or 'ekfac', got {curvature!r}")
        return fit_tracked_curvature(
            self.model,
            train_loader,
            self.tracked,
            curvature=curvature,
            damping=damping,
            fisher="empirical",
            seed=seed,
            correction_samples=correction_samples,
            factors=self.factors(),
            progress=progress,
            timings=timings,
        )

    def _flush(self) -> None:
        """Add the recorded step when every tracked layer got its output gradients; forget it either way."""
        capture = self._capture
        if capture is None:
            return
        try:
            inputs = [capture.raw(name)[0] for name in self.tracked]
        except RuntimeError:  # no forward since the last flush, or a forward without backward
            capture.clear()
            return
        size = inputs[0][0].shape[0]
        with torch.no_grad():
            self._sums.add(CapturedBatch(capture, torch.empty(size), None), grad_scale=float(size))
        capture.clear()
