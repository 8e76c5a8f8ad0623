"""The weight search with its LPs solved in forked worker processes, against the one-process search."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from _pareto_cases import trade_off_influence

from lightning_pareto.pareto import search
from lightning_pareto.pareto._workers import (
    SolverWorkers,
    WorkerFailure,
    fork_workers_available,
)

pytestmark = pytest.mark.skipif(fork_workers_available() == 0, reason="worker processes need fork (Linux)")

SETTINGS = dict(preset=dataclasses.replace(search.PRESETS["paper"], generations=4), seed=3, progress=False)


@pytest.fixture(scope="module")
def influence() -> np.ndarray:
    return trade_off_influence(3000, 6, seed=1)


@pytest.fixture(scope="module")
def one_process(influence: np.ndarray) -> search.SearchResult:
    return search.search_weights(influence, [0, 2], workers=1, **SETTINGS)


def _assert_same_search(result: search.SearchResult, reference: search.SearchResult) -> None:
    assert result.status == reference.status == "improved"
    assert result.evaluations == reference.evaluations
    # Other start bases give the same optimum: equal up to round-off, not bit for bit.
    assert result.fitness == pytest.approx(reference.fitness, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(result.weights, reference.weights, rtol=0, atol=1e-7)


def test_two_workers_find_the_one_process_optimum(influence, one_process) -> None:
    result = search.search_weights(influence, [0, 2], workers=2, **SETTINGS)
    _assert_same_search(result, one_process)
    again = search.search_weights(influence, [0, 2], workers=2, **SETTINGS)
    assert again.fitness == result.fitness and np.array_equal(again.weights, result.weights)  # deterministic


def test_a_worker_that_raises_hands_the_search_back(influence, one_process, monkeypatch) -> None:
    def broken(self, payload):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(search._Evaluator, "score_run", broken)  # forked workers inherit the patch
    with pytest.warns(RuntimeWarning, match="solver exploded"):
        result = search.search_weights(influence, [0, 2], workers=2, **SETTINGS)
    _assert_same_search(result, one_process)


def test_a_worker_that_dies_hands_the_search_back(influence, one_process, monkeypatch) -> None:
    monkeypatch.setattr(search._Evaluator, "score_run", lambda self, payload: os._exit(3))
    with pytest.warns(RuntimeWarning, match="died"):
        result = search.search_weights(influence, [0, 2], workers=2, **SETTINGS)
    _assert_same_search(result, one_process)


def test_trial_fitness_keeps_its_trials_in_this_process(influence) -> None:
    def trial(weights: np.ndarray) -> np.ndarray:
        return np.full(6, 0.5) + 1e-3 * (weights[:6] - 1.0)

    with pytest.warns(UserWarning, match="workers=2 ignored"):
        result = search.search_weights(
            influence, [0, 2], fitness=trial, reference=np.full(6, 0.5), workers=2, preset="fast", progress=False
        )
    assert result.trials >= 1


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_worker_counts_are_refused(influence, workers) -> None:
    with pytest.raises(ValueError, match="workers"):
        search.search_weights(influence, [0, 2], workers=workers, preset="fast", progress=False)


def test_auto_uses_workers_only_for_large_sets(monkeypatch) -> None:
    started = []
    original = SolverWorkers.__init__

    def counting(self, score, count):
        started.append(count)
        original(self, score, count)

    monkeypatch.setattr(SolverWorkers, "__init__", counting)
    monkeypatch.setattr(search, "fork_workers_available", lambda: 2)
    small = trade_off_influence(500, 4, seed=0)
    search.search_weights(small, [0], preset="fast", progress=False)
    assert started == []
    monkeypatch.setattr(search, "PARALLEL_MIN_SAMPLES", 500)
    search.search_weights(small, [0], preset="fast", progress=False)
    assert started == [2]


def test_solver_workers_reply_in_worker_order_and_report_errors() -> None:
    with SolverWorkers(lambda payload: [value * 2 for value in payload], 2) as workers:
        assert workers.call([[1, 2], [3]]) == [[2, 4], [6]]
        with pytest.raises(WorkerFailure, match="failed"):
            workers.call([[1], ["a", None]])  # "a" * 2 works, None * 2 raises in the worker
        assert workers.count == 0  # closed after the failure
