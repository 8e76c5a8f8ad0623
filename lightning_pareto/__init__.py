"""lightning-pareto: training-time course correction of classifiers through influence functions.

The public API: the reference module, the sample-weight contract, the datamodules' dataset wrapper
and the callbacks. Callbacks built on the influence engine are imported on first use.
"""

from typing import Any

from lightning_pareto.callbacks import INTERVENTIONS, PerClassAccuracy
from lightning_pareto.data import IndexedDataset
from lightning_pareto.module import ClassifierModule
from lightning_pareto.weighting import SampleWeightedMixin, SampleWeightStore, unpack_batch

__version__ = "0.1.0"

__all__ = [
    "ClassUpweighting",
    "ClassifierModule",
    "CourseCorrection", "DirectImprovement",
    "IndexedDataset",
    "PerClassAccuracy",
    "SampleWeightStore",
    "SampleWeightedMixin",
    "unpack_batch",
]



def __getattr__(name: str) -> Any:
    if name in INTERVENTIONS:
        from lightning_pareto import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module 'lightning_pareto' has no attribute {name!r}")
