"""Lightning callbacks: per-class monitoring and influence-based interventions.

The callbacks import the influence engine inside the methods that run it, so importing them is cheap.
"""

from lightning_pareto.callbacks._settings import InterventionSettings
from lightning_pareto.callbacks.correction import CourseCorrection
from lightning_pareto.callbacks.direct import DirectImprovement
from lightning_pareto.callbacks.monitor import PerClassAccuracy
from lightning_pareto.callbacks.trimming import InfluenceTrimming
from lightning_pareto.callbacks.upweighting import ClassUpweighting

__all__ = [
    "ClassUpweighting",
    "CourseCorrection",
    "DirectImprovement",
    "InfluenceTrimming",
    "InterventionSettings",
    "PerClassAccuracy",
]
