"""lightning-pareto: training-time course correction of classifiers through influence functions.

The public API: the reference module, the sample-weight contract, the datamodules' dataset wrapper
and the callbacks.
"""

from lightning_pareto.callbacks import (
    ClassUpweighting,
    CourseCorrection,
    DirectImprovement,
    InfluenceAudit,
    InfluenceTrimming,
    PerClassAccuracy,
)
from lightning_pareto.data import IndexedDataset
from lightning_pareto.module import ClassifierModule
from lightning_pareto.weighting import SampleWeightedMixin, SampleWeightStore, unpack_batch

__version__ = "0.1.0"

__all__ = [
    "ClassUpweighting",
    "ClassifierModule",
    "CourseCorrection",
    "DirectImprovement",
    "IndexedDataset",
    "InfluenceAudit",
    "InfluenceTrimming",
    "PerClassAccuracy",
    "SampleWeightStore",
    "SampleWeightedMixin",
    "unpack_batch",
]
