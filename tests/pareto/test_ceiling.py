"""Ceiling report: region counts, the paper's PCA ratio and the exact simplex criterion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _pareto_cases import hyperplane_influence, min_norm_by_faces, trade_off_influence

from lightning_pareto.pareto import CeilingReport, ceiling_report


def test_region_counts_on_a_hand_made_matrix() -> None:
    influence = np.array(
        [
            [1.0, 2.0, 0.5],  # helps every class
            [-1.0, -0.1, -3.0],  # hurts every class
            [-1.0, -0.1, 4.0],  # trade-off; hurts classes 0 and 1
            [2.0, -1.0, 1.0],  # trade-off; helps classes 0 and 2
            [0.0, 1.0, 1.0],  # an exact zero is not "helps"
            [3.0, 3.0, -1.0],  # trade-off; helps classes 0 and 1
        ]
    )
    report = ceiling_report(influence, targets=[0, 1])
    assert (report.counts.helps_all, report.counts.hurts_all, report.counts.trade_off) == (1, 1, 4)
    assert report.target_counts is not None
    assert (report.target_counts.helps_all, report.target_counts.hurts_all, report.target_counts.trade_off) == (2, 2, 2)
    assert report.targets == (0, 1)
    assert ceiling_report(influence).target_counts is None


def test_pca_ratio_is_the_largest_covariance_eigenvalue_share() -> None:
    influence = trade_off_influence(300, 5, seed=1)
    eigenvalues = np.linalg.eigvalsh(np.cov(influence, rowvar=False))
    assert ceiling_report(influence).pca_ratio == pytest.approx(eigenvalues[-1] / eigenvalues.sum(), rel=1e-10)


def test_two_classes_match_the_nearest_point_of_a_segment() -> None:
    rng = np.random.default_rng(2)
    influence = rng.normal(size=(40, 2)) + np.array([1.0, -0.5]) * rng.normal(size=(40, 1))
    centred = influence - influence.mean(axis=0)
    first, second = centred[:, 0], centred[:, 1]
    # Closed form: lam * first + (1 - lam) * second is nearest the origin at the clipped stationary point.
    lam = np.clip(second @ (second - first) / np.sum((second - first) ** 2), 0.0, 1.0)
    expected = np.linalg.norm(lam * first + (1 - lam) * second) / np.linalg.norm(centred)
    report = ceiling_report(influence)
    assert report.ratio == pytest.approx(expected, abs=1e-10)
    np.testing.assert_allclose(report.simplex_weights, [lam, 1 - lam], atol=1e-8)


@pytest.mark.parametrize("num_classes", [3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_criterion_matches_face_enumeration(num_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    influence = rng.normal(size=(30, num_classes)) @ rng.normal(size=(num_classes, num_classes))
    centred = influence - influence.mean(axis=0)
    expected_norm, expected_point = min_norm_by_faces(centred / np.linalg.norm(centred))
    report = ceiling_report(influence)
    assert report.ratio == pytest.approx(expected_norm, abs=1e-9)
    np.testing.assert_allclose(report.simplex_weights, expected_point, atol=1e-7)
    uncentred_norm, _ = min_norm_by_faces(influence / np.linalg.norm(influence))
    assert report.ratio_uncentred == pytest.approx(uncentred_norm, abs=1e-9)


def test_criterion_is_never_above_a_brute_force_grid() -> None:
    influence = trade_off_influence(200, 3, seed=3)
    centred = influence - influence.mean(axis=0)
    steps = np.linspace(0.0, 1.0, 201)
    grid = np.array([(a, b, 1 - a - b) for a in steps for b in steps if a + b <= 1 + 1e-12])
    grid_min = np.min(np.linalg.norm(centred @ grid.T, axis=0)) / np.linalg.norm(centred)
    report = ceiling_report(influence)
    assert report.ratio <= grid_min + 1e-12
    assert report.ratio >= grid_min - 0.02  # the grid's resolution


def test_exact_trade_off_line_is_at_the_ceiling() -> None:
    first = np.random.default_rng(4).normal(size=100)
    report = ceiling_report(np.stack([first, -2.0 * first], axis=1))
    assert report.ratio < 1e-12
    assert report.verdict == "at the ceiling within tolerance"
    assert not report.improvable
    # The hyperplane's normal: 2 * I[:, 0] + I[:, 1] = 0, i.e. lam proportional to (2, 1).
    np.testing.assert_allclose(report.simplex_weights, [2 / 3, 1 / 3], atol=1e-9)
    assert report.counts.helps_all == 0 and report.counts.hurts_all == 0


def test_vectors_on_a_positive_normal_hyperplane_are_at_the_ceiling() -> None:
    normal = np.array([1.0, 2.0, 3.0, 0.5])
    report = ceiling_report(hyperplane_influence(500, normal, seed=5))
    assert report.verdict == "at the ceiling within tolerance"
    np.testing.assert_allclose(report.simplex_weights, normal / normal.sum(), atol=1e-8)


def test_a_common_direction_makes_it_improvable() -> None:
    rng = np.random.default_rng(6)
    on_plane = hyperplane_influence(500, np.array([1.0, 2.0, 3.0]), seed=6)
    influence = on_plane + 0.3 * rng.normal(size=(500, 1)) * np.ones(3)
    report = ceiling_report(influence)
    assert report.verdict == "improvable"
    assert report.improvable
    assert report.ratio > 0.05


def test_uncentred_criterion_sees_an_offset_hyperplane() -> None:
    # On normal^T x = 1: fixed total weight cannot improve (centred ratio 0), adding weight can.
    influence = hyperplane_influence(300, np.array([1.0, 1.0, 2.0]), seed=7, offset=1.0)
    report = ceiling_report(influence)
    assert report.ratio < 1e-10
    assert report.ratio_uncentred > 0.05


def test_identical_rows_cannot_be_traded() -> None:
    report = ceiling_report(np.tile([[1.0, -2.0, 0.5]], (10, 1)))
    assert report.ratio == 0.0
    assert np.isnan(report.pca_ratio)
    assert report.verdict == "at the ceiling within tolerance"


def test_tolerance_sets_the_verdict() -> None:
    influence = trade_off_influence(200, 3, seed=8)
    ratio = ceiling_report(influence).ratio
    assert ceiling_report(influence, tol=ratio * 1.01).verdict == "at the ceiling within tolerance"
    assert ceiling_report(influence, tol=ratio * 0.99).verdict == "improvable"


def test_torch_input_gives_the_same_report() -> None:
    influence = trade_off_influence(100, 4, seed=9)
    from_numpy = ceiling_report(influence)
    from_torch = ceiling_report(torch.from_numpy(influence).float())
    assert from_torch.ratio == pytest.approx(from_numpy.ratio, abs=1e-6)
    assert from_torch.counts == from_numpy.counts


def test_report_reads_well_and_serialises() -> None:
    report = ceiling_report(trade_off_influence(100, 3, seed=10), targets=[2])
    text = str(report)
    assert "100 samples x 3 classes" in text
    assert "targets [2]" in text
    assert report.verdict in text
    data = report.to_dict()
    assert data["targets"] == [2]
    assert data["counts"]["helps_all"] == report.counts.helps_all
    assert len(data["simplex_weights"]) == 3
    assert isinstance(report, CeilingReport)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"influence": np.ones(5)}, "influence"),
        ({"influence": np.ones((0, 3))}, "influence"),
        ({"influence": np.array([[1.0, np.nan], [0.0, 1.0]])}, "influence"),
        ({"influence": np.ones((4, 3)), "targets": []}, "targets"),
        ({"influence": np.ones((4, 3)), "targets": [3]}, "targets"),
        ({"influence": np.ones((4, 3)), "targets": [1, 1]}, "targets"),
        ({"influence": np.ones((4, 3)), "tol": -1.0}, "tol"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ceiling_report(**kwargs)
