"""Lightning callbacks: per-class monitoring and influence-based interventions."""

import importlib
from typing import Any

from lightning_pareto.callbacks.monitor import (
    PerClassAccuracy,
    class_indices,
    find_monitor,
    require_monitor,
    resolve_class_names,
)

__all__ = [
    "ClassUpweighting", "CourseCorrection", "DirectImprovement", "InfluenceAudit",  # lazily imported below; they load the influence engine only when they run
    "PerClassAccuracy",
    "class_indices",
    "find_monitor",
    "require_monitor",
    "resolve_class_names",
]

# Callbacks built on the influence engine, imported on first access (kept out of __all__ so a star
# import does not pull in the influence engine): name -> module in this package.
INTERVENTIONS = {
    "DirectImprovement": "direct", "CourseCorrection": "correction", "InfluenceTrimming": "trimming",
    "ClassUpweighting": "upweighting", "InfluenceAudit": "audit",
}


def __getattr__(name: str) -> Any:
    if name in INTERVENTIONS:
        return getattr(importlib.import_module(f"{__name__}.{INTERVENTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
