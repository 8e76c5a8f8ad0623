"""The one dense curvature path of both engines: the dense matrix, its (damped, pseudo-) inverse.

``dense_curvature`` builds the mean GGN / Fisher over the tracked parameters with ``torch.func`` (the
category-wise engine's ``curvature="exact"``); FI builds the Hessian of its scope through its own
derivative operators. Both invert through ``DenseInverse`` in float64: by Cholesky when damped and
positive definite, otherwise through an eigendecomposition (the pseudo-inverse FI's undamped exact
curvature asks for). ``ExactCurvature`` is the category-wise engine's ``Curvature`` over it. For
small models (at most ``MAX_EXACT_PARAMETERS`` tracked parameters) and tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from lightning_pareto._distributed import all_reduce_sum
from lightning_pareto.influence._base import Curvature, check_layers, more_damping, resolve_damping
from lightning_pareto.influence._layout import flatten_layout, layout_from_named, layout_to_named, unflatten_layout
from lightning_pareto.influence._passes import fisher_labels, model_device
from lightning_pareto.influence._progress import progress_bar
from lightning_pareto.influence.batches import unpack_batch

__all__ = ["MAX_EXACT_PARAMETERS", "DenseInverse", "ExactCurvature", "dense_curvature"]

MAX_EXACT_PARAMETERS = 20_000
"""The largest number of tracked parameters a dense ``P x P`` curvature is built for."""


class DenseInverse:
    """``(M + damping I)^{-1}`` of a symmetric matrix, or its pseudo-inverse, applied to flat vectors in float64.

    With a damping, Cholesky of ``M + damping I`` when that is positive definite; otherwise (no
    damping, or an indefinite damped matrix) an eigendecomposition whose eigenvalues with
    ``|lambda| <= p * eps * max |lambda|`` are dropped: with ``damping=None`` that is the
    pseudo-inverse, the inverse on the matrix's range.

    Args:
        matrix: Symmetric tensor ``(p, p)``; symmetrised and cast to float64.
        damping: ``lambda >= 0`` added to the diagonal, or ``None`` for the pseudo-inverse.

    Attributes:
        positive_definite: Whether ``M + damping I`` was positive definite (Cholesky succeeded);
            ``False`` for the pseudo-inverse route.
        negative_eigenvalues: Whether the eigendecomposition route found damped eigenvalues below
            ``-tolerance`` (an indefinite matrix); ``False`` on the Cholesky route.
    """

    def __init__(self, matrix: Tensor, damping: float | None) -> None:
        matrix = matrix.double()
        matrix = 0.5 * (matrix + matrix.T)
        self.damping = damping
        self.positive_definite = False
        self.negative_eigenvalues = False
        self._cholesky: Tensor | None = None
        if damping is not None:
            identity = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
            factor, info = torch.linalg.cholesky_ex(matrix + damping * identity)
            if int(info) == 0:
                self.positive_definite, self._cholesky = True, factor
                return
        eigenvalues, self._eigenvectors = torch.linalg.eigh(matrix)
        scale = eigenvalues.abs().max().clamp_min(torch.finfo(matrix.dtype).tiny)
        tolerance = matrix.shape[0] * torch.finfo(matrix.dtype).eps * scale
        shifted = eigenvalues + (damping or 0.0)
        self.negative_eigenvalues = bool((shifted < -tolerance).any())
        self._inverse_eigenvalues = torch.where(shifted.abs() > tolerance, 1.0 / shifted, torch.zeros_like(shifted))

    def apply(self, vectors: Tensor) -> Tensor:
        """The inverse applied to each row of ``vectors`` ``(m, p)``; float64 ``(m, p)``."""
        vectors = vectors.double()
        if self._cholesky is not None:
            return torch.cholesky_solve(vectors.T, self._cholesky).T
        rotated = vectors @ self._eigenvectors
        return (rotated * self._inverse_eigenvalues) @ self._eigenvectors.T


class ExactCurvature(Curvature):
    """The dense damped curvature over all tracked parameters, inverted by ``DenseInverse`` (Cholesky).

    Args:
        tracked: Qualified layer name -> tracked layer, in model order (the flat layout order).
        matrix: float64 tensor of shape ``(P, P)``: the undamped mean GGN/Fisher in the flat layout.
        damping: ``lambda >= 0`` added to the diagonal, or ``None`` for the default (the largest
            eigenvalue estimated by power iteration).
        fisher: ``"empirical"``, ``"sampled"`` or ``"ggn"``.
    """

    kind = "exact"

    def __init__(self, tracked: Mapping[str, nn.Module], matrix: Tensor, damping: float | None, fisher: str) -> None:
        if not torch.isfinite(matrix).all():
            raise FloatingPointError(
                "the exact curvature is not finite: the model or the training data produce NaN/inf gradients"
            )
        self.tracked = dict(tracked)
        self.matrix = matrix
        self.fisher = fisher
        self.largest_eigenvalue = _largest_eigenvalue(matrix)
        resolved = resolve_damping(damping, self.largest_eigenvalue)
        inverse = DenseInverse(matrix, resolved)
        if not inverse.positive_definite:
            resolved = more_damping(resolved, self.largest_eigenvalue, "exact curvature is not positive definite")
            inverse = DenseInverse(matrix, resolved)
        self.damping = resolved
        self._inverse = inverse

    def inverse_hvp(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Apply ``(G + damping I)^{-1}`` to the flat vectors.

        See ``Curvature.inverse_hvp``; computed in float64.
        """
        check_layers(self.tracked, grads)
        dtype = next(iter(grads.values())).dtype
        solved = self._inverse.apply(flatten_layout(self.tracked, {name: grads[name] for name in self.tracked}))
        return {name: value.to(dtype) for name, value in unflatten_layout(self.tracked, solved).items()}

    def with_damping(self, damping: float | None) -> ExactCurvature:
        """See ``Curvature.with_damping``."""
        return ExactCurvature(self.tracked, self.matrix, damping, self.fisher)


