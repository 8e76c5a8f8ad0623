"""The dual simplex gives HiGHS's optimum (objective, feasibility, duals) from cold and warm starts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from lightning_pareto.pareto._dual_simplex import BoxedLP, _about_smallest


def _random_boxed_lp(seed: int, num_columns: int, num_ub: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a_ub = rng.normal(size=(num_ub, num_columns))
    a_ub[-1] = 1.0  # a budget row: sum x <= budget
    return {
        "cost": rng.normal(size=num_columns),
        "a_ub": a_ub,
        "b_ub": np.concatenate([rng.uniform(1.0, 5.0, num_ub - 1), [num_columns / 5]]),
        "a_eq": np.where(rng.random((1, num_columns)) < 0.5, 1.0, -1.0),
        "b_eq": np.zeros(1),
        "upper": rng.uniform(0.5, 2.0, num_columns),
    }


def _highs(problem: dict[str, np.ndarray]):
    bounds = np.column_stack([np.zeros_like(problem["upper"]), problem["upper"]])
    return linprog(
        problem["cost"],
        A_ub=problem["a_ub"],
        b_ub=problem["b_ub"],
        A_eq=problem["a_eq"],
        b_eq=problem["b_eq"],
        bounds=bounds,
        method="highs",
    )


def _boxed(problem: dict[str, np.ndarray]) -> BoxedLP:
    return BoxedLP(problem["cost"], problem["a_ub"], problem["a_eq"], problem["upper"])


def _assert_optimal_and_feasible(result, problem: dict[str, np.ndarray], expected) -> None:
    assert result.status == 0
    assert result.fun == pytest.approx(expected.fun, rel=1e-9, abs=1e-9)
    x = result.x
    assert np.all(x >= 0.0) and np.all(x <= problem["upper"])
    assert np.all(problem["a_ub"] @ x <= problem["b_ub"] + 1e-8)
    np.testing.assert_allclose(problem["a_eq"] @ x, problem["b_eq"], atol=1e-8)
    # A vertex: at most one column strictly inside its box per row.
    inside = (x > 1e-9) & (x < problem["upper"] - 1e-9)
    assert inside.sum() <= len(problem["b_ub"]) + len(problem["b_eq"])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("num_columns", "working_size"), [(40, 2000), (600, 50), (3000, 200), (3000, 10_000)])
def test_cold_start_reaches_the_highs_optimum(seed: int, num_columns: int, working_size: int) -> None:
    problem = _random_boxed_lp(seed, num_columns)
    expected = _highs(problem)
    assert expected.status == 0
    result = _boxed(problem).solve(problem["b_ub"], problem["b_eq"], working_size=working_size)
    assert result.iterations > 0 and result.basis is not None  # the dual simplex decided, not the fallback
    _assert_optimal_and_feasible(result, problem, expected)
    # Non-degenerate random LPs have unique duals: linprog's marginals.
    np.testing.assert_allclose(result.duals[:4], expected.ineqlin.marginals, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(result.duals[4:], expected.eqlin.marginals, rtol=1e-7, atol=1e-9)


def test_warm_starts_from_other_right_hand_sides_reach_each_optimum_in_fewer_iterations() -> None:
    problem = _random_boxed_lp(7, 3000, num_ub=11)
    boxed = _boxed(problem)
    first = boxed.solve(problem["b_ub"], problem["b_eq"])
    rng = np.random.default_rng(8)
    warm_iterations, cold_iterations = 0, 0
    for _ in range(5):
        changed = dict(problem, b_ub=problem["b_ub"] * rng.uniform(0.99, 1.01, 11))
        expected = _highs(changed)
        warm = boxed.solve(changed["b_ub"], changed["b_eq"], start=first.basis)
        cold = boxed.solve(changed["b_ub"], changed["b_eq"])
        _assert_optimal_and_feasible(warm, changed, expected)
        _assert_optimal_and_feasible(cold, changed, expected)
        warm_iterations += warm.iterations
        cold_iterations += cold.iterations
    assert warm_iterations < cold_iterations


def test_degenerate_ties_still_give_the_optimum() -> None:
    # Duplicated columns and many zero costs: ties in every ratio test.
    problem = _random_boxed_lp(9, 400)
    for key in ("a_ub", "a_eq"):
        problem[key] = np.hstack([problem[key], problem[key]])
    problem["cost"] = np.concatenate([problem["cost"], problem["cost"]])
    problem["cost"][::3] = 0.0
    problem["upper"] = np.concatenate([problem["upper"], problem["upper"]])
    result = _boxed(problem).solve(problem["b_ub"], problem["b_eq"], working_size=100)
    _assert_optimal_and_feasible(result, problem, _highs(problem))


def test_an_infeasible_lp_is_reported_by_highs() -> None:
    problem = _random_boxed_lp(10, 300)
    problem["a_ub"][0] = -1.0
    problem["b_ub"][0] = -10.0 * problem["upper"].sum()  # sum x >= 10 * sum(upper): impossible
    result = _boxed(problem).solve(problem["b_ub"], problem["b_eq"], working_size=20)
    assert result.status == 2
    assert result.x is None and result.duals is None and result.basis is None


def test_the_iteration_cap_hands_the_lp_to_highs() -> None:
    problem = _random_boxed_lp(11, 500)
    result = _boxed(problem).solve(problem["b_ub"], problem["b_eq"], max_iterations=0)
    assert result.iterations == 0 and result.basis is None
    _assert_optimal_and_feasible(result, problem, _highs(problem))


@pytest.mark.parametrize("count", [1, 7, 100, 999, 5000])
def test_about_smallest_keeps_about_count_smallest_values_deterministically(count: int) -> None:
    values = np.abs(np.random.default_rng(count).normal(size=4000))
    values[::50] = 0.0  # ties
    mask = _about_smallest(values, count)
    if count <= 1000:  # sampled cut: close to count (the 80 tied zeros always go in)
        assert 0.5 * count <= mask.sum() <= 2 * count + 80
    else:  # a sample of 4 * count values is all of them: exact
        assert mask.sum() == min(count, len(values)) or mask.all()
    # A cut: every kept value is no larger than every dropped one.
    if not mask.all():
        assert values[mask].max() <= values[~mask].min()
    np.testing.assert_array_equal(mask, _about_smallest(values.copy(), count))
    out = np.zeros(len(values), dtype=bool)
    assert _about_smallest(values, count, out=out) is out
    np.testing.assert_array_equal(out, mask)


def _dual_bound_offset_from_definition(problem: dict[str, np.ndarray], duals: np.ndarray) -> float:
    """``sum_j min(0, d_j) upper_j`` with ``d = cost - A^T y``, from the problem data alone."""
    rows = np.vstack([problem["a_ub"], problem["a_eq"]])
    reduced = problem["cost"] - rows.T @ duals
    return float(np.minimum(reduced, 0.0) @ problem["upper"])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("working_size", [30, 300])
def test_warm_starts_from_distant_right_hand_sides_price_held_columns_correctly(seed: int, working_size: int) -> None:
    # Right-hand sides scaled by up to 3x move the duals far from the start: held columns far from
    # the working set can change sign, which the solver must detect by pricing them after a round.
    problem = _random_boxed_lp(20 + seed, 2000, num_ub=6)
    boxed = _boxed(problem)
    start = boxed.solve(problem["b_ub"], problem["b_eq"], working_size=working_size).basis
    assert start is not None
    rng = np.random.default_rng(seed)
    for _ in range(4):
        changed = dict(problem, b_ub=problem["b_ub"] * rng.uniform(0.3, 3.0, 6))
        expected = _highs(changed)
        assert expected.status == 0
        warm = boxed.solve(changed["b_ub"], changed["b_eq"], start=start, working_size=working_size)
        assert warm.basis is not None  # the dual simplex decided, not the HiGHS fallback
        _assert_optimal_and_feasible(warm, changed, expected)
        np.testing.assert_allclose(warm.duals[:6], expected.ineqlin.marginals, rtol=1e-7, atol=1e-9)
        # The returned basis's dual bound offset is the definition's, and its bound is a lower bound
        # (weak duality) for the original right-hand side, equal to the optimum for its own.
        offset = _dual_bound_offset_from_definition(changed, warm.basis.duals)
        assert warm.basis.bound_offset == pytest.approx(offset, rel=1e-9, abs=1e-9)
        own_rhs = np.concatenate([changed["b_ub"], changed["b_eq"]])
        assert warm.basis.dual_bound(own_rhs) == pytest.approx(expected.fun, rel=1e-9, abs=1e-9)
        original_rhs = np.concatenate([problem["b_ub"], problem["b_eq"]])
        assert warm.basis.dual_bound(original_rhs) <= _highs(problem).fun + 1e-9
        start = warm.basis


def test_solves_from_a_cached_start_match_highs_and_an_uncached_solver() -> None:
    # The first-round state of a start basis is cached: later solves from it must not see what an
    # earlier solve changed, and must give the same answer, bit for bit, as a solver without the cache.
    problem = _random_boxed_lp(30, 3000, num_ub=8)
    boxed = _boxed(problem)
    start = boxed.solve(problem["b_ub"], problem["b_eq"], working_size=200).basis
    assert start is not None
    rng = np.random.default_rng(31)
    right_hand_sides = [problem["b_ub"] * rng.uniform(0.5, 2.0, 8) for _ in range(4)]
    for b_ub in right_hand_sides + right_hand_sides[::-1]:
        changed = dict(problem, b_ub=b_ub)
        cached = boxed.solve(b_ub, problem["b_eq"], start=start, working_size=200)
        uncached = _boxed(problem).solve(b_ub, problem["b_eq"], start=start, working_size=200)
        assert cached.basis is not None  # the dual simplex decided, not the HiGHS fallback
        _assert_optimal_and_feasible(cached, changed, _highs(changed))
        np.testing.assert_array_equal(cached.x, uncached.x)
        assert cached.iterations == uncached.iterations


def test_evicted_starts_are_rebuilt_correctly(monkeypatch: pytest.MonkeyPatch) -> None:
    # With two cached starts, every new start reuses an evicted entry's arrays.
    monkeypatch.setattr("lightning_pareto.pareto._dual_simplex._CACHED_STARTS", 2)
    problem = _random_boxed_lp(32, 2000, num_ub=6)
    boxed = _boxed(problem)
    rng = np.random.default_rng(33)
    starts = []
    for _ in range(4):
        b_ub = problem["b_ub"] * rng.uniform(0.5, 2.0, 6)
        starts.append(boxed.solve(b_ub, problem["b_eq"], working_size=100).basis)
    for start in starts + starts:  # each start again after the cache has evicted it
        result = boxed.solve(problem["b_ub"], problem["b_eq"], start=start, working_size=100)
        assert result.basis is not None
        _assert_optimal_and_feasible(result, problem, _highs(problem))
    assert len(boxed._start_states) == 2


def test_nested_single_blas_thread_contexts_keep_one_thread_until_the_outer_one_ends() -> None:
    from threadpoolctl import threadpool_info

    from lightning_pareto.pareto._dual_simplex import single_blas_thread

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    with single_blas_thread():
        with single_blas_thread():
            assert all(threads == 1 for threads in blas_threads())
        # Leaving the inner context must not restore the threads while the outer one is open.
        assert all(threads == 1 for threads in blas_threads())
    assert blas_threads() == before
    with single_blas_thread():  # usable again after the outer one ended
        assert all(threads == 1 for threads in blas_threads())
    assert blas_threads() == before
