"""Influence functions for classifiers: torch only, no Lightning.

- ``category_influence``: seed 003's category-wise influence vectors ``I[i, c]`` (n x K).
- ``influence_value``: IV, influence on the whole validation loss (n,).
- ``fit_curvature``: exact, K-FAC or EKFAC damped curvature with ``inverse_hvp`` in the layer layout.
- ``LayerCapture`` / ``tracked_modules``: the hooks and layer selection the passes are built on.
- ``fi_util`` / ``fi_active``: seed 000's FI local influence for trimming and active learning,
  with ``metric_factors`` / ``query_gradients`` / ``pairwise_fi`` as their batched building blocks.
"""

from lightning_pareto.influence._timings import InfluenceTimings
from lightning_pareto.influence.capture import LayerCapture, tracked_modules
from lightning_pareto.influence.category import category_influence, influence_value
from lightning_pareto.influence.curvature import (
    DEFAULT_DAMPING_FACTOR,
    MAX_EXACT_PARAMETERS,
    Curvature,
    ExactCurvature,
    KroneckerCurvature,
    KroneckerFactors,
    fit_curvature,
)
from lightning_pareto.influence.local import MetricFactors, fi_util, metric_factors, pairwise_fi, query_gradients
from lightning_pareto.influence.active import fi_active, trimmed_mean

__all__ = [
    "DEFAULT_DAMPING_FACTOR",
    "MAX_EXACT_PARAMETERS",
    "Curvature",
    "ExactCurvature",
    "InfluenceTimings",
    "KroneckerCurvature",
    "KroneckerFactors",
    "LayerCapture",
    "MetricFactors",
    "category_influence",
    "fi_active",
    "fi_util",
    "fit_curvature",
    "influence_value",
    "metric_factors",
    "pairwise_fi",
    "query_gradients",
    "tracked_modules",
    "trimmed_mean",
]
