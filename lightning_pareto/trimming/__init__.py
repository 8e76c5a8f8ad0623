"""Influence-based data trimming: train, score, remove the most harmful samples, retrain.

The protocol of "Enhancing Prediction Performance through Influence Measure" (Algorithms 3 and 6,
Figure 6), in one module per step:

- :mod:`~lightning_pareto.trimming.scores`: :func:`harm_scores` (FI^util exact or approximated, IV,
  random), one convention: **higher = more harmful = removed first**;
- :mod:`~lightning_pareto.trimming.selection`: :func:`select_removals` and the bookkeeping around it;
- :mod:`~lightning_pareto.trimming.fitters`: :class:`LBFGSFit` (full batch, to convergence) and
  :class:`LightningFit` (a quiet Lightning ``Trainer``);
- :mod:`~lightning_pareto.trimming.protocol`: :func:`trim`, the whole comparison for one seed.

The same scores drive the :class:`~lightning_pareto.callbacks.InfluenceTrimming` callback (trimming
during a user's fit) and ``lightning-pareto trim`` (the paper's comparison over seeds).
"""

from lightning_pareto.trimming.fitters import Fitter, LBFGSFit, LightningFit
from lightning_pareto.trimming.protocol import TrimOutcome, TrimReport, trim
from lightning_pareto.trimming.scores import METHODS, ScoringOptions, TrimMethod, check_method, harm_scores
from lightning_pareto.trimming.selection import check_budget, corruption_precision, kept_indices, select_removals

__all__ = [
    "METHODS",
    "Fitter",
    "LBFGSFit",
    "LightningFit",
    "ScoringOptions",
    "TrimMethod",
    "TrimOutcome",
    "TrimReport",
    "check_budget",
    "check_method",
    "corruption_precision",
    "harm_scores",
    "kept_indices",
    "select_removals",
    "trim",
]
