"""Pareto analysis of category-wise influence: the ceiling check and Pareto-LP-GA reweighting ("What Is The Performance Ceiling of My Classifier?").

Depends on numpy, scipy and pygad only; influence matrices may also be torch tensors.
"""

from lightning_pareto.pareto.ceiling import CeilingReport, RegionCounts, ceiling_report
from lightning_pareto.pareto.presets import PRESETS, GAPreset
from lightning_pareto.pareto.reweight import WeightLP, WeightSolution, solve_weights
from lightning_pareto.pareto.search import search_weights
from lightning_pareto.pareto.search_result import SearchResult

__all__ = [
    "PRESETS",
    "CeilingReport",
    "GAPreset",
    "RegionCounts",
    "SearchResult",
    "WeightLP",
    "WeightSolution",
    "ceiling_report",
    "search_weights",
    "solve_weights",
]
