"""Per-sample weights from the category-wise influence matrix: the LP of Pareto-LP-GA.

From "What Is The Performance Ceiling of My Classifier?".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lightning_pareto.pareto._arrays import as_class_indices, as_float_array, as_influence_matrix
from lightning_pareto.pareto._dual_simplex import Basis, BoxedLP, BoxedLPResult, single_blas_thread

Scale = Literal["mean_abs", "none"]
SolveStatus = Literal["optimal", "infeasible", "unbounded", "error"]

# Levels: LPs on max(1,000, n / 5) random samples, then ten times more at each level, then all samples.
# (At n = 50,000 a 1,000-sample level before the 10,000-sample one cost more than it saved: the
# full-level solves took as many iterations without it.)
_FIRST_LEVEL_SAMPLES = 1000
_FIRST_LEVEL_SHARE = 5
_LEVEL_GROWTH = 10
# Columns with the smallest reduced costs in the dual simplex's first working set (see _dual_simplex.py).
_WORKING_SIZE = 5000
# Full-level bases remembered before solves skip the smaller levels.
_WARM_POOL = 100

MIN_RELATIVE_GAIN = 1e-9
"""Smallest predicted gain, in units of the class's mean absolute influence, that counts as a gain."""

_LINPROG_STATUS: dict[int, SolveStatus] = {0: "optimal", 1: "error", 2: "infeasible", 3: "unbounded", 4: "error"}


@dataclass(frozen=True, eq=False)
class WeightSolution:
    """Result of one LP solve.

    Attributes:
        weights: Per-sample weights ``w = 1 + delta``, float64 array of shape ``(n,)`` with mean one and
            ``w_min <= w <= w_max``; ``None`` unless ``status == "optimal"``.
        predicted_gain: First-order predicted gain of every class, ``Delta_c = I[:, c]^T delta / n`` in
            the units of the influence matrix (a predicted decrease of class c's validation loss),
            float64 array of shape ``(K,)``; all NaN unless ``status == "optimal"``.
        status: ``"optimal"``, ``"infeasible"``, ``"unbounded"`` or ``"error"`` (solver failure).
        reason: Why there are no weights, or why the optimum is uniform; empty when weights improve.
        objective: The maximised sum of target gains on the common scale,
            ``sum_{t in targets} Delta_t / scale[t]`` (NaN unless optimal).
        scale: Per-class divisor used for the objective, float64 array of shape ``(K,)``.
        thresholds: Allowed loss ``tau_c`` per class in the influence matrix's units, float64 array of
            shape ``(K,)``; NaN at target classes.
        trust: Trust radius ``rho`` of the L1 constraint ``||delta||_1 <= rho * n``.
        targets: Target class indices.
    """

    weights: np.ndarray | None
    predicted_gain: np.ndarray
    status: SolveStatus
    reason: str
    objective: float
    scale: np.ndarray
    thresholds: np.ndarray
    trust: float
    targets: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """Returns everything but the weights as JSON-serialisable builtins (NaN stays a float)."""
        return {
            "status": self.status,
            "reason": self.reason,
            "objective": self.objective,
            "predicted_gain": self.predicted_gain.tolist(),
            "scale": self.scale.tolist(),
            "thresholds": self.thresholds.tolist(),
            "trust": self.trust,
            "targets": list(self.targets),
        }


