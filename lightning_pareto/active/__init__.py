"""Pool-based active learning: acquisition strategies and a Lightning acquisition loop.

"Enhancing Prediction Performance through Influence Measure", section 4.
"""

from lightning_pareto.active.loop import (
    LabelFunction,
    RoundResult,
    check_plan,
    random_initial_pool,
    run_active_learning,
)
from lightning_pareto.active.strategies import (
    BALD,
    STRATEGIES,
    EntropySampling,
    FIActive,
    FIActiveApprox,
    InfluenceValueSampling,
    MarginSampling,
    RandomSampling,
    Strategy,
    bald_scores,
    entropy_scores,
    make_strategy,
    margin_scores,
)

__all__ = [
    "BALD",
    "STRATEGIES",
    "EntropySampling",
    "FIActive",
    "FIActiveApprox",
    "InfluenceValueSampling",
    "LabelFunction",
    "MarginSampling",
    "RandomSampling",
    "RoundResult",
    "Strategy",
    "bald_scores",
    "check_plan",
    "entropy_scores",
    "make_strategy",
    "margin_scores",
    "random_initial_pool",
    "run_active_learning",
]
