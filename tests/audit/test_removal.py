"""The removal check's bookkeeping: which samples go, what is retrained, how changes and correlations are formed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _retrain_helpers import NUM_CLASSES, blobs, retrain_accuracy, train_logistic
from scipy.stats import spearmanr
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto.audit import rank_correlation, removal_sets, run_removal_check
from lightning_pareto.influence import category_influence


def test_removal_sets_take_the_strongest_share_of_each_sign() -> None:
    rng = np.random.default_rng(0)
    influence = rng.normal(size=(50, 4))
    influence[7, 1] = np.nan
    for kind, sign in (("beneficial", 1.0), ("detrimental", -1.0)):
        sets = removal_sets(influence, 0.2, kind)
        for t, chosen in enumerate(sets):
            candidates = [i for i in range(50) if np.isfinite(influence[i, t]) and sign * influence[i, t] > 0]
            count = int(np.ceil(0.2 * len(candidates)))
            strongest = sorted(candidates, key=lambda i: -sign * influence[i, t])[:count]
            assert chosen.tolist() == sorted(strongest)
    with pytest.raises(ValueError, match="fraction"):
        removal_sets(influence, 0.0, "beneficial")
    with pytest.raises(ValueError, match="kind"):
        removal_sets(influence, 0.1, "helpful")  # type: ignore[arg-type]


def test_rank_correlation_is_spearman_of_the_predicted_effect_over_finite_cells() -> None:
    rng = np.random.default_rng(0)
    cumulative, change = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    change[0, 1] = np.nan
    finite = np.isfinite(change).ravel()
    expected = spearmanr(-cumulative.ravel()[finite], change.ravel()[finite]).statistic
    assert rank_correlation(cumulative, change) == pytest.approx(expected)
    assert np.isnan(rank_correlation(cumulative, np.zeros((4, 4))))


class Recorder:
    """Wraps the toy retrain and remembers every (keep, seed) it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], int]] = []

    def __call__(self, keep: np.ndarray, seed: int) -> np.ndarray:
        self.calls.append((tuple(int(i) for i in keep), seed))
        return retrain_accuracy(keep, seed)


@pytest.fixture(scope="module")
def influence() -> np.ndarray:
    x, y, _, _ = blobs()
    model = train_logistic(np.arange(90), seed=0)
    train = DataLoader(TensorDataset(x, y, torch.arange(90)), batch_size=32)
    val = DataLoader(TensorDataset(*blobs(seed=1)[2:]), batch_size=64)
    return category_influence(model, train, val, NUM_CLASSES, curvature="exact").numpy().astype(np.float64)


def test_every_removal_is_retrained_per_seed_and_compared_with_that_seeds_baseline(influence: np.ndarray) -> None:
    recorder = Recorder()
    baseline, checks = run_removal_check(influence, recorder, fraction=0.3, seeds=[0, 5], progress=False)
    everything = tuple(range(90))
    assert len(recorder.calls) == 2 * (1 + 2 * NUM_CLASSES)
    assert [seed for _, seed in recorder.calls] == [0] * 7 + [5] * 7
    assert recorder.calls[0] == (everything, 0) and recorder.calls[7] == (everything, 5)
    base = {seed: retrain_accuracy(np.arange(90), seed) for seed in (0, 5)}
    np.testing.assert_allclose(baseline, (base[0] + base[5]) / 2)
    for kind, check in checks.items():
        sets = removal_sets(influence, 0.3, kind)
        for t in range(NUM_CLASSES):
            assert check.removed[t].tolist() == sets[t].tolist()
            keep = np.setdiff1d(np.arange(90), sets[t])
            assert (tuple(keep.tolist()), 0) in recorder.calls
            expected = np.mean([retrain_accuracy(keep, seed) - base[seed] for seed in (0, 5)], axis=0)
            np.testing.assert_allclose(check.change[t], expected)
            np.testing.assert_allclose(check.cumulative[t], influence[sets[t]].sum(axis=0))
        assert check.spearman == pytest.approx(rank_correlation(check.cumulative, check.change), nan_ok=True)
        assert check.to_dict()["removed_counts"] == [s.size for s in sets]


def test_removing_what_helps_a_class_lowers_it(influence: np.ndarray) -> None:
    """On the toy problem the influence predicts the direction of the targeted class's change."""
    _, checks = run_removal_check(influence, retrain_accuracy, fraction=0.3, seeds=[0], progress=False)
    assert np.all(np.diag(checks["beneficial"].change) < 0)
    assert checks["beneficial"].diagonal_agreement == 1.0


@pytest.mark.slow
def test_worker_processes_give_the_same_results(influence: np.ndarray) -> None:
    serial = run_removal_check(influence, retrain_accuracy, fraction=0.3, progress=False)
    parallel = run_removal_check(influence, retrain_accuracy, fraction=0.3, workers=2, progress=False)
    np.testing.assert_allclose(serial[0], parallel[0])
    for kind in serial[1]:
        np.testing.assert_allclose(serial[1][kind].change, parallel[1][kind].change)
    with pytest.raises(ValueError, match="workers"):
        run_removal_check(influence, retrain_accuracy, workers=0)
