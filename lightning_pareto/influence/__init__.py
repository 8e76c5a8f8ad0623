"""Influence functions for classifiers: torch only, no Lightning. Two engines over shared passes.

- ``category_influence``: the category-wise influence vectors ``I[i, c]`` (n x K) of "What Is The
  Performance Ceiling of My Classifier?" (``kfac``).
- ``influence_value``: IV, influence on the whole validation loss (n,).
- ``fit_curvature``: exact, K-FAC or EKFAC damped curvature with ``inverse_hvp`` in the layer layout.
- ``fi_util`` / ``fi_active``: the FI local influence of "Enhancing Prediction Performance through
  Influence Measure" for trimming and active learning (``local``), with ``metric_factors`` /
  ``query_gradients`` / ``pairwise_fi`` as their batched building blocks.
- ``LayerCapture`` / ``tracked_modules``: the hooks and layer selection the passes are built on.
- ``InfluenceTimings``: the seconds of each phase, for either engine.
"""

from lightning_pareto.influence._base import Curvature
from lightning_pareto.influence._timings import InfluenceTimings
from lightning_pareto.influence.capture import LayerCapture, tracked_modules
from lightning_pareto.influence.curvature import fit_curvature
from lightning_pareto.influence.exact import ExactCurvature
from lightning_pareto.influence.kfac.category import category_influence, influence_value
from lightning_pareto.influence.kfac.curvature import KroneckerCurvature
from lightning_pareto.influence.local import (
    MetricFactors,
    fi_active,
    fi_util,
    metric_factors,
    pairwise_fi,
    query_gradients,
)

__all__ = [
    "Curvature",
    "ExactCurvature",
    "InfluenceTimings",
    "KroneckerCurvature",
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
]
