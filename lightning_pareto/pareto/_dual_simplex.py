"""Exact solver for box-bounded LPs with few rows and many columns: a dense bounded dual simplex.

``min c^T x  s.t.  A_ub x <= b_ub,  A_eq x = b_eq,  0 <= x <= upper`` with m rows and N >> m columns
(the reweighting LP has m = K + 2 and N = 2n). Every structural column is boxed, so any dual vector is
dual feasible once each nonbasic column sits at the bound its reduced cost points to; only the primal
side has to be repaired, which is what the dual simplex does. Its bound-flipping ratio test moves many
columns from one bound to the other in one iteration (an exact line search of the piecewise-linear
dual along the pivot row). The m x m basis inverse, duals, reduced costs and row residual are updated
after each iteration and recomputed from scratch every ``_REFACTOR_EVERY`` iterations and before an
optimum is declared, so no update error reaches the answer.

Iterations run on a working set of columns, the rest held at their bounds (sifting): after the working
LP is optimal, the reduced costs of all columns are checked once, the columns on the wrong bound are
flipped (which keeps the basis dual feasible, since they are boxed) and join the working set, and the
dual simplex goes on. At exit every column satisfies the full LP's optimality conditions, so the
answer is the full LP's optimum. An optimal basis stays dual feasible when only the right-hand side
changes, so passing it as the next solve's ``start`` leaves only a short primal repair; its dual
bound for the new right-hand side (:meth:`Basis.dual_bound`) says how good a start it is. What the
first round needs from a start (reduced-cost signs, working set, held activity) does not depend on
the right-hand side: it is cached for the last starts used.

Anything unexpected (an iteration cap, a near-singular basis, an infeasibility verdict) hands the LP to
HiGHS whole, whose answer is returned instead.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
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
# Iterations between fresh inversions of the basis (updates in between).
_REFACTOR_EVERY = 25
# Start bases whose first-round state is kept (about 10 N bytes each: 1 MB at N = 100,000). In the
# paper-preset GA at n = 50,000 about 40% of the solves start from one of the last 32 starts.
_CACHED_STARTS = 32


@dataclass(frozen=True)
class Basis:
    """A dual-feasible simplex basis, a start for any right-hand side of the same LP.

    Its duals ``y`` give every right-hand side ``b`` the lower bound ``b @ y + bound_offset`` on the
    optimum (the dual function ``b @ y + sum_j min(0, d_j) * upper_j`` with reduced costs
    ``d = cost - A^T y``): among bases, the one with the largest bound is the closest start.

    Attributes:
        basic: The m basic columns, int64 array of shape ``(m,)``: ``j < N`` is structural column j,
            ``N + r`` the slack of row r (inequality rows first, then equality rows).
        duals: ``y = B^-T cost_B``, float64 array of shape ``(m,)``.
        bound_offset: ``sum_j min(0, d_j) * upper_j``, the part of the dual bound that does not depend
            on the right-hand side.
    """

    basic: np.ndarray
    duals: np.ndarray
    bound_offset: float

    def dual_bound(self, rhs: np.ndarray) -> float:
        """Lower bound on the optimum for right-hand side ``rhs = [b_ub, b_eq]`` (shape ``(m,)``)."""
        return float(rhs @ self.duals) + self.bound_offset


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
        # The rows with the cost appended: one product with a held-column vector gives both their
        # activity and their cost.
        # (C order, filled row by row: a row-major product over the columns; np.vstack of column-major
        # inputs is column-major, and a copy of it to C order took as long again.)
        num_ub = a_ub.shape[0]
        self._rows_and_cost = np.empty((num_ub + a_eq.shape[0] + 1, len(cost)))
        self._rows_and_cost[:num_ub] = a_ub
        self._rows_and_cost[num_ub:-1] = a_eq
        self._rows_and_cost[-1] = cost
        self.rows = self._rows_and_cost[:-1]
        self.num_rows, self.num_columns = self.rows.shape
        # Slack upper bounds: +inf for inequality rows, 0 for equality rows (a fixed slack never enters).
        self.slack_upper = np.concatenate([np.full(num_ub, np.inf), np.zeros(self.num_rows - num_ub)])
        self.dual_tolerance = _DUAL_TOLERANCE * max(1.0, float(np.abs(cost).max(initial=0.0)))
        absolute = np.abs(self.rows)
        self._largest_activity = absolute @ upper
        # Working sets hold the columns whose reduced cost is nearest to changing sign per unit of dual
        # move: |d_j| / ||a_j|| (an all-zero column never changes sign).
        norms = np.sqrt(np.einsum("ij,ij->j", self.rows, self.rows))
        self._inverse_norms = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
        self._cost_negative = cost < 0
        # The columns one after another (row j is column j): a working set is gathered in one pass over
        # contiguous m-entry blocks, four times faster than picking entries out of every row.
        self._columns_by_row = np.ascontiguousarray(self.rows.T)
        self._largest_entries = absolute.max(axis=0, initial=0.0)
        del absolute
        self._identity = np.eye(self.num_rows)
        # Length-N scratch arrays reused by every solve: two large temporaries alive at once made glibc
        # give their pages back and fault them in again at each allocation (a 0.2 ms pass took 1.4 ms).
        self._reduced = np.empty(self.num_columns)
        self._scratch = np.empty(self.num_columns)
        self._suspects = np.empty(self.num_columns, dtype=bool)
        # First-round states of recent starts, least recently used first (see _start_state).
        self._start_states: OrderedDict[tuple[int, int], tuple[Basis | None, _StartState]] = OrderedDict()

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
            start: Start from this basis (an earlier solve's ``basis`` or :meth:`basis`, any
                right-hand side); ``None`` starts from the slack basis.
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
        highs = linprog(self.cost, A_ub=self.a_ub, b_ub=b_ub, A_eq=self.a_eq, b_eq=b_eq, bounds=bounds, method="highs")
        return _from_linprog(highs)

    def _sift(
        self, rhs: np.ndarray, start: Basis | None, working_size: int, max_iterations: int
    ) -> BoxedLPResult | None:
        """Sifting rounds of the dual simplex; ``None`` when HiGHS should decide instead."""
        state = self._start_state(start, working_size)
        if state is None:
            return None
        basic = state.basic.copy()
        # The cached state is shared by every solve from the same start: work on copies of what changes.
        at_upper, working = state.at_upper.copy(), state.working.copy()
        closeness = state.closeness
        # The duals at which `closeness` was measured: a held column's reduced cost moves by at most
        # ||y - anchor|| ||a_j|| from there (Cauchy-Schwarz), so only a column whose closeness is below
        # that distance can have changed sign; the others need no pricing after a round.
        anchor = state.duals
        slack_tolerance = (
            _PRIMAL_TOLERANCE * np.maximum(np.abs(rhs), 1.0) + _ACTIVITY_TOLERANCE * self._largest_activity
        )
        iterations = 0
        for round_index in range(_MAX_ROUNDS):
            if round_index == 0:
                columns, held_activity_and_cost = state.columns, state.held_activity_and_cost
            else:
                columns = np.flatnonzero(working)
                held_activity_and_cost = self._held_activity_and_cost(at_upper, columns)
            # The working columns one after another, then the slacks' identity rows: gathered straight
            # into place ("clip" mode writes to `out` unbuffered; the indices are valid anyway).
            by_column = np.empty((len(columns) + self.num_rows, self.num_rows))
            np.take(self._columns_by_row, columns, axis=0, out=by_column[: len(columns)], mode="clip")
            by_column[len(columns) :] = self._identity
            local = _WorkingLP(
                cost=self.cost[columns],
                by_column=by_column,
                largest_entry=float(self._largest_entries[columns].max(initial=0.0)),
                rhs=rhs - held_activity_and_cost[:-1],
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
            if outcome.status == "infeasible":
                if working.all():
                    return None  # HiGHS confirms the verdict with its own message
                reduced = self._reduced_costs(outcome.duals)
                # Columns held at a bound may be what makes the working LP infeasible: free more of them.
                working[_smallest(np.where(working, np.inf, np.abs(reduced)), int(working.sum()))] = True
                continue
            # Held columns whose reduced cost points to the other bound (working columns are optimal),
            # among those whose sign may have changed since the anchor.
            drift = float(np.linalg.norm(outcome.duals - anchor))
            suspect_mask = np.less_equal(closeness, drift, out=self._suspects)
            suspect_mask[columns] = False
            suspects = np.flatnonzero(suspect_mask)
            suspect_reduced = self.cost[suspects] - np.take(self._columns_by_row, suspects, axis=0) @ outcome.duals
            wrong_bound = np.where(
                at_upper[suspects], suspect_reduced > self.dual_tolerance, suspect_reduced < -self.dual_tolerance
            )
            if not wrong_bound.any():
                # Dual bound offset sum_j min(0, d_j) u_j: held columns contribute d_j u_j at their upper
                # bound (their reduced cost has the sign of their bound, up to the tolerance) and
                # nothing at zero, which is c^T h - y^T A h for the held vector h; working columns
                # are priced here.
                held_part = float(held_activity_and_cost[-1] - outcome.duals @ held_activity_and_cost[:-1])
                working_reduced = local.cost - local.by_column[: len(columns)] @ outcome.duals
                working_part = float(np.minimum(working_reduced, 0.0) @ local.upper)
                return self._optimum(basic, at_upper, outcome, held_part + working_part, iterations)
            flipped = suspects[wrong_bound]
            at_upper[flipped] = ~at_upper[flipped]
            working[flipped] = True
        return None

    def _start_state(self, start: Basis | None, working_size: int) -> _StartState | None:
        """The first sifting round's state from ``start`` (the slack basis if ``None``), cached per start.

        Everything here depends on the start basis alone, not on the right-hand side, and costs
        about a dozen passes over all N columns; the GA starts many solves from the same remembered
        basis, so the last ``_CACHED_STARTS`` starts keep theirs. ``None`` if the basis is singular.
        """
        key = (id(start), working_size)
        cached = self._start_states.get(key)
        # The entry holds its basis, so the id cannot have been reused by another object meanwhile.
        if cached is not None and cached[0] is start:
            self._start_states.move_to_end(key)
            return cached[1]
        if start is None:
            basic = self.num_columns + np.arange(self.num_rows)
            duals = self._duals(basic)
            if duals is None:
                return None
        else:
            # A Basis's duals came from the same basis matrix: equal to recomputing them, bit for bit.
            basic, duals = start.basic, start.duals
        # A full cache gives its least recently used entry's arrays to this one: fresh length-N arrays
        # cost their page faults (as much again as the passes that fill them).
        recycled = None
        if start is not None and len(self._start_states) >= _CACHED_STARTS:
            recycled = self._start_states.popitem(last=False)[1][1]
        reduced = self._reduced_costs(duals)
        # Nonbasic columns on the bound their reduced cost points to (ties on the cheaper bound).
        closeness = np.abs(reduced, out=None if recycled is None else recycled.closeness)
        at_upper = np.less(reduced, 0.0, out=None if recycled is None else recycled.at_upper)
        ties = closeness <= self.dual_tolerance
        if ties.any():
            at_upper[ties] = self._cost_negative[ties]
        closeness *= self._inverse_norms
        working = _about_smallest(closeness, working_size, out=None if recycled is None else recycled.working)
        working[basic[basic < self.num_columns]] = True
        columns = np.flatnonzero(working)
        state = _StartState(
            basic=basic,
            duals=duals,
            closeness=closeness,
            at_upper=at_upper,
            working=working,
            columns=columns,
            held_activity_and_cost=self._held_activity_and_cost(at_upper, columns),
        )
        if start is not None:
            self._start_states[key] = (start, state)
        return state

    def _held_activity_and_cost(self, at_upper: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Row activities and cost of the held columns (those not in ``columns``, at their bounds), shape ``(m + 1,)``."""
        held = np.multiply(self.upper, at_upper, out=self._scratch)
        held[columns] = 0.0
        return self._rows_and_cost @ held

    def _reduced_costs(self, duals: np.ndarray) -> np.ndarray:
        """``cost - rows^T duals`` in the solver's scratch array (valid until the next call)."""
        reduced = np.dot(duals, self.rows, out=self._reduced)
        return np.subtract(self.cost, reduced, out=reduced)

    def basis(self, basic: np.ndarray) -> Basis | None:
        """The :class:`Basis` with these basic columns, or ``None`` if it is singular or not dual feasible.

        Args:
            basic: Basic column indices, int array of shape ``(m,)`` (see :class:`Basis`).

        Returns:
            The basis with its duals and dual-bound offset (one pass over the columns).
        """
        basic = np.asarray(basic, dtype=np.int64)
        duals = self._duals(basic)
        if duals is None or np.any(duals[np.isinf(self.slack_upper)] > self.dual_tolerance):
            return None
        return self._basis_with(basic, duals, self._reduced_costs(duals))

    def _duals(self, basic: np.ndarray) -> np.ndarray | None:
        inverse = _checked_inverse(_basis_matrix(self.rows, basic))
        if inverse is None:
            return None
        basic_cost = np.where(basic < self.num_columns, self.cost[np.minimum(basic, self.num_columns - 1)], 0.0)
        return inverse.T @ basic_cost

    def _basis_with(self, basic: np.ndarray, duals: np.ndarray, reduced: np.ndarray) -> Basis:
        bound_offset = float(np.minimum(reduced, 0.0, out=self._scratch) @ self.upper)
        return Basis(basic=basic.copy(), duals=duals.copy(), bound_offset=bound_offset)

    def _optimum(
        self, basic: np.ndarray, at_upper: np.ndarray, outcome: _Outcome, bound_offset: float, iterations: int
    ) -> BoxedLPResult:
        structural = basic < self.num_columns
        x = self.upper * at_upper
        basic_columns = basic[structural]
        # Basic values are within the primal tolerance of their bounds; the clip removes that round-off.
        x[basic_columns] = np.clip(outcome.basic_values[structural], 0.0, self.upper[basic_columns])
        return BoxedLPResult(
            x=x,
            fun=float(self.cost @ x),
            status=0,
            message=f"Optimal (dual simplex, {iterations} iterations)",
            duals=outcome.duals,
            iterations=iterations,
            basis=Basis(basic=basic.copy(), duals=outcome.duals.copy(), bound_offset=bound_offset),
        )


