"""The reweighting LP: constraints on the returned weights, hand-solved optima, an independent LP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _pareto_cases import reference_lp_gains, trade_off_influence

from lightning_pareto.pareto import WeightLP, solve_weights

# Four samples, two classes, target 0. Column 0 has mean |I| = 2; sample 0 hurts class 1, sample 3
# helps it, so moving weight from sample 3 to sample 0 trades class 1 for class 0.
HAND_MADE = np.array([[3.0, -1.0], [1.0, 0.0], [-1.0, 0.0], [-3.0, 1.0]])


def _assert_constraints(influence: np.ndarray, solution, targets, tau, w_min, w_max, trust) -> None:
    weights = solution.weights
    num_samples = len(weights)
    delta = weights - 1.0
    gains = influence.T @ delta / num_samples
    np.testing.assert_allclose(solution.predicted_gain, gains, rtol=1e-9, atol=1e-15)
    assert weights.mean() == pytest.approx(1.0, abs=1e-9)
    assert weights.min() >= w_min and weights.max() <= w_max
    assert np.abs(delta).sum() <= trust * num_samples * (1 + 1e-9)
    scale = np.abs(influence).mean(axis=0)
    for c in range(influence.shape[1]):
        if c in targets:
            assert gains[c] >= -1e-9 * scale[c]
        else:
            assert gains[c] >= -tau[c] - 1e-9 * scale[c]


def test_hand_solved_optimum_without_a_binding_class() -> None:
    # Class 1 all zero: only the trust budget binds. With sum|delta| <= 0.5 * 4 = 2, move one unit of
    # weight from sample 3 (I = -3) to sample 0 (I = 3): Delta_0 = (3 + 3) / 4 = 1.5, objective 1.5 / 2.
    influence = HAND_MADE.copy()
    influence[:, 1] = 0.0
    solution = solve_weights(influence, [0], 0.0, trust=0.5)
    assert solution.status == "optimal"
    assert solution.objective == pytest.approx(0.75, abs=1e-9)
    np.testing.assert_allclose(solution.weights, [2.0, 1.0, 1.0, 0.0], atol=1e-9)
    # A wide trust region: the weight box binds instead (w_0 <= 3, w_2, w_3 >= 0): Delta_0 = (6+1+3)/4.
    wide = solve_weights(influence, [0], 0.0, trust=10.0)
    assert wide.objective == pytest.approx(2.5 / 2, abs=1e-9)
    np.testing.assert_allclose(wide.weights, [3.0, 1.0, 0.0, 0.0], atol=1e-9)


def test_hand_solved_optimum_with_a_binding_threshold() -> None:
    # With delta = (a, b, -c, -d): a + b = c + d <= 1 and Delta_1 = -(a + d) / 4 >= -tau = -1/8 give
    # max 3a + b + c + 3d = 2 + 2(a + d) = 3: Delta_0 = 3/4 (objective 3/8), Delta_1 = -1/8 exactly.
    solution = solve_weights(HAND_MADE, [0], [0.125], trust=0.5)
    assert solution.status == "optimal"
    assert solution.objective == pytest.approx(0.375, abs=1e-9)
    np.testing.assert_allclose(solution.predicted_gain, [0.75, -0.125], atol=1e-9)
    _assert_constraints(HAND_MADE, solution, [0], {1: 0.125}, 0.0, 3.0, 0.5)
    np.testing.assert_allclose(solution.scale, [2.0, 0.5])
    np.testing.assert_allclose(solution.thresholds, [np.nan, 0.125])


@pytest.mark.parametrize("num_samples", [300, 3000])
def test_matches_an_independently_formulated_lp(num_samples: int) -> None:
    # 3000 samples go through the nested path (a 1,000-sample level first).
    influence = trade_off_influence(num_samples, 5, seed=num_samples)
    targets = [1, 3]
    scale = np.abs(influence).mean(axis=0)
    tau = {0: 0.02 * scale[0], 2: 0.0, 4: 0.1 * scale[4]}
    solution = solve_weights(influence, targets, [tau[0], tau[2], tau[4]], w_min=0.2, w_max=2.5, trust=0.3)
    expected_objective, expected_gains = reference_lp_gains(influence, targets, tau, w_min=0.2, w_max=2.5, trust=0.3)
    assert solution.status == "optimal"
    assert solution.objective == pytest.approx(expected_objective, rel=1e-7)
    # Target gains can split differently between optimal vertices; their scaled sum cannot.
    assert solution.objective > 0.1
    _assert_constraints(influence, solution, targets, tau, 0.2, 2.5, 0.3)


def test_successive_solves_match_highs_on_each_right_hand_side() -> None:
    # 3000 samples: a 1,000-sample level, then all; every solve after the first starts from an
    # earlier solve's basis. Each optimum must be HiGHS's on the whole LP, a vertex with at most
    # K + 2 fractional samples (weights strictly between the box and 1 + 0).
    influence = trade_off_influence(3000, 5, seed=21)
    lp = WeightLP(influence, [1, 3], w_min=0.2, w_max=2.5)
    reference = WeightLP(influence, [1, 3], w_min=0.2, w_max=2.5, sifting=False)
    rng = np.random.default_rng(22)
    for _ in range(6):
        tau = lp.column_scale[[0, 2, 4]] * 10.0 ** rng.uniform(-3.0, -0.5, 3)
        trust = 10.0 ** rng.uniform(-1.3, -0.3)
        solution = lp.solve(tau, trust)
        expected = reference.solve(tau, trust)
        assert solution.status == expected.status == "optimal"
        assert solution.objective == pytest.approx(expected.objective, rel=1e-9)
        _assert_constraints(influence, solution, [1, 3], dict(zip([0, 2, 4], tau)), 0.2, 2.5, trust)
        fractional = (solution.weights > 0.2 + 1e-9) & (solution.weights < 2.5 - 1e-9)
        fractional &= np.abs(solution.weights - 1.0) > 1e-9
        assert fractional.sum() <= 5 + 2


def test_threshold_forms_agree() -> None:
    influence = trade_off_influence(200, 4, seed=11)
    per_non_target = solve_weights(influence, [2], [1e-5, 2e-5, 3e-5])
    per_class = solve_weights(influence, [2], [1e-5, 2e-5, 123.0, 3e-5])
    assert per_class.objective == pytest.approx(per_non_target.objective, rel=1e-9)
    scalar = solve_weights(influence, [2], 2e-5)
    listed = solve_weights(influence, [2], [2e-5, 2e-5, 2e-5])
    assert scalar.objective == pytest.approx(listed.objective, rel=1e-9)


def test_infinite_threshold_removes_the_constraint() -> None:
    influence = trade_off_influence(200, 3, seed=12)
    free = solve_weights(influence, [0], [np.inf, np.inf])
    expected, _ = reference_lp_gains(influence, [0], {}, w_min=0.0, w_max=3.0, trust=0.5)
    assert free.objective == pytest.approx(expected, rel=1e-7)


def test_larger_thresholds_never_lower_the_objective() -> None:
    lp = WeightLP(trade_off_influence(400, 4, seed=13), [0])
    objectives = [lp.solve(fraction * lp.column_scale[1:], 0.4).objective for fraction in (0.0, 0.01, 0.05, 0.2)]
    assert all(later >= earlier - 1e-12 for earlier, later in zip(objectives, objectives[1:]))
    assert objectives[-1] > objectives[0]


def test_at_the_ceiling_the_best_is_no_gain() -> None:
    first = np.random.default_rng(14).normal(size=50)
    solution = solve_weights(np.stack([first, -first], axis=1), [0], 0.0)
    assert solution.status == "optimal"
    assert solution.objective == pytest.approx(0.0, abs=1e-9)
    assert "no reweighting" in solution.reason
    np.testing.assert_allclose(solution.predicted_gain, 0.0, atol=1e-9)


def test_demanding_more_than_possible_is_infeasible_with_a_reason() -> None:
    influence = trade_off_influence(200, 3, seed=15)
    solution = solve_weights(influence, [0], [-10.0 * np.abs(influence[:, 1]).max(), 0.0], trust=0.1)
    assert solution.status == "infeasible"
    assert solution.weights is None
    assert np.all(np.isnan(solution.predicted_gain))
    assert "infeasible" in solution.reason and "threshold" in solution.reason
    assert solution.to_dict()["status"] == "infeasible"


def test_a_reachable_demand_is_met() -> None:
    influence = trade_off_influence(300, 3, seed=16)
    scale = np.abs(influence).mean(axis=0)
    solution = solve_weights(influence, [0], [-0.01 * scale[1], 0.0])
    assert solution.status == "optimal"
    assert solution.predicted_gain[1] >= 0.01 * scale[1] * (1 - 1e-7)


def test_scale_none_sums_raw_gains() -> None:
    influence = trade_off_influence(200, 3, seed=17) * np.array([1.0, 100.0, 1.0])
    solution = solve_weights(influence, [0, 1], 0.0, scale="none")
    np.testing.assert_allclose(solution.scale, 1.0)
    assert solution.objective == pytest.approx(solution.predicted_gain[[0, 1]].sum(), rel=1e-9)
    mean_abs = solve_weights(influence, [0, 1], 0.0)
    np.testing.assert_allclose(mean_abs.scale, np.abs(influence).mean(axis=0))


def test_torch_input_is_accepted() -> None:
    influence = trade_off_influence(100, 3, seed=18)
    from_torch = solve_weights(torch.from_numpy(influence), torch.tensor([0]), 0.0)
    assert from_torch.objective == pytest.approx(solve_weights(influence, [0], 0.0).objective, rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": []}, "targets"),
        ({"targets": [5]}, "targets"),
        ({"targets": [0, 0]}, "targets"),
        ({"thresholds": [0.1, 0.1, 0.1, 0.1]}, "thresholds"),
        ({"thresholds": [np.nan, 0.1]}, "thresholds"),
        ({"w_min": 1.5}, "w_min"),
        ({"w_min": -0.5}, "w_min"),
        ({"w_max": 0.5}, "w_max"),
        ({"trust": 0.0}, "trust"),
        ({"trust": np.inf}, "trust"),
        ({"scale": "std"}, "scale"),
        ({"influence": np.array([[np.inf, 1.0, 0.0]])}, "influence"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, message: str) -> None:
    arguments = {"influence": trade_off_influence(20, 3, seed=19), "targets": [0], "thresholds": [0.1, 0.1]}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        solve_weights(**arguments)


def test_non_integer_targets_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="targets"):
        solve_weights(trade_off_influence(20, 3, seed=20), [0.5], 0.1)
