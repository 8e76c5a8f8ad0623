"""Exact solver for box-bounded LPs with few rows and many columns: a dense bounded dual simplex.

``min c^T x  s.t.  A_ub x <= b_ub,  A_eq x = b_eq,  0 <= x <= upper`` with m rows and N >> m columns
(the reweighting LP has m = K + 2 and N = 2n). Every structural column is boxed, so any dual vector is
dual feasible once each nonbasic column sits at the bound its reduced cost points to; only the primal
side has to be repaired, which is what the dual simplex does. Its bound-flipping ratio test moves many
columns from one bound to the other in one iteration (an exact line search of the piecewise-linear
dual along the pivot row), and the m x m basis is inverted afresh each iteration (m is small, so no
factorisation error accumulates).

Iterations run on a working set of columns, the rest held at their bounds (sifting): after the working
LP is optimal, the reduced costs of all columns are checked once, the columns on the wrong bound are
flipped (which keeps the basis dual feasible, since they are boxed) and join the working set, and the
dual simplex goes on. At exit every column satisfies the full LP's optimality conditions, so the
answer is the full LP's optimum. An optimal basis stays dual feasible when only the right-hand side
changes, so passing it as the next solve's ``start`` leaves only a short primal repair.

Anything unexpected (an iteration cap, a near-singular basis, an infeasibility verdict) hands the LP to
HiGHS whole, whose answer is returned instead.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import OptimizeResult, linprog
from threadpoolctl import ThreadpoolController

# Relative tolerances: reduced costs (to the largest cost), primal bounds (to each variable's scale:
# its upper bound, or a row's right-hand side and activity) and pivot-row entries a ratio test may use.
_DUAL_TOLERANCE = 1e-9
_PRIMAL_TOLERANCE = 1e-9
_ACTIVITY_TOLERANCE = 1e-12
_PIVOT_TOLERANCE = 1e-9
# A basis matrix with a worse (1-norm) condition number is not trusted: HiGHS takes over.
_MAX_CONDITION = 1e12
# Breakpoints of the bound-flipping ratio test sorted at first (four times more while not enough).
_FIRST_SORTED_BREAKPOINTS = 64
# Sifting rounds (working-set solves) before HiGHS takes over.
_MAX_ROUNDS = 30


@dataclass(frozen=True)
class Basis:
    """A simplex basis, reusable as the start of a solve with the same costs and rows.

    Attributes:
        basic: The m basic columns, int64 array of shape ``(m,)``: ``j < N`` is structural column j,
            ``N + r`` the slack of row r (inequality rows first, then equality rows).
        at_upper: Whether each structural column sits at its upper bound when nonbasic, bool array of
            shape ``(N,)`` (entries of basic columns are ignored).
    """

    basic: np.ndarray
    at_upper: np.ndarray


@dataclass(frozen=True)
class BoxedLPResult:
    """Outcome of :func:`solve_boxed_lp`.

    Attributes:
        x: Optimal point, float64 array of shape ``(N,)``, or ``None`` unless ``status == 0``.
        fun: Optimal objective value (NaN unless optimal).
        status: ``scipy.optimize.linprog`` status code (0 optimal, 2 infeasible, 3 unbounded, 1/4 error).
        message: What happened.
        duals: Row duals ``[y_ub, y_eq]`` (linprog's marginals: the objective's derivative with respect
            to each right-hand side), float64 array of shape ``(m,)``, or ``None`` unless optimal.
        iterations: Dual simplex iterations (0 when HiGHS solved the LP).
        basis: The optimal basis, a warm start for the next solve; ``None`` when HiGHS solved the LP.
    """

    x: np.ndarray | None
    fun: float
    status: int
    message: str
    duals: np.ndarray | None
    iterations: int
    basis: Basis | None


class BoxedLP:
    """``min cost^T x`` s.t. ``a_ub x <= b_ub``, ``a_eq x = b_eq``, ``0 <= x <= upper``, for many right-hand sides.

    The matrix, costs and bounds are fixed at construction; :meth:`solve` takes the right-hand side.

    Args:
        cost: Float64 array of shape ``(N,)``.
        a_ub: Dense float64 array of shape ``(m_ub, N)``.
        a_eq: Dense float64 array of shape ``(m_eq, N)``.
        upper: Finite non-negative upper bounds, float64 array of shape ``(N,)``.
    """

    def __init__(self, cost: np.ndarray, a_ub: np.ndarray, a_eq: np.ndarray, upper: np.ndarray) -> None:
        self.cost, self.upper = cost, upper
        self.a_ub, self.a_eq = a_ub, a_eq
        self.rows = np.vstack([a_ub, a_eq])
        self.num_rows, self.num_columns = self.rows.shape
        num_ub = a_ub.shape[0]
        # Slack upper bounds: +inf for inequality rows, 0 for equality rows (a fixed slack never enters).
        self.slack_upper = np.concatenate([np.full(num_ub, np.inf), np.zeros(self.num_rows - num_ub)])
        self.dual_tolerance = _DUAL_TOLERANCE * max(1.0, float(np.abs(cost).max(initial=0.0)))
        self._largest_activity = np.abs(self.rows) @ upper

    def solve(
        self,
        b_ub: np.ndarray,
        b_eq: np.ndarray,
        *,
        start: Basis | None = None,
        working_size: int = 2000,
        max_iterations: int = 1000,
    ) -> BoxedLPResult:
        """Solves the LP exactly for one right-hand side.

        Args:
            b_ub: Float64 array of shape ``(m_ub,)``.
            b_eq: Float64 array of shape ``(m_eq,)``.
            start: Start from this basis (an earlier solve's ``basis``, any right-hand side); ``None``
                starts from the slack basis with every column at its cheaper bound.
            working_size: Columns with the smallest reduced costs that start in the working set.
            max_iterations: Dual simplex iterations in all before HiGHS takes over.

        Returns:
            A :class:`BoxedLPResult`.
        """
        with single_blas_thread():
            result = self._sift(np.concatenate([b_ub, b_eq]), start, working_size, max_iterations)
        return self.solve_with_highs(b_ub, b_eq) if result is None else result

    def solve_with_highs(self, b_ub: np.ndarray, b_eq: np.ndarray) -> BoxedLPResult:
        """Hands the whole LP to HiGHS (``scipy.optimize.linprog``); slower, and no basis comes back.

        Args:
            b_ub: Float64 array of shape ``(m_ub,)``.
            b_eq: Float64 array of shape ``(m_eq,)``.

        Returns:
            A :class:`BoxedLPResult` with ``iterations == 0`` and ``basis=None``.
        """
        bounds = np.column_stack([np.zeros_like(self.upper), self.upper])
        highs = linprog(
            self.cost, A_ub=self.a_ub, b_ub=b_ub, A_eq=self.a_eq, b_eq=b_eq, bounds=bounds, method="highs"
        )
        return _from_linprog(highs)

    def _sift(self, rhs: np.ndarray, start: Basis | None, working_size: int, max_iterations: int) -> BoxedLPResult | None:
        """Sifting rounds of the dual simplex; ``None`` when HiGHS should decide instead."""
        if start is None:
            basic = self.num_columns + np.arange(self.num_rows)
            at_upper = self.cost < 0
        else:
            basic, at_upper = start.basic.copy(), start.at_upper.copy()
        inverse = _checked_inverse(_basis_matrix(self.rows, basic))
        if inverse is None:
            return None
        duals = inverse.T @ self._basic_cost(basic)
        reduced = self.cost - self.rows.T @ duals
        at_upper = _aligned(at_upper, reduced, self.dual_tolerance)
        working = np.zeros(self.num_columns, dtype=bool)
        working[basic[basic < self.num_columns]] = True
        working[_smallest(np.abs(reduced), working_size)] = True
        slack_tolerance = _PRIMAL_TOLERANCE * np.maximum(np.abs(rhs), 1.0) + _ACTIVITY_TOLERANCE * self._largest_activity
        iterations = 0
        for _ in range(_MAX_ROUNDS):
            columns = np.flatnonzero(working)
            held = np.where(at_upper & ~working, self.upper, 0.0)
            local = _WorkingLP(
                cost=self.cost[columns],
                rows=self.rows[:, columns],
                rhs=rhs - self.rows @ held,
                upper=self.upper[columns],
                slack_upper=self.slack_upper,
                dual_tolerance=self.dual_tolerance,
                slack_tolerance=slack_tolerance,
            )
            local_basic = np.where(
                basic < self.num_columns,
                np.searchsorted(columns, basic),
                basic - self.num_columns + len(columns),
            )
            outcome = local.run(local_basic, at_upper[columns], max_iterations - iterations)
            iterations += outcome.iterations
            basic = np.where(
                outcome.basic < len(columns),
                columns[np.minimum(outcome.basic, len(columns) - 1)],
                outcome.basic - len(columns) + self.num_columns,
            )
            at_upper[columns] = outcome.at_upper
            if outcome.status == "failed":
                return None
            reduced = self.cost - self.rows.T @ outcome.duals
            if outcome.status == "infeasible":
                if working.all():
                    return None  # HiGHS confirms the verdict with its own message
                # Columns held at a bound may be what makes the working LP infeasible: free more of them.
                working[_smallest(np.where(working, np.inf, np.abs(reduced)), int(working.sum()))] = True
                continue
            wrong_bound = ~working & np.where(at_upper, reduced > self.dual_tolerance, reduced < -self.dual_tolerance)
            if not wrong_bound.any():
                return self._optimum(basic, at_upper, outcome, iterations)
            at_upper[wrong_bound] = ~at_upper[wrong_bound]
            working |= wrong_bound
        return None

    def _basic_cost(self, basic: np.ndarray) -> np.ndarray:
        return np.where(basic < self.num_columns, self.cost[np.minimum(basic, self.num_columns - 1)], 0.0)

    def _optimum(self, basic: np.ndarray, at_upper: np.ndarray, outcome: _Outcome, iterations: int) -> BoxedLPResult:
        structural = basic < self.num_columns
        x = np.where(at_upper, self.upper, 0.0)
        x[basic[structural]] = outcome.basic_values[structural]
        # Basic values are within the primal tolerance of their bounds; the clip removes that round-off.
        np.clip(x, 0.0, self.upper, out=x)
        return BoxedLPResult(
            x=x,
            fun=float(self.cost @ x),
            status=0,
            message=f"Optimal (dual simplex, {iterations} iterations)",
            duals=outcome.duals,
            iterations=iterations,
            basis=Basis(basic=basic, at_upper=at_upper),
        )


@dataclass(frozen=True)
class _Outcome:
    status: str  # "optimal", "infeasible" (the dual is unbounded) or "failed"
    basic: np.ndarray
    at_upper: np.ndarray
    duals: np.ndarray
    basic_values: np.ndarray
    iterations: int


@dataclass(frozen=True)
class _WorkingLP:
    """The LP on the working columns, the other columns' activity moved into the right-hand side."""

    cost: np.ndarray
    rows: np.ndarray
    rhs: np.ndarray
    upper: np.ndarray
    slack_upper: np.ndarray
    dual_tolerance: float
    slack_tolerance: np.ndarray

    def run(self, basic: np.ndarray, at_upper: np.ndarray, max_iterations: int) -> _Outcome:
        """Dual simplex iterations from a basis (nonbasic columns move to the bound their reduced cost picks)."""
        rows, cost, upper = self.rows, self.cost, self.upper
        num_rows, num_columns = rows.shape
        basic = basic.copy()
        inequality_rows = np.isinf(self.slack_upper)
        column_upper = np.concatenate([upper, self.slack_upper])
        column_tolerance = np.concatenate([_PRIMAL_TOLERANCE * np.maximum(upper, 1.0), self.slack_tolerance])
        column_cost = np.concatenate([cost, np.zeros(num_rows)])
        duals = basic_values = np.zeros(num_rows)
        for iteration in range(max_iterations + 1):
            structural = basic < num_columns
            basic_columns = basic[structural]
            inverse = _checked_inverse(_basis_matrix(rows, basic))
            if inverse is None:
                return _Outcome("failed", basic, at_upper, duals, basic_values, iteration)
            duals = inverse.T @ column_cost[basic]
            if np.any(duals[inequality_rows] > self.dual_tolerance):
                # A slack's reduced cost -y_r went negative: no longer dual feasible (round-off trouble).
                return _Outcome("failed", basic, at_upper, duals, basic_values, iteration)
            reduced = cost - duals @ rows
            if iteration == 0:
                # Later iterations keep the alignment: flips and the leaving column's bound follow the step.
                at_upper = _aligned(at_upper, reduced, self.dual_tolerance)
            held = np.where(at_upper, upper, 0.0)
            held[basic_columns] = 0.0
            basic_values = inverse @ (self.rhs - rows @ held)
            basic_upper = column_upper[basic]
            distance = np.maximum(-basic_values, basic_values - basic_upper)
            violated = distance > column_tolerance[basic]
            if not violated.any():
                return _Outcome("optimal", basic, at_upper, duals, basic_values, iteration)
            if iteration == max_iterations:
                break
            # Leaving row: the largest violation per unit norm of its row of B^-1 (dual steepest edge).
            leaving = int(np.argmax(np.where(violated, distance, 0.0) / np.linalg.norm(inverse, axis=1)))
            to_lower = bool(basic_values[leaving] < 0.0)
            step = self._ratio_test(
                inverse[leaving] if not to_lower else -inverse[leaving],
                float(distance[leaving]),
                reduced,
                duals,
                at_upper,
                basic,
                basic_columns,
            )
            if step is None:
                return _Outcome("infeasible", basic, at_upper, duals, basic_values, iteration)
            entering, flipped = step
            at_upper[flipped] = ~at_upper[flipped]
            if basic[leaving] < num_columns:
                at_upper[basic[leaving]] = not to_lower
            basic[leaving] = entering
        return _Outcome("failed", basic, at_upper, duals, basic_values, max_iterations)

    def _ratio_test(
        self,
        signed_inverse_row: np.ndarray,
        excess: float,
        reduced: np.ndarray,
        duals: np.ndarray,
        at_upper: np.ndarray,
        basic: np.ndarray,
        basic_columns: np.ndarray,
    ) -> tuple[int, np.ndarray] | None:
        """Bound-flipping ratio test: the entering column and the structural columns that flip.

        The dual moves along the leaving row of B^-1; the dual objective's slope starts at the leaving
        variable's bound violation ``excess``, and passing column j's breakpoint ``d_j / alpha_j`` lowers
        it by ``|alpha_j|`` times the column's bound range. The column whose breakpoint makes the slope
        non-positive enters; the columns passed before it flip to their other bound. ``None`` when no
        breakpoint does: the dual is unbounded and the LP infeasible.
        """
        num_columns = self.rows.shape[1]
        alpha = signed_inverse_row @ self.rows
        # Column j's reduced cost d_j - t alpha_j reaches zero at t = d_j / alpha_j >= 0 when it moves
        # towards the wrong sign: at lower with alpha_j > 0, at upper with alpha_j < 0.
        towards_wrong_sign = np.where(at_upper, -alpha, alpha)
        towards_wrong_sign[basic_columns] = 0.0
        pivot_tolerance = _PIVOT_TOLERANCE * max(1.0, float(np.abs(alpha).max(initial=0.0)))
        columns = np.flatnonzero(towards_wrong_sign > pivot_tolerance)
        # Nonbasic inequality slacks sit at zero with no upper bound: breakpoints of unlimited width.
        slack_is_nonbasic = np.isinf(self.slack_upper)
        slack_is_nonbasic[basic[basic >= num_columns] - num_columns] = False
        slack_rows = np.flatnonzero(slack_is_nonbasic & (signed_inverse_row > pivot_tolerance))
        candidates = np.concatenate([columns, num_columns + slack_rows])
        ratios = np.maximum(
            np.concatenate([reduced[columns] / alpha[columns], -duals[slack_rows] / signed_inverse_row[slack_rows]]),
            0.0,
        )
        pivots = np.concatenate([towards_wrong_sign[columns], signed_inverse_row[slack_rows]])
        widths = np.concatenate([pivots[: len(columns)] * self.upper[columns], np.full(len(slack_rows), np.inf)])
        count = min(_FIRST_SORTED_BREAKPOINTS, len(candidates))
        while True:
            order = _smallest(ratios, count)
            order = order[np.argsort(ratios[order], kind="stable")]
            crossing = int(np.searchsorted(np.cumsum(widths[order]), excess, side="left"))
            if crossing < len(order):
                break
            if count >= len(candidates):
                return None
            count = min(4 * count, len(candidates))
        # Among breakpoints tied with the crossing one, the largest pivot enters (a better-conditioned basis).
        crossing_ratio = ratios[order[crossing]]
        tied = np.flatnonzero(ratios[order[: crossing + 1]] >= crossing_ratio - 1e-12 * (1.0 + crossing_ratio))
        chosen = int(tied[np.argmax(pivots[order[tied]])])
        flipped = candidates[order[:chosen]]
        return int(candidates[order[chosen]]), flipped[flipped < num_columns]


def single_blas_thread() -> AbstractContextManager[Any]:
    """A context in which BLAS runs on one thread.

    The products of the dual simplex are m-row matrix-vector products, memory-bound: BLAS threads
    only add synchronisation, and the idle ones spin for a while after each call, taking a core from
    the solver (on two shared cores the solve ran 1.8x slower, single products up to 30x). Wrap every
    call that mixes BLAS with the solver, not only the solver: a threaded call just before it leaves
    spinning threads behind.
    """
    return _thread_pools().limit(limits=1, user_api="blas")


@functools.cache
def _thread_pools() -> ThreadpoolController:
    # Inspecting the loaded libraries takes about 10 ms, once; limiting them later takes microseconds.
    return ThreadpoolController()


def _basis_matrix(rows: np.ndarray, basic: np.ndarray) -> np.ndarray:
    num_rows, num_columns = rows.shape
    structural = basic < num_columns
    matrix = np.zeros((num_rows, num_rows))
    matrix[:, structural] = rows[:, basic[structural]]
    matrix[basic[~structural] - num_columns, np.flatnonzero(~structural)] = 1.0
    return matrix


def _checked_inverse(matrix: np.ndarray) -> np.ndarray | None:
    try:
        inverse = np.linalg.inv(matrix)
    except np.linalg.LinAlgError:
        return None
    condition = np.abs(matrix).sum(axis=0).max() * np.abs(inverse).sum(axis=0).max()
    return inverse if np.isfinite(condition) and condition < _MAX_CONDITION else None


def _aligned(at_upper: np.ndarray, reduced: np.ndarray, tolerance: float) -> np.ndarray:
    """Each column on the bound its reduced cost points to (within the tolerance, the bound it has)."""
    return np.where(reduced < -tolerance, True, np.where(reduced > tolerance, False, at_upper))


def _smallest(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` smallest values, in no particular order."""
    if count >= len(values):
        return np.arange(len(values))
    return np.argpartition(values, count)[:count]


def _from_linprog(result: OptimizeResult) -> BoxedLPResult:
    if result.status != 0:
        return BoxedLPResult(
            x=None, fun=float("nan"), status=result.status, message=result.message, duals=None, iterations=0,
            basis=None,
        )
    duals = np.concatenate([result.ineqlin.marginals, result.eqlin.marginals])
    return BoxedLPResult(
        x=result.x, fun=float(result.fun), status=0, message=result.message, duals=duals, iterations=0, basis=None
    )
