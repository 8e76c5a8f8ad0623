"""The GA over LP thresholds: determinism, improvement where possible, trial mode, time budget."""

from __future__ import annotations

import dataclasses
import random
import time

import numpy as np
import pytest
from _pareto_cases import trade_off_influence

from lightning_pareto.pareto import PRESETS, GAPreset, search_weights
from lightning_pareto.pareto._fitness import NOT_IMPROVED_FITNESS


@pytest.fixture(scope="module")
def influence() -> np.ndarray:
    return trade_off_influence(300, 4, seed=21)


def _relative_gains(influence: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return influence.T @ (weights - 1.0) / len(weights) / np.abs(influence).mean(axis=0)


def test_same_seed_same_result(influence: np.ndarray) -> None:
    first = search_weights(influence, [0, 2], seed=3)
    second = search_weights(influence, [0, 2], seed=3)
    assert first.fitness == second.fitness
    np.testing.assert_array_equal(first.weights, second.weights)
    np.testing.assert_array_equal(first.thresholds, second.thresholds)
    assert first.trust == second.trust
    assert first.evaluations == second.evaluations


def test_finds_a_predicted_improvement_that_exists(influence: np.ndarray) -> None:
    result = search_weights(influence, [0, 2])
    assert result.status == "improved"
    assert result.reason == ""
    gains = _relative_gains(influence, result.weights)
    assert gains[0] > 0 and gains[2] > 0
    degradation = np.maximum(-gains[[1, 3]], 0.0).sum()
    assert result.fitness == pytest.approx(gains[0] + gains[2] - degradation, rel=1e-6)
    assert result.weights.mean() == pytest.approx(1.0, abs=1e-9)
    assert np.abs(result.weights - 1.0).mean() <= result.trust * (1 + 1e-9)
    assert 0.05 <= result.trust <= 0.5
    assert result.generations == 3
    # Every candidate is distinct and at most population + generations * (population - elites).
    assert 1 < result.evaluations <= 6 + 3 * 4


def test_a_trade_off_line_gives_no_improvement() -> None:
    first = np.random.default_rng(22).normal(size=200)
    result = search_weights(np.stack([first, -2.0 * first], axis=1), [0])
    assert result.status == "no_improvement"
    assert result.weights is None
    assert "uniform weights are kept" in result.reason
    assert result.fitness <= 1e-9


def test_the_penalty_decides_how_much_loss_is_accepted(influence: np.ndarray) -> None:
    lenient = search_weights(influence, [0], degradation_penalty=0.0)
    strict = search_weights(influence, [0], degradation_penalty=10.0)
    lenient_loss = np.maximum(-_relative_gains(influence, lenient.weights)[1:], 0.0).sum()
    strict_loss = np.maximum(-_relative_gains(influence, strict.weights)[1:], 0.0).sum()
    assert strict_loss < lenient_loss


def test_trial_mode_calls_the_trial_and_follows_its_verdict(influence: np.ndarray) -> None:
    reference = np.array([0.5, 0.6, 0.7, 0.8])
    calls: list[np.ndarray] = []

    def trial(weights: np.ndarray) -> np.ndarray:
        calls.append(weights.copy())
        # A "training" whose class accuracies follow the first-order gains, scaled to accuracy units.
        return reference + 0.01 * _relative_gains(influence, weights)

    result = search_weights(influence, [1], fitness=trial, reference=reference)
    assert result.status == "improved"
    assert result.trials == len(calls) >= 1
    assert any(np.array_equal(result.weights, weights) for weights in calls)
    np.testing.assert_allclose(result.trial_accuracy, trial(result.weights))
    change = result.trial_accuracy - reference
    assert result.fitness == pytest.approx(change[1] - np.maximum(-change[[0, 2, 3]], 0.0).sum(), rel=1e-9)


def test_trial_mode_rejects_what_training_does_not_confirm(influence: np.ndarray) -> None:
    reference = np.full(4, 0.9)

    def trial(weights: np.ndarray) -> np.ndarray:
        return reference - 0.01  # the LP predicts gains, training disagrees

    result = search_weights(influence, [1], fitness=trial, reference=reference)
    assert result.status == "no_improvement"
    assert result.weights is None
    assert result.fitness == pytest.approx(NOT_IMPROVED_FITNESS - 0.01)
    assert result.trials >= 1


def test_trial_mode_skips_candidates_predicted_to_fall_well_short_of_the_winner(influence: np.ndarray) -> None:
    # The trust gene spans a decade, so candidates with a small trust radius are predicted a fraction
    # of a large one's gain. This "training" realises exactly the first-order prediction (in accuracy
    # units), so a screened candidate's score is the one its trial would have given.
    reference = np.array([0.5, 0.6, 0.7, 0.8])
    trained: list[np.ndarray] = []

    def trial(weights: np.ndarray) -> np.ndarray:
        trained.append(weights.copy())
        return reference + 0.01 * _relative_gains(influence, weights)

    screened = search_weights(influence, [0, 2], fitness=trial, reference=reference, seed=1)
    trials_screened = len(trained)
    trained.clear()
    every = search_weights(influence, [0, 2], fitness=trial, reference=reference, seed=1, trial_screen=None)

    assert screened.trials_skipped >= 1 and every.trials_skipped == 0
    assert screened.trials == trials_screened and screened.trials + screened.trials_skipped <= screened.evaluations
    # The winner was trained; the screen saved trials and changed nothing else.
    assert screened.status == "improved" and screened.trial_accuracy is not None
    np.testing.assert_allclose(screened.trial_accuracy, trial(screened.weights))
    assert screened.trials + screened.trials_skipped == every.trials
    assert screened.evaluations == every.evaluations and screened.fitness == pytest.approx(every.fitness, rel=1e-12)
    np.testing.assert_array_equal(screened.weights, every.weights)
    assert 0 < screened.trial_seconds <= screened.seconds


def test_predicted_fitness_never_screens(influence: np.ndarray) -> None:
    default = search_weights(influence, [0, 2], preset="paper", seed=4)
    assert default.trials == default.trials_skipped == 0 and default.trial_seconds == 0.0
    for screen in (None, 1.0):
        other = search_weights(influence, [0, 2], preset="paper", seed=4, trial_screen=screen)
        np.testing.assert_array_equal(other.weights, default.weights)
        assert (other.fitness, other.evaluations, other.trust) == (default.fitness, default.evaluations, default.trust)


def test_time_budget_stops_the_search(influence: np.ndarray) -> None:
    def slow_trial(weights: np.ndarray) -> np.ndarray:
        time.sleep(0.1)
        return np.full(4, 0.5)

    start = time.perf_counter()
    result = search_weights(
        influence, [0], fitness=slow_trial, reference=np.full(4, 0.4), preset="paper", time_budget=0.5
    )
    elapsed = time.perf_counter() - start
    assert result.stopped_early
    assert elapsed < 0.5 + 1.5  # one candidate may finish after the deadline, plus LP/GA overhead
    assert result.generations < 20
    assert result.status == "improved"


def test_fixed_trust_is_kept(influence: np.ndarray) -> None:
    result = search_weights(influence, [0], search_trust=False, trust=0.2)
    assert result.trust == 0.2


def test_all_classes_as_targets_needs_no_genes(influence: np.ndarray) -> None:
    result = search_weights(influence, [0, 1, 2, 3], search_trust=False)
    assert result.evaluations == 1
    assert result.generations == 0


def test_overrides_change_the_ga(influence: np.ndarray) -> None:
    result = search_weights(influence, [0], preset=_settings(generations=1, population=3, elites=1))
    assert result.generations == 1
    assert result.evaluations <= 3 + 2


def test_result_serialises(influence: np.ndarray) -> None:
    data = search_weights(influence, [0], preset=_settings(generations=1, population=2, elites=0)).to_dict()
    assert data["status"] in {"improved", "no_improvement", "infeasible"}
    assert len(data["thresholds"]) == 4 and "weights" not in data
    assert data["trials_skipped"] == 0 and data["trial_seconds"] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"fitness": "exact"}, ValueError, "fitness"),
        ({"fitness": 3}, TypeError, "fitness"),
        ({"fitness": lambda w: np.zeros(4)}, ValueError, "reference"),
        ({"fitness": lambda w: np.zeros(4), "reference": np.zeros(3)}, ValueError, "reference"),
        ({"reference": np.zeros(4)}, ValueError, "reference"),
        ({"preset": "slow"}, ValueError, "preset"),
        ({"preset": 3}, TypeError, "preset"),
        ({"degradation_penalty": -1.0}, ValueError, "degradation_penalty"),
        ({"time_budget": 0.0}, ValueError, "time_budget"),
        ({"trust": -0.1}, ValueError, "trust"),
        ({"targets": []}, ValueError, "targets"),
        ({"trial_screen": 0.0}, ValueError, "trial_screen"),
        ({"trial_screen": 1.5}, ValueError, "trial_screen"),
        ({"trial_screen": True}, ValueError, "trial_screen"),
    ],
)
def test_bad_input_names_the_argument(influence: np.ndarray, kwargs: dict, error: type, message: str) -> None:
    arguments = {"targets": [0]} | kwargs
    with pytest.raises(error, match=message):
        search_weights(influence, **arguments)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"generations": 0}, "generations"),
        ({"population": 1}, "population"),
        ({"elites": 7}, "elites"),
        ({"mutation_rate": 1.5}, "mutation_rate"),
        ({"mutation_strength": 0.0}, "mutation_strength"),
    ],
)
def test_bad_ga_settings_name_the_setting(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _settings(**override)


def _settings(**override: float) -> GAPreset:
    """The fast preset with some settings replaced."""
    return dataclasses.replace(PRESETS["fast"], **override)


def test_a_malformed_trial_result_is_an_error(influence: np.ndarray) -> None:
    with pytest.raises(ValueError, match="trial function"):
        search_weights(influence, [0], fitness=lambda weights: np.zeros(3), reference=np.zeros(4))


def test_global_random_state_is_left_alone(influence: np.ndarray) -> None:
    np.random.seed(5)
    random.seed(5)
    expected = (np.random.rand(), random.random())
    np.random.seed(5)
    random.seed(5)
    search_weights(influence, [0], preset=_settings(generations=1, population=3, elites=1))
    assert (np.random.rand(), random.random()) == expected


def test_the_best_candidates_weights_are_returned_after_many_evaluations(influence: np.ndarray) -> None:
    # Only the best candidate keeps its weights during the search: the returned ones must be the LP
    # optimum (HiGHS, not the dual simplex) at the returned thresholds and trust, and score the fitness.
    from lightning_pareto.pareto import WeightLP

    result = search_weights(influence, [0, 2], preset=dataclasses.replace(PRESETS["paper"], generations=5))
    assert result.status == "improved" and result.evaluations > 50
    highs = WeightLP(influence, [0, 2], sifting=False).solve(result.thresholds, result.trust)
    gains = _relative_gains(influence, result.weights)
    assert result.fitness == pytest.approx(gains[0] + gains[2] - np.maximum(-gains[[1, 3]], 0.0).sum(), rel=1e-6)
    assert highs.objective == pytest.approx(
        gains[0] * np.abs(influence[:, 0]).mean() / highs.scale[0]
        + gains[2] * np.abs(influence[:, 2]).mean() / highs.scale[2],
        rel=1e-6,
    )
