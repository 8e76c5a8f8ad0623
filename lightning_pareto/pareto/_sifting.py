"""Exact solver for box-bounded LPs with few rows and many columns (sifting with bound fixing).

``min c^T x  s.t.  A_ub x <= b_ub,  A_eq x = b_eq,  0 <= x <= upper`` with m rows and N >> m columns
has an optimal vertex with at most m columns strictly between their bounds; every other column sits at
the bound its reduced cost ``d_j = c_j - a_j^T y`` points to. Given dual estimates y, the columns with
the smallest ``|d_j|`` form a working set and every other column is fixed at the bound its ``d_j``
points to (more columns are freed while the fixed ones make the small LP infeasible). HiGHS solves
the small LP; its duals are checked against every fixed column (the KKT conditions of the full LP);
the worst violators are freed and the loop repeats. Freeing columns only relaxes the small LP, and at
exit the full LP's optimality conditions hold, so the answer is the full LP's optimum, not an
approximation. HiGHS's dual simplex on all N columns is slow here (seconds at N = 100,000 for a
handful of iterations); the small LPs are not. Without a usable guess it falls back to plain HiGHS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeResult, linprog

# Reduced-cost tolerance: HiGHS's default dual feasibility tolerance, for costs of order one.
_DUAL_TOLERANCE = 1e-7


@dataclass(frozen=True)
class BoxedLPResult:
    """Outcome of :func:`solve_boxed_lp`.

    Attributes:
        x: Optimal point, float64 array of shape ``(N,)``, or ``None`` unless ``status == 0``.
        fun: Optimal objective value (NaN unless optimal).
        status: ``scipy.optimize.linprog`` status code (0 optimal, 2 infeasible, 3 unbounded, 1/4 error).
        message: The solver's message.
        duals: Row duals ``[y_ub, y_eq]`` (linprog's marginals), float64 array of shape ``(m,)``, or
            ``None`` unless optimal; reusable as the next solve's ``dual_guess``.
        rounds: Sifting rounds used (0 when the full LP was solved directly).
    """

    x: np.ndarray | None
    fun: float
    status: int
    message: str
    duals: np.ndarray | None
    rounds: int


def solve_boxed_lp(
    cost: np.ndarray,
    a_ub: np.ndarray,
    b_ub: np.ndarray,
    a_eq: np.ndarray,
    b_eq: np.ndarray,
    upper: np.ndarray,
    *,
    dual_guess: np.ndarray | None,
    working_size: int = 1000,
    max_rounds: int = 12,
) -> BoxedLPResult:
    """Solves ``min cost^T x`` s.t. ``a_ub x <= b_ub``, ``a_eq x = b_eq``, ``0 <= x <= upper`` exactly.

    Args:
        cost: Float64 array of shape ``(N,)``.
        a_ub: Dense float64 array of shape ``(m_ub, N)``.
        b_ub: Float64 array of shape ``(m_ub,)``.
        a_eq: Dense float64 array of shape ``(m_eq, N)``.
        b_eq: Float64 array of shape ``(m_eq,)``.
        upper: Finite upper bounds, float64 array of shape ``(N,)``.
        dual_guess: Estimated row duals ``[y_ub, y_eq]`` of shape ``(m_ub + m_eq,)``, or ``None`` to
            solve the full LP with HiGHS directly.
        working_size: Columns with the smallest guessed ``|d_j|`` that start free (doubled while the
            fixed columns make the small LP infeasible).
        max_rounds: Sifting rounds before falling back to the full LP.

    Returns:
        A :class:`BoxedLPResult`.
    """
    num_columns = cost.shape[0]
    if dual_guess is None or working_size >= num_columns:
        return _from_linprog(_linprog(cost, a_ub, b_ub, a_eq, b_eq, upper), rounds=0)

    rows = np.vstack([a_ub, a_eq])
    guessed_reduced_cost = cost - rows.T @ dual_guess
    # Outside the working set a column sits at the bound its guessed reduced cost points to, for good:
    # freeing columns then only relaxes the small LP, so its objective improves monotonically.
    fixed_at_upper = guessed_reduced_cost < 0
    working = np.zeros(num_columns, dtype=bool)
    feasible = False
    for round_index in range(1, max_rounds + 1):
        if not feasible:
            if working_size >= num_columns:
                break
            working[np.argpartition(np.abs(guessed_reduced_cost), working_size)[:working_size]] = True
        at_upper = fixed_at_upper & ~working
        fixed_activity = rows[:, at_upper] @ upper[at_upper]
        small = _linprog(
            cost[working],
            a_ub[:, working],
            b_ub - fixed_activity[: len(b_ub)],
            a_eq[:, working],
            b_eq - fixed_activity[len(b_ub) :],
            upper[working],
        )
        if small.status != 0:
            if feasible:
                break
            # Columns fixed at their upper bound overshoot a row: free twice as many marginal ones.
            working_size *= 2
            continue
        feasible = True
        duals = np.concatenate([small.ineqlin.marginals, small.eqlin.marginals])
        reduced_cost = cost - rows.T @ duals
        at_lower = ~working & ~fixed_at_upper
        violated = (at_lower & (reduced_cost < -_DUAL_TOLERANCE)) | (at_upper & (reduced_cost > _DUAL_TOLERANCE))
        if not violated.any():
            x = np.where(at_upper, upper, 0.0)
            x[working] = small.x
            return BoxedLPResult(
                x=x, fun=float(cost @ x), status=0, message=small.message, duals=duals, rounds=round_index
            )
        # Free the worst violators, at most as many as are free already, so that duals of a small LP
        # that is still far from the full one do not drag half the columns in at once.
        violation = np.where(violated, np.abs(reduced_cost), 0.0)
        num_added = min(int(violated.sum()), int(working.sum()))
        working[np.argpartition(violation, -num_added)[-num_added:]] = True
    return _from_linprog(_linprog(cost, a_ub, b_ub, a_eq, b_eq, upper), rounds=0)


def _linprog(
    cost: np.ndarray, a_ub: np.ndarray, b_ub: np.ndarray, a_eq: np.ndarray, b_eq: np.ndarray, upper: np.ndarray
) -> OptimizeResult:
    bounds = np.column_stack([np.zeros_like(upper), upper])
    return linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")


def _from_linprog(result: OptimizeResult, rounds: int) -> BoxedLPResult:
    if result.status != 0:
        return BoxedLPResult(
            x=None, fun=float("nan"), status=result.status, message=result.message, duals=None, rounds=rounds
        )
    duals = np.concatenate([result.ineqlin.marginals, result.eqlin.marginals])
    return BoxedLPResult(
        x=result.x, fun=float(result.fun), status=0, message=result.message, duals=duals, rounds=rounds
    )
