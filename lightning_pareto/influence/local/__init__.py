"""The FI engine: the local influence measure of "Enhancing Prediction Performance through Influence Measure".

- ``util``: FI^util for data trimming.
- ``metric``: the FI^active building blocks (per-sample metric factors, query gradients, pairwise FI).
- ``active``: FI^active for active learning.
- ``kfsvd`` and ``subsample``: the paper's two approximations.
"""

from lightning_pareto.influence.local.active import fi_active, trimmed_mean
from lightning_pareto.influence.local.metric import MetricFactors, metric_factors, pairwise_fi, query_gradients
from lightning_pareto.influence.local.util import fi_util

__all__ = ["MetricFactors", "fi_active", "fi_util", "metric_factors", "pairwise_fi", "query_gradients", "trimmed_mean"]