class WeightLP:
    """The reweighting LP built once for an influence matrix and reused for many thresholds.

    With ``w = 1 + delta`` and ``Delta_c = I[:, c]^T delta / n`` it solves::

        maximise    sum_{t in targets} Delta_t / scale_t
        subject to  Delta_c >= -tau_c        for every non-target class c
                    Delta_t >= 0             for every target t (no target is traded for another)
                    sum(delta) = 0,  w_min <= 1 + delta_i <= w_max,  ||delta||_1 <= trust * n

    ``delta = p - m`` with ``p, m >= 0`` turns the L1 ball into one linear row, so the LP has 2n
    box-bounded columns and only K + 2 rows, built once; only the right-hand side changes between
    solves. Rows hold ``I[i, c] / mean_i |I[i, c]|`` so absolute tolerances mean the same for every
    class. LPs are solved exactly by a dual simplex for few rows and many boxed columns
    (``_dual_simplex.py``) on nested random subsets of samples (max(1,000, n / 5), then ten times
    more at each level, then all): every row is a sum over samples, so a subset's LP with right-hand sides scaled
    by its share has nearly the same duals, and its optimal basis starts the next level. Every
    optimal basis is remembered: the GA's candidates share the matrix and costs, so an earlier
    solve's basis is a start for any later one, and each level starts from whichever remembered
    basis (or the previous level's) has the best dual bound for the new right-hand side. Once the
    full level has remembered ``_WARM_POOL`` bases, solves start there directly.

    Args:
        influence: Influence matrix, array-like or tensor of shape ``(n, K)``, finite.
        targets: Target class indices (non-empty, distinct, in ``[0, K)``).
        w_min: Smallest allowed weight, in ``[0, 1]``.
        w_max: Largest allowed weight, at least 1.
        scale: ``"mean_abs"`` divides each target column by its mean absolute value before summing
            (classes count equally whatever their influence magnitude); ``"none"`` sums raw gains.
        sifting: Solve by the nested dual simplex (default); ``False`` hands every LP to HiGHS whole,
            which gives the same optimum more slowly (kept for checks and benchmarks).

    Attributes:
        targets: Target class indices.
        non_targets: The other classes, in increasing order (the order of per-non-target thresholds).
        column_scale: Mean absolute influence per class, float64 array of shape ``(K,)`` (1 for an
            all-zero column): the unit of thresholds in :func:`search_weights` and of the rows.
        scale: The objective's per-class divisor (``column_scale`` or ones), shape ``(K,)``.

    Raises:
        ValueError: On a bad matrix, targets, weight box or scale (the message names the argument).
    """

    def __init__(
        self,
        influence: Any,
        targets: Iterable[int] | int,
        *,
        w_min: float = 0.0,
        w_max: float = 3.0,
        scale: Scale = "mean_abs",
        sifting: bool = True,
    ) -> None:
        matrix = as_influence_matrix(influence, name="influence")
        num_samples, num_classes = matrix.shape
        self.targets = as_class_indices(targets, num_classes, name="targets")
        self.non_targets = tuple(c for c in range(num_classes) if c not in self.targets)
        if not (np.isfinite(w_min) and 0.0 <= w_min <= 1.0):
            raise ValueError(f"`w_min` must lie in [0, 1] so that uniform weights are allowed; got {w_min!r}.")
        if not (np.isfinite(w_max) and w_max >= 1.0):
            raise ValueError(
                f"`w_max` must be a finite number >= 1 so that uniform weights are allowed; got {w_max!r}."
            )
        if scale not in ("mean_abs", "none"):
            raise ValueError(f"`scale` must be 'mean_abs' or 'none'; got {scale!r}.")

        self.influence = matrix
        self.w_min, self.w_max = float(w_min), float(w_max)
        mean_abs = np.abs(matrix).mean(axis=0)
        # An all-zero column is left unscaled: its rows and gains are zero anyway.
        self.column_scale = np.where(mean_abs > 0, mean_abs, 1.0)
        self.scale = self.column_scale.copy() if scale == "mean_abs" else np.ones(num_classes)
        # |Delta_c| <= max_i |I_ic| * ||delta||_1 / n: a cap that makes an infinite threshold non-binding.
        self._max_row_loss = np.abs(matrix).max(axis=0) / self.column_scale

        # Columns [p, m] with delta = p - m. Rows: -Delta_c * n / scale_c per class (non-targets, then
        # targets), the trust row sum(p + m), and the equality sum(p - m) = 0.
        row_classes = list(self.non_targets + self.targets)
        loss_rows = -(matrix[:, row_classes] / self.column_scale[row_classes]).T
        ones = np.ones((1, num_samples))
        gain_direction = (matrix[:, self.targets] / self.scale[list(self.targets)]).sum(axis=1)
        a_ub = np.block([[loss_rows, -loss_rows], [ones, ones]])
        a_eq = np.hstack([ones, -ones])
        cost = np.concatenate([-gain_direction, gain_direction])
        upper = np.concatenate([np.full(num_samples, self.w_max - 1.0), np.full(num_samples, 1.0 - self.w_min)])
        self._sifting = sifting
        # Per level: its sample count, its sorted column ids and its LP (all samples only, without sifting).
        self._levels: list[tuple[int, np.ndarray, BoxedLP]] = []
        for samples in _nested_subsets(num_samples) if sifting else [np.arange(num_samples)]:
            columns = np.concatenate([samples, samples + num_samples])
            lp = BoxedLP(cost[columns], a_ub[:, columns], a_eq[:, columns], upper[columns])
            self._levels.append((len(samples), columns, lp))
        # Optimal bases of earlier solves, per level: each is a start for any other right-hand side.
        self._pools = [_BasisPool() for _ in self._levels]
        # Every basis this LP's own solves added to the pools, in order (see bases_found_since).
        self._found: list[tuple[int, Basis]] = []

    @property
    def num_samples(self) -> int:
        """Number of training samples n."""
        return self.influence.shape[0]

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return self.influence.shape[1]

    def expand_thresholds(self, thresholds: Any) -> np.ndarray:
        """Checks thresholds and returns them per class.

        Args:
            thresholds: Allowed predicted loss ``tau_c`` of the non-target classes, in the influence
                matrix's units: a scalar for all of them, an array of shape ``(K - len(targets),)`` in
                increasing class order, or of shape ``(K,)`` (target entries are ignored). ``+inf``
                removes a class's constraint; a negative value demands a gain of at least ``-tau_c``.

        Returns:
            Float64 array of shape ``(K,)`` with NaN at the target classes.

        Raises:
            ValueError: If the shape is wrong or a non-target threshold is NaN or ``-inf``.
        """
        values = as_float_array(thresholds)
        per_class = np.full(self.num_classes, np.nan)
        non_targets = list(self.non_targets)
        if values.ndim == 0 or values.shape == (len(non_targets),):
            per_class[non_targets] = values
        elif values.shape == (self.num_classes,):
            per_class[non_targets] = values[non_targets]
        else:
            raise ValueError(
                f"`thresholds` must be a scalar, or have {len(non_targets)} entries (one per non-target class "
                f"{non_targets}) or {self.num_classes} (one per class); got shape {values.shape}."
            )
        checked = per_class[non_targets]
        if np.any(np.isnan(checked)) or np.any(checked == -np.inf):
            raise ValueError(f"`thresholds` of non-target classes must not be NaN or -inf; got {checked.tolist()}.")
        return per_class

    def solve(self, thresholds: Any, trust: float = 0.5) -> WeightSolution:
        """Solves the LP for given thresholds and trust radius.

        Args:
            thresholds: See :meth:`expand_thresholds`.
            trust: Trust radius ``rho > 0``: ``||delta||_1 <= rho * n`` (mean absolute weight change).

        Returns:
            A :class:`WeightSolution`; an infeasible or failed solve has ``weights=None`` and a reason.

        Raises:
            ValueError: On malformed thresholds or a non-positive or non-finite trust.
        """
        per_class = self.expand_thresholds(thresholds)
        if not (np.isfinite(trust) and trust > 0):
            raise ValueError(f"`trust` must be a finite number > 0 (mean |w - 1| allowed); got {trust!r}.")
        b_ub_per_sample = self.row_bounds_per_sample(per_class, trust)
        with single_blas_thread():
            result = self._solve_nested(b_ub_per_sample)
            delta = None if result.x is None else result.x[: self.num_samples] - result.x[self.num_samples :]
            predicted_gain = None if delta is None else self.influence.T @ delta / self.num_samples
        status = _LINPROG_STATUS.get(result.status, "error")
        num_samples = self.num_samples
        if status != "optimal":
            return WeightSolution(
                weights=None,
                predicted_gain=np.full(self.num_classes, np.nan),
                status=status,
                reason=self._failure_reason(status, per_class, trust, result.message),
                objective=float("nan"),
                scale=self.scale,
                thresholds=per_class,
                trust=float(trust),
                targets=self.targets,
            )
        objective = -result.fun / num_samples
        reason = (
            ""
            if objective > MIN_RELATIVE_GAIN
            else "no reweighting within the trust region and weight box improves the targets to first order"
        )
        return WeightSolution(
            # The clip only removes solver round-off (HiGHS's feasibility tolerance is 1e-7).
            weights=np.clip(1.0 + delta, self.w_min, self.w_max),
            predicted_gain=predicted_gain,
            status=status,
            reason=reason,
            objective=float(objective),
            scale=self.scale,
            thresholds=per_class,
            trust=float(trust),
            targets=self.targets,
        )

    def row_bounds_per_sample(self, per_class: np.ndarray, trust: float) -> np.ndarray:
        """Upper bounds of the LP's inequality rows per sample (a subset of m samples gets m times them).

        Args:
            per_class: Thresholds per class from :meth:`expand_thresholds`.
            trust: Trust radius ``rho > 0``.

        Returns:
            Float64 array: the non-target loss rows, the target rows (0) and the trust row, in the LP's row order.
        """
        non_targets = list(self.non_targets)
        # An infinite threshold is capped where it cannot bind: no trust-region step can lose more.
        loss_bounds = np.minimum(
            per_class[non_targets] / self.column_scale[non_targets], self._max_row_loss[non_targets] * trust + 1.0
        )
        return np.concatenate([loss_bounds, np.zeros(len(self.targets)), [trust]])

    @property
    def bases_found(self) -> int:
        """Number of optimal bases this LP's own solves have remembered (a mark for ``bases_found_since``)."""
        return len(self._found)

    def bases_found_since(self, mark: int) -> list[tuple[int, Basis]]:
        """``(level, basis)`` of the bases remembered since ``mark``: starts another copy of this LP can adopt."""
        return self._found[mark:]

    def adopt_bases(self, bases: list[tuple[int, Basis]]) -> None:
        """Remember optimal bases found by another copy of this LP (same data, e.g. a forked worker's)."""
        for level, basis in bases:
            self._pools[level].add(basis)

    def _solve_nested(self, b_ub_per_sample: np.ndarray) -> BoxedLPResult:
        full_lp = self._levels[-1][2]
        if not self._sifting:
            return full_lp.solve_with_highs(b_ub_per_sample * self.num_samples, np.zeros(1))
        last = len(self._levels) - 1
        # The smaller levels find good starts while the pool of full-level bases is small; once it
        # holds _WARM_POOL bases, one of them is usually the better start and they are skipped.
        first = 0 if len(self._pools[last]) < _WARM_POOL else last
        lifted: Basis | None = None
        for level in range(first, last + 1):
            num_level_samples, columns, lp = self._levels[level]
            b_ub = b_ub_per_sample * num_level_samples
            # Start from whichever known basis bounds this optimum best: an earlier solve's at this
            # level, or this solve's previous level.
            start = self._pools[level].best_start(np.append(b_ub, 0.0), extra=lifted)
            result = lp.solve(b_ub, np.zeros(1), start=start, working_size=_WORKING_SIZE)
            if result.basis is None:
                if level == last:
                    return result
                # A subset's verdict (or HiGHS's answer) is not the full LP's: solve all samples afresh.
                return full_lp.solve(b_ub_per_sample * self.num_samples, np.zeros(1), working_size=_WORKING_SIZE)
            self._pools[level].add(result.basis)
            self._found.append((level, result.basis))
            if level < last:
                next_columns, next_lp = self._levels[level + 1][1:]
                lifted = next_lp.basis(_lifted(result.basis.basic, columns, next_columns))
        return result

    def _failure_reason(self, status: SolveStatus, per_class: np.ndarray, trust: float, message: str) -> str:
        if status == "infeasible":
            demanded = {c: float(-per_class[c]) for c in self.non_targets if per_class[c] < 0}
            return (
                f"infeasible: no weights in [{self.w_min}, {self.w_max}] with mean |w - 1| <= {trust} give the "
                f"non-target classes the demanded predicted gains {demanded} (negative thresholds); raise those "
                "thresholds (any tau >= 0 is feasible), or widen `trust` or the weight box"
            )
        return f"{status}: HiGHS reported: {message}"


