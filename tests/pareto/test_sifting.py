"""The sifting solver gives the full LP's optimum from poor dual guesses, and HiGHS's verdict otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from lightning_pareto.pareto._sifting import solve_boxed_lp


def _random_boxed_lp(seed: int, num_columns: int = 600) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a_ub = rng.normal(size=(4, num_columns))
    a_ub[-1] = 1.0  # a budget row: sum x <= budget
    return {
        "cost": rng.normal(size=num_columns),
        "a_ub": a_ub,
        "b_ub": np.concatenate([rng.uniform(1.0, 5.0, 3), [num_columns / 5]]),
        "a_eq": np.where(rng.random((1, num_columns)) < 0.5, 1.0, -1.0),
        "b_eq": np.zeros(1),
        "upper": rng.uniform(0.5, 2.0, num_columns),
    }


def _full_optimum(problem: dict[str, np.ndarray]) -> float:
    bounds = np.column_stack([np.zeros_like(problem["upper"]), problem["upper"]])
    result = linprog(
        problem["cost"], A_ub=problem["a_ub"], b_ub=problem["b_ub"], A_eq=problem["a_eq"], b_eq=problem["b_eq"],
        bounds=bounds, method="highs",
    )
    assert result.status == 0
    return float(result.fun)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("noise", [0.02, 0.3])
def test_sifting_from_perturbed_duals_reaches_the_full_optimum(seed: int, noise: float) -> None:
    problem = _random_boxed_lp(seed, num_columns=3000)
    full = solve_boxed_lp(**problem, dual_guess=None)
    rng = np.random.default_rng(100 + seed)
    dual_guess = full.duals * (1.0 + noise * rng.normal(size=5))
    result = solve_boxed_lp(**problem, dual_guess=dual_guess, working_size=50)
    assert result.rounds >= 1  # the small LPs decided, not a fallback
    assert result.status == 0
    assert result.fun == pytest.approx(_full_optimum(problem), rel=1e-9)
    x = result.x
    assert np.all(x >= 0) and np.all(x <= problem["upper"])
    assert np.all(problem["a_ub"] @ x <= problem["b_ub"] + 1e-7)
    np.testing.assert_allclose(problem["a_eq"] @ x, problem["b_eq"], atol=1e-7)


def test_a_useless_guess_falls_back_to_the_full_lp() -> None:
    # Zero duals fix every negative-cost column at its bound, far over the budget row, so the small
    # LPs stay infeasible until the working set would be everything.
    problem = _random_boxed_lp(3)
    result = solve_boxed_lp(**problem, dual_guess=np.zeros(5), working_size=20)
    assert result.rounds == 0
    assert result.status == 0
    assert result.fun == pytest.approx(_full_optimum(problem), rel=1e-12)


def test_without_a_guess_it_is_plain_highs() -> None:
    problem = _random_boxed_lp(4)
    result = solve_boxed_lp(**problem, dual_guess=None)
    assert result.rounds == 0
    assert result.fun == pytest.approx(_full_optimum(problem), rel=1e-12)
    assert result.duals is not None and result.duals.shape == (5,)


def test_an_infeasible_lp_is_reported_not_guessed() -> None:
    problem = _random_boxed_lp(5)
    problem["a_ub"][0] = -1.0
    problem["b_ub"][0] = -10.0 * problem["upper"].sum()  # sum x >= 10 * sum(upper): impossible
    result = solve_boxed_lp(**problem, dual_guess=np.zeros(5), working_size=20)
    assert result.status == 2
    assert result.x is None and result.duals is None