@dataclass(frozen=True)
class _StartState:
    """What a solve's first sifting round needs from its start basis (shared: never modified).

    Attributes:
        basic: The start's basic columns, shape ``(m,)``.
        duals: Its duals, shape ``(m,)``.
        closeness: ``|d_j| / ||a_j||`` at those duals, shape ``(N,)``.
        at_upper: Each column on the bound its reduced cost points to, bool, shape ``(N,)``.
        working: Mask of the first working set, bool, shape ``(N,)``.
        columns: Its indices, ``np.flatnonzero(working)``.
        held_activity_and_cost: Row activities and cost of the held columns, shape ``(m + 1,)``.
    """

    basic: np.ndarray
    duals: np.ndarray
    closeness: np.ndarray
    at_upper: np.ndarray
    working: np.ndarray
    columns: np.ndarray
    held_activity_and_cost: np.ndarray


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
    by_column: np.ndarray  # (w + m, m): working column j is row j, then the m slacks (identity rows)
    largest_entry: float  # max |entry| of the working columns
    rhs: np.ndarray
    upper: np.ndarray
    slack_upper: np.ndarray
    dual_tolerance: float
    slack_tolerance: np.ndarray

    def run(self, basic: np.ndarray, at_upper: np.ndarray, max_iterations: int) -> _Outcome:
        """Dual simplex iterations from a basis (nonbasic columns move to the bound their reduced cost picks).

        The row slacks join the structural columns as identity columns (cost 0, upper bound +inf for
        an inequality row, 0 for an equality row), so one ratio test covers both. A column whose
        bounds coincide (an equality slack) is fixed: it never enters. Between refactorisations
        (every ``_REFACTOR_EVERY`` iterations, and before optimality is declared) the inverse,
        duals, reduced costs and row residual are updated, not recomputed.
        """
        num_columns, num_rows = self.by_column.shape
        # The columns in both layouts: one after another (``by_column[j]`` is column j) to pick out a
        # few of them, and row by row for the pivot row's product with all of them (the per-iteration
        # product, fastest on contiguous rows).
        by_column = self.by_column
        columns = np.ascontiguousarray(by_column.T)
        cost = np.concatenate([self.cost, np.zeros(num_rows)])
        upper = np.concatenate([self.upper, self.slack_upper])
        tolerance = np.concatenate([_PRIMAL_TOLERANCE * np.maximum(self.upper, 1.0), self.slack_tolerance])
        movable = upper > 0
        inequality_rows = np.isinf(self.slack_upper)
        pivot_scale = _PIVOT_TOLERANCE * max(1.0, self.largest_entry)
        basic = basic.copy()
        # Work arrays of the iterations (fresh length-w temporaries cost allocations every iteration).
        towards_wrong_sign = np.empty(num_columns)
        # direction_j = +1 for a column at its lower bound, -1 at its upper bound, 0 for a fixed column;
        # room_j = d_j * direction_j >= 0 is how far column j's reduced cost is from its wrong sign.
        direction = np.zeros(num_columns)
        direction[: len(at_upper)] = at_upper
        direction *= -2.0
        direction += 1.0
        direction *= movable
        duals = basic_values = np.zeros(num_rows)
        iteration = 0
        while True:
            inverse = _checked_inverse(by_column.take(basic, axis=0).T)
            if inverse is None:
                return self._outcome("failed", basic, direction, duals, basic_values, iteration)
            duals = inverse.T @ cost.take(basic)
            if (duals[inequality_rows] > self.dual_tolerance).any():
                # A slack's reduced cost -y_r went negative: no longer dual feasible (round-off trouble).
                return self._outcome("failed", basic, direction, duals, basic_values, iteration)
            reduced = cost - duals @ columns
            if iteration == 0:
                # Later iterations keep the alignment: flips and the leaving column's bound follow the step.
                direction = np.where(_aligned(direction < 0, reduced, self.dual_tolerance), -1.0, 1.0) * movable
            room = np.maximum(reduced * direction, 0.0)
            held = np.where(direction < 0, upper, 0.0)
            held[basic] = 0.0
            residual = self.rhs - columns @ held
            basic_upper = upper.take(basic)
            basic_tolerance = tolerance.take(basic)
            for updates in range(_REFACTOR_EVERY):
                basic_values = inverse @ residual
                distance = np.maximum(-basic_values, basic_values - basic_upper)
                outside = distance > basic_tolerance
                num_outside = np.count_nonzero(outside)
                if num_outside == 0:
                    if updates == 0:  # fresh values: the optimum is confirmed
                        return self._outcome("optimal", basic, direction, duals, basic_values, iteration)
                    break
                if iteration == max_iterations:
                    return self._outcome("failed", basic, direction, duals, basic_values, iteration)
                if num_outside == 1:
                    leaving = int(outside.argmax())
                else:
                    # Leaving row: the largest violation per unit norm of its row of B^-1 (dual steepest
                    # edge; compared squared).
                    score = distance * distance
                    score /= (inverse * inverse).sum(axis=1)
                    score[~outside] = -1.0
                    leaving = int(score.argmax())
                to_lower = bool(basic_values[leaving] < 0.0)
                signed_row = -inverse[leaving] if to_lower else inverse[leaving]
                np.dot(signed_row, columns, out=towards_wrong_sign)
                towards_wrong_sign *= direction
                towards_wrong_sign[basic] = 0.0
                pivot_tolerance = pivot_scale * float(np.abs(signed_row).sum())
                step = _ratio_test(towards_wrong_sign, float(distance[leaving]), room, upper, pivot_tolerance)
                if step is None:
                    return self._outcome("infeasible", basic, direction, duals, basic_values, iteration)
                entering, flipped, dual_step = step
                iteration += 1
                # Dual step t along the leaving row: y += t rho, and every room shrinks by t times its
                # pace; passed (flipped) columns changed sign and bound, so their room is mirrored.
                duals = duals + dual_step * signed_row
                towards_wrong_sign *= dual_step
                room -= towards_wrong_sign
                # Primal side: flipped columns change the held activity; the leaving column is held at
                # the bound it leaves to, the entering one is no longer held.
                if flipped.size:
                    flipped_direction = direction.take(flipped)
                    room[flipped] = -room.take(flipped)
                    residual = residual - (upper.take(flipped) * flipped_direction) @ by_column.take(flipped, axis=0)
                    direction[flipped] = -flipped_direction
                leaving_column = int(basic[leaving])
                room[leaving_column] = dual_step
                if movable[leaving_column]:
                    direction[leaving_column] = 1.0 if to_lower else -1.0
                    if not to_lower:
                        residual = residual - by_column[leaving_column] * upper[leaving_column]
                room[entering] = 0.0
                entering_column = by_column[entering]
                if direction[entering] < 0:
                    residual = residual + entering_column * upper[entering]
                basic[leaving] = entering
                basic_upper[leaving] = upper[entering]
                basic_tolerance[leaving] = tolerance[entering]
                # Product-form update of B^-1 for the column exchange.
                pivot_column = inverse @ entering_column
                pivot = float(pivot_column[leaving])
                if abs(pivot) < _PIVOT_TOLERANCE:
                    break  # refactorise (and recheck the basis) rather than divide by a tiny pivot
                pivot_row = inverse[leaving] / pivot
                inverse -= pivot_column[:, None] * pivot_row
                inverse[leaving] = pivot_row

    def _outcome(
        self,
        status: str,
        basic: np.ndarray,
        direction: np.ndarray,
        duals: np.ndarray,
        basic_values: np.ndarray,
        iterations: int,
    ) -> _Outcome:
        at_upper = direction[: len(self.cost)] < 0
        return _Outcome(status, basic, at_upper, duals, basic_values, iterations)