def _lifted(basic: np.ndarray, columns: np.ndarray, superset: np.ndarray) -> np.ndarray:
    """Basic column indices of the LP on ``columns`` as indices of the LP on ``superset`` (sorted ids)."""
    num_columns = len(columns)
    return np.where(
        basic < num_columns,
        np.searchsorted(superset, columns[np.minimum(basic, num_columns - 1)]),
        basic - num_columns + len(superset),
    )


class _BasisPool:
    """Optimal bases of one level's LP; picks the start with the best dual bound for a right-hand side."""

    def __init__(self) -> None:
        self._bases: list[Basis] = []
        self._duals = np.zeros((0, 0))
        self._offsets = np.zeros(0)

    def __len__(self) -> int:
        return len(self._bases)

    def add(self, basis: Basis) -> None:
        """Remembers an optimal basis."""
        if len(self._bases) == len(self._offsets):
            # Grow the stacked arrays by doubling (np.resize keeps the leading rows).
            capacity = max(16, 2 * len(self._bases))
            self._duals = np.resize(self._duals, (capacity, len(basis.duals)))
            self._offsets = np.resize(self._offsets, capacity)
        self._duals[len(self._bases)] = basis.duals
        self._offsets[len(self._bases)] = basis.bound_offset
        self._bases.append(basis)

    def best_start(self, rhs: np.ndarray, extra: Basis | None = None) -> Basis | None:
        """The remembered basis (or ``extra``) with the largest dual bound for ``rhs``; ``None`` if none."""
        best, best_bound = extra, -np.inf if extra is None else extra.dual_bound(rhs)
        if self._bases:
            bounds = self._duals[: len(self._bases)] @ rhs + self._offsets[: len(self._bases)]
            index = int(np.argmax(bounds))
            if bounds[index] > best_bound:
                best = self._bases[index]
        return best


