"""The category-wise influence engine: K-FAC/EKFAC curvature and influence scores, one phase a module.

- ``factors``: the K-FAC covariance factors, one pass over the training set (wide Linear inputs sketched).
- ``eigen``: their float64 eigenbases (wide input factors truncated, ``_eigensolver``).
- ``correction``: the EKFAC eigenvalue correction, one pass.
- ``queries``: per-class validation gradients and their preconditioning.
- ``scores``: the scoring pass over the training set.
- ``category``: ``category_influence`` and ``influence_value``, which run the phases.
- ``curvature``: ``KroneckerFactors`` and ``KroneckerCurvature``, the fitted curvature.
"""
