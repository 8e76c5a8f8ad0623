"""Trimming scores: IV against a dense reference, FI finding flipped labels, seeded random scores, option checks."""

from __future__ import annotations

import pytest
import torch
from _trimming_cases import WEIGHT_DECAY, noisy_gaussians, reference_iv, train_val_loaders, trained_logistic

from lightning_pareto.nets import LogisticRegression
from lightning_pareto.trimming import (
    ScoringOptions,
    corruption_precision,
    harm_scores,
    select_removals,
)


def test_iv_scores_are_minus_the_dense_influence_value() -> None:
    datamodule = noisy_gaussians()
    net = trained_logistic(datamodule)
    scores = harm_scores(net, *train_val_loaders(datamodule), "iv", options=ScoringOptions(damping=WEIGHT_DECAY))
    expected = -reference_iv(net, datamodule, WEIGHT_DECAY)
    assert scores.shape == (150,) and scores.dtype == torch.float64
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize(("method", "min_precision"), [("fi", 0.8), ("iv", 0.8), ("fi_approx", 0.3)])
def test_influence_methods_find_flipped_labels(method: str, min_precision: float) -> None:
    """15 of 150 labels are flipped (chance precision 0.1): the most harmful samples are mostly flipped ones."""
    datamodule = noisy_gaussians()
    net = trained_logistic(datamodule)
    scores = harm_scores(net, *train_val_loaders(datamodule), method, options=ScoringOptions(damping=WEIGHT_DECAY))
    removed = select_removals(scores, 15)
    precision = corruption_precision(removed, datamodule)["flipped_precision"]
    assert precision >= min_precision


def test_fi_approx_without_approximation_error_ranks_like_exact_fi() -> None:
    """alpha = 1 scores every sample exactly and rank k >= min(p, d) is an exact SVD: the order is FI's."""
    datamodule = noisy_gaussians()
    net = trained_logistic(datamodule)
    loaders = train_val_loaders(datamodule)
    exact = harm_scores(net, *loaders, "fi", options=ScoringOptions(curvature="kfac"))
    approx = harm_scores(net, *loaders, "fi_approx", options=ScoringOptions(rank=2, alpha=1.0))
    assert torch.equal(torch.argsort(exact, stable=True), torch.argsort(approx, stable=True))


def test_random_scores_are_seeded_and_leave_the_global_rng_alone() -> None:
    datamodule = noisy_gaussians()
    net = LogisticRegression(2, 2)
    state = torch.get_rng_state()
    first = harm_scores(net, *train_val_loaders(datamodule), "random", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, harm_scores(net, *train_val_loaders(datamodule), "random", seed=3))
    assert not torch.equal(first, harm_scores(net, *train_val_loaders(datamodule), "random", seed=4))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"rank": 0}, "rank"),
        ({"curvature": "diag"}, "curvature"),
        ({"damping": -1.0}, "damping"),
    ],
)
def test_scoring_options_reject_bad_values(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScoringOptions(**options)


def test_harm_scores_rejects_unknown_methods() -> None:
    datamodule = noisy_gaussians()
    with pytest.raises(ValueError, match="method must be one of"):
        harm_scores(LogisticRegression(2, 2), *train_val_loaders(datamodule), "loss")  # type: ignore[arg-type]