def _ratio_test(
    towards_wrong_sign: np.ndarray, excess: float, room: np.ndarray, upper: np.ndarray, pivot_tolerance: float
) -> tuple[int, np.ndarray, float] | None:
    """Bound-flipping ratio test: the entering column, the columns that flip, and the dual step.

    The dual moves along the leaving row of B^-1; column j's reduced cost moves towards its wrong sign
    at pace ``towards_wrong_sign[j]`` and reaches it at step ``room[j] / towards_wrong_sign[j]``, its
    breakpoint. The dual objective's slope starts at the leaving variable's bound violation
    ``excess`` and drops by the pace times the column's bound range (``upper``; +inf for a slack) at
    each breakpoint passed. The column whose breakpoint makes the slope non-positive enters; the
    columns passed before it flip to their other bound. ``None`` when no breakpoint does: the dual is
    unbounded and the LP infeasible.
    """
    # Only eligible columns (moving towards their wrong sign) have breakpoints: work on those alone.
    # (Array methods rather than np.* functions: this runs every iteration on small arrays, where the
    # functions' dispatch costs as much as the work.)
    eligible = (towards_wrong_sign > pivot_tolerance).nonzero()[0]
    num_eligible = eligible.size
    if num_eligible == 0:
        return None
    pace = towards_wrong_sign.take(eligible)
    ratios = room.take(eligible)
    ratios /= pace
    count = min(_FIRST_SORTED_BREAKPOINTS, num_eligible)
    while True:
        if count == num_eligible:
            nearest = ratios.argsort(kind="stable")
        else:
            nearest = ratios.argpartition(count)[:count]
            nearest = nearest.take(ratios.take(nearest).argsort(kind="stable"))
        # Slope drops of the sorted breakpoints only (not of every eligible column).
        nearest_pace = pace.take(nearest)
        slope_drops = nearest_pace * upper.take(eligible.take(nearest))
        crossing = int(slope_drops.cumsum().searchsorted(excess, side="left"))
        if crossing < count or count == num_eligible:
            break
        count = min(4 * count, num_eligible)
    if crossing == count:
        return None
    nearest_ratios = ratios.take(nearest[: crossing + 1])
    crossing_ratio = float(nearest_ratios[crossing])
    tie_floor = crossing_ratio - 1e-12 * (1.0 + crossing_ratio)
    if crossing == 0 or nearest_ratios[crossing - 1] < tie_floor:
        chosen = crossing  # no breakpoint tied with the crossing one (the usual case)
    else:
        # Among breakpoints tied with the crossing one, the largest pivot enters (a better-conditioned basis).
        tied = np.flatnonzero(nearest_ratios >= tie_floor)
        chosen = int(tied[np.argmax(nearest_pace[tied])])
    return int(eligible[nearest[chosen]]), eligible[nearest[:chosen]], float(nearest_ratios[chosen])


