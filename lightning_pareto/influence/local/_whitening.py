"""Each sample's metric tensor ``G_z`` through its rank-<=K factor, and the FI quadratic form.

Row ``c`` of ``A`` (``K x d``) is ``d/domega log P(c | x + omega, theta(x + omega))`` at ``omega = 0``:
``-(1/n) J^T H^{-1} d/dtheta log P(c|x) + d/dx log P(c|x)`` (eq. 2.3 of "Enhancing Prediction Performance through Influence Measure" with appendix A's
``d theta / d omega = -(1/n) H^{-1} J``). Then ``G_z = A^T diag(P) A = B^T B`` with
``B = diag(sqrt P) A``. From the thin SVD ``B = U S V^T`` the pseudo-inverse is
``G_z^+ = V S^{-2} V^T = W^T W`` with ``W = S^{-1} V^T`` (``r x d``, ``r = min(K, d)``), so
``FI = v^T G_z^+ v = ||W v||^2``. Singular values ``<= svd_tol * max(S)`` count as zero (their rows
of ``W`` are zero); ``sum_c P_c a_c = 0`` always, so at least one singular value is zero.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lightning_pareto.influence._progress import progress_bar
from lightning_pareto.influence.local._data import ScopeInputs, chunk_size
from lightning_pareto.influence.local._operator import FIOperator, JacobianProducts
from lightning_pareto.influence.local._preconditioner import Preconditioner
from lightning_pareto.influence.local.kfsvd import LowRankJacobian


def whitened_factor(
    operator: FIOperator,
    jacobian: JacobianProducts,
    preconditioner: Preconditioner | None,
    x: torch.Tensor,
    y: torch.Tensor,
    num_train: int,
    svd_tol: float,
) -> torch.Tensor:
    """``W`` with ``G_z^+ = W^T W`` for a batch of training samples.

    Args:
        operator: Exact probabilities and log-probability gradients.
        jacobian: Source of the ``J^T q`` products (the operator itself, or a low-rank ``J``).
        preconditioner: ``H^{-1}``; ``None`` drops the parameter path (the fixed-model metric of
            Shu & Zhu 2019).
        x: Inputs ``(b, d)``.
        y: Labels ``(b,)``.
        num_train: ``n`` of the ``1/n`` factor.
        svd_tol: Relative singular-value cut-off.

    Returns:
        ``W`` of shape ``(b, min(K, d), d)``, float64.
    """
    probs, d_theta, d_x = operator.log_prob_grads(x)
    factor = d_x
    if preconditioner is not None:
        b, k, p = d_theta.shape
        queries = preconditioner.apply(d_theta.reshape(b * k, p)).reshape(b, k, p)
        factor = factor - jacobian.jt(x, y, queries) / num_train
    _, singular, right_t = torch.linalg.svd(probs.sqrt()[..., None] * factor, full_matrices=False)
    keep = singular > svd_tol * singular.amax(dim=-1, keepdim=True)
    inverse = torch.where(keep, 1.0 / singular.clamp_min(torch.finfo(singular.dtype).tiny), torch.zeros_like(singular))
    return inverse[..., None] * right_t


def quadratic_form(whitened: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``v^T G_z^+ v = ||W v||^2`` per sample: ``whitened`` ``(b, r, d)``, ``vectors`` ``(b, d)`` -> ``(b,)``."""
    return (whitened @ vectors[..., None]).squeeze(-1).square().sum(-1)


def factor_chunks(
    operator: FIOperator,
    preconditioner: Preconditioner | None,
    train: ScopeInputs,
    rows: torch.Tensor,
    rank: int | None,
    seed: int,
    svd_tol: float,
    progress: bool | None,
    desc: str,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, JacobianProducts, torch.Tensor]]:
    """Chunks of the given training rows (a progress bar over chunks labelled ``desc``) with their ``J`` products (exact or KFSVD) and ``W`` factors."""
    generator = torch.Generator().manual_seed(seed)
    chunk = chunk_size(operator.num_params, train)
    rows = rows.to(train.x.device)
    for start in progress_bar(range(0, len(rows), chunk), desc=desc, enabled=progress):
        x, y = train.x[rows[start : start + chunk]], train.y[rows[start : start + chunk]]
        jacobian = LowRankJacobian.fit(operator, x, y, rank, generator) if rank is not None else operator
        yield x, y, jacobian, whitened_factor(operator, jacobian, preconditioner, x, y, len(train), svd_tol)