def _nested_subsets(num_samples: int) -> list[np.ndarray]:
    """Sample indices of the levels: nested random subsets growing ten-fold, then all samples."""
    order = np.random.default_rng(0).permutation(num_samples)
    sizes = []
    size = max(_FIRST_LEVEL_SAMPLES, num_samples // _FIRST_LEVEL_SHARE)
    while size < num_samples:
        sizes.append(size)
        size *= _LEVEL_GROWTH
    return [np.sort(order[:size]) for size in sizes] + [np.arange(num_samples)]


def solve_weights(
    influence: Any,
    targets: Iterable[int] | int,
    thresholds: Any,
    *,
    w_min: float = 0.0,
    w_max: float = 3.0,
    trust: float = 0.5,
    scale: Scale = "mean_abs",
) -> WeightSolution:
    """Finds per-sample weights that raise the target classes while bounding the others' predicted loss.

    Builds a :class:`WeightLP` and solves it once; build the :class:`WeightLP` yourself to solve for
    many thresholds on the same matrix.

    Args:
        influence: Category-wise influence matrix, array-like or torch tensor of shape ``(n, K)``,
            ``I[i, c] > 0`` meaning up-weighting sample i lowers class c's validation loss.
        targets: Class indices to improve.
        thresholds: Allowed predicted loss ``tau_c >= 0`` of each non-target class in the influence
            matrix's units (``Delta_c >= -tau_c``): a scalar, one value per non-target class (increasing
            class order) or one per class (target entries ignored). ``+inf`` drops a constraint; a
            negative value demands a gain, which may make the LP infeasible.
        w_min: Smallest weight, in ``[0, 1]`` (0 allows dropping a sample).
        w_max: Largest weight, at least 1.
        trust: Trust radius ``rho > 0``, ``||w - 1||_1 <= rho * n``: the linear prediction only holds
            near uniform weights.
        scale: Common scale of the target gains in the objective, ``"mean_abs"`` (each column divided
            by its mean absolute value) or ``"none"``.

    Returns:
        A :class:`WeightSolution`. Infeasible thresholds give ``status="infeasible"`` and a reason, not
        an exception.

    Raises:
        ValueError: If an argument is malformed (the message names it).
    """
    return WeightLP(influence, targets, w_min=w_min, w_max=w_max, scale=scale).solve(thresholds, trust)