def single_blas_thread() -> AbstractContextManager[Any]:
    """A context in which BLAS runs on one thread.

    The products of the dual simplex are m-row matrix-vector products, memory-bound: BLAS threads
    only add synchronisation, and the idle ones spin for a while after each call, taking a core from
    the solver (on two shared cores the solve ran 1.8x slower, single products up to 30x). Wrap every
    call that mixes BLAS with the solver, not only the solver: a threaded call just before it leaves
    spinning threads behind. Nested in another such context on the same thread it does nothing
    (setting the limit costs about 70 us, twice per LP solve otherwise).
    """
    if getattr(_blas_limit, "active", False):
        return nullcontext()
    return _limited_blas()


_blas_limit = threading.local()


@contextmanager
def _limited_blas() -> Iterator[None]:
    with _thread_pools().limit(limits=1, user_api="blas"):
        _blas_limit.active = True
        try:
            yield
        finally:
            _blas_limit.active = False


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
    return np.where(np.abs(reduced) > tolerance, reduced < 0, at_upper)


def _smallest(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` smallest values, in no particular order."""
    if count >= len(values):
        return np.arange(len(values))
    return np.argpartition(values, count)[:count]


def _about_smallest(values: np.ndarray, count: int, out: np.ndarray | None = None) -> np.ndarray:
    """Mask of about the ``count`` smallest values (all values up to a cut): faster than a full partition.

    The cut is the matching order statistic of an evenly strided sample of at least ``4 * count``
    values (all of them when there are few), so the mask is deterministic and its size close to
    ``count``; the working set it starts is only a guess anyway (sifting adds what it misses).
    The mask is written into ``out`` (a bool array shaped like ``values``) when given.
    """
    if count >= len(values):
        mask = np.empty(len(values), dtype=bool) if out is None else out
        mask.fill(True)
        return mask
    stride = max(1, len(values) // (4 * count))
    sample = values[::stride]
    rank = min(len(sample) - 1, count // stride)
    return np.less_equal(values, np.partition(sample, rank)[rank], out=out)


def _from_linprog(result: OptimizeResult) -> BoxedLPResult:
    if result.status != 0:
        return BoxedLPResult(
            x=None,
            fun=float("nan"),
            status=result.status,
            message=result.message,
            duals=None,
            iterations=0,
            basis=None,
        )
    duals = np.concatenate([result.ineqlin.marginals, result.eqlin.marginals])
    return BoxedLPResult(
        x=result.x, fun=float(result.fun), status=0, message=result.message, duals=duals, iterations=0, basis=None
    )