def dense_curvature(
    model: nn.Module,
    loader: Iterable,
    tracked: Mapping[str, nn.Module],
    *,
    fisher: str,
    seed: int,
    progress: bool | None,
) -> Tensor:
    """Mean per-sample GGN or Fisher of the cross-entropy over the tracked parameters.

    With ``J_i`` the ``(K, P)`` Jacobian of sample i's logits with respect to the tracked parameters
    (flat layout, see ``_layout``) and ``p_i`` its softmax, the per-sample matrix is
    ``J_i^T M_i J_i`` with ``M_i = diag(p_i) - p_i p_i^T`` for ``"ggn"`` and ``M_i = r_i r_i^T``,
    ``r_i = p_i - onehot(label_i)``, for ``"empirical"`` (observed labels) and ``"sampled"`` (labels
    drawn from ``p_i``): ``J_i^T r_i`` is the per-sample loss gradient. Call inside ``influence_mode``.

    Args:
        model: The classifier, in ``influence_mode``.
        loader: Yields ``(x, y)`` or ``(x, y, index)``.
        tracked: Qualified name -> tracked layer.
        fisher: ``"ggn"``, ``"empirical"`` or ``"sampled"``.
        seed: Seed of the label sampler for ``"sampled"``.
        progress: See ``progress_bar``.

    Returns:
        float64 tensor of shape ``(P, P)``: the mean over the loader's samples.

    Raises:
        ValueError: If the loader yields no samples.
    """
    device = model_device(model)
    constants = {name: param.detach() for name, param in model.named_parameters()}
    constants.update(dict(model.named_buffers()))
    flat_params = flatten_layout(
        tracked, {k: v.unsqueeze(0) for k, v in layout_from_named(tracked, constants).items()}
    )[0]
    generator = torch.Generator().manual_seed(seed) if fisher == "sampled" else None

    def sample_logits(flat: Tensor, x: Tensor) -> Tensor:
        named = layout_to_named(tracked, unflatten_layout(tracked, flat))
        return functional_call(model, {**constants, **named}, (x.unsqueeze(0),)).squeeze(0)

    jacobian = vmap(jacrev(sample_logits), in_dims=(None, 0))
    total = torch.zeros(flat_params.numel(), flat_params.numel(), dtype=torch.float64, device=device)
    count = 0
    for batch in progress_bar(loader, desc="influence: exact curvature", enabled=progress):
        x, y, _ = unpack_batch(batch)
        x, y = x.to(device), torch.as_tensor(y).to(device)
        with torch.no_grad():
            logits = model(x)
        jac = jacobian(flat_params, x).double()  # (b, K, P)
        probs = torch.softmax(logits.double(), dim=-1)
        if fisher == "ggn":
            scaled = (probs.sqrt().unsqueeze(-1) * jac).flatten(end_dim=1)
            total.addmm_(scaled.T, scaled)
            mean_direction = torch.einsum("bk,bkp->bp", probs, jac)
            total.addmm_(mean_direction.T, mean_direction, alpha=-1.0)
        else:
            labels = fisher_labels(logits, y, fisher, generator)
            residual = probs - torch.nn.functional.one_hot(labels, probs.shape[1]).double()
            grads = torch.einsum("bk,bkp->bp", residual, jac)
            total.addmm_(grads.T, grads)
        count += y.shape[0]
    # Under DDP each rank saw a shard: sum so every rank holds the whole set's matrix.
    count = int(all_reduce_sum(torch.tensor(count, dtype=torch.float64)))
    if count == 0:
        raise ValueError("train_loader yielded no samples")
    return all_reduce_sum(total) / count


def _largest_eigenvalue(matrix: Tensor, iterations: int = 200, tolerance: float = 1e-6) -> float:
    # Power iteration from a fixed start: deterministic, O(P^2) per step instead of eigvalsh's O(P^3).
    vector = torch.linspace(1.0, 2.0, matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    vector /= vector.norm()
    estimate = 0.0
    for _ in range(iterations):
        image = matrix @ vector
        previous, estimate = estimate, float(vector @ image)
        norm = image.norm()
        if norm == 0 or abs(estimate - previous) <= tolerance * abs(estimate):
            break
        vector = image / norm
    return estimate
