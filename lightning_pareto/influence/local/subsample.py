"""The FI paper's subsampling approximation (Algorithm 6): FI on a fraction, a random forest for the rest.

The paper is "Enhancing Prediction Performance through Influence Measure".
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata
from sklearn.ensemble import RandomForestRegressor

_FOREST_TREES = 100
# sqrt(f) candidate features per split: on Adult-shaped data both faster than all features and in
# better rank agreement with exact FI (``python benchmarks/fi.py``).
_FOREST_MAX_FEATURES = "sqrt"


def choose_subsample(num_samples: int, alpha: float, seed: int) -> np.ndarray:
    """Positions of the samples whose FI is computed: ``ceil(alpha * n)`` (at least 2) drawn without replacement.

    Algorithm 6 keeps each sample with probability alpha; a fixed count has the same expectation
    and never leaves the forest without training data.

    Args:
        num_samples: ``n``.
        alpha: Fraction in ``(0, 1]``.
        seed: Seed of the draw.

    Returns:
        Sorted int64 positions in ``[0, n)``.
    """
    count = min(num_samples, max(2, math.ceil(alpha * num_samples)))
    if count == num_samples:
        return np.arange(num_samples)
    return np.sort(np.random.default_rng(seed).choice(num_samples, size=count, replace=False))


def forest_rank_scores(features: np.ndarray, chosen: np.ndarray, values: np.ndarray, seed: int) -> np.ndarray:
    """Rank quantiles of the chosen samples' FI, and a random forest's prediction of them for the rest.

    Args:
        features: ``(n, f)`` forest covariates of every sample.
        chosen: ``(m,)`` positions whose FI was computed.
        values: ``(m,)`` their FI (non-finite values are left out of the forest's training data
            and get a NaN score).
        seed: Seed of the forest.

    Returns:
        ``(n,)`` float64 scores in ``[0, 1]``: the ascending rank of FI divided by ``m - 1`` for the
        chosen samples (ties averaged), the forest's predicted value for the others. Higher means
        more influential; only the order is meaningful.
    """
    scores = np.full(len(features), np.nan)
    finite = np.isfinite(values)
    ranks = rankdata(values[finite]) - 1.0
    scores[chosen[finite]] = ranks / max(len(ranks) - 1, 1)
    rest = np.setdiff1d(np.arange(len(features)), chosen)
    if len(rest) and finite.sum() >= 2:
        forest = RandomForestRegressor(
            n_estimators=_FOREST_TREES, max_features=_FOREST_MAX_FEATURES, random_state=seed, n_jobs=1
        )
        forest.fit(features[chosen[finite]], scores[chosen[finite]])
        scores[rest] = forest.predict(features[rest])
    return scores
