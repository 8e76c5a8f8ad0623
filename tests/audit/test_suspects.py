"""The suspect rule: on a hand-built influence matrix, and on a model trained on data with known flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto.audit import audit_samples, column_scale, likely_labels, suspect_scores, suspects


def test_column_scale_is_the_mean_absolute_value_of_finite_entries() -> None:
    influence = np.array([[1.0, -4.0, 0.0], [-3.0, np.nan, 0.0]])
    np.testing.assert_allclose(column_scale(influence), [2.0, 4.0, 1.0])


def test_scores_follow_the_formula_by_hand() -> None:
    influence = np.array([[4.0, -2.0, 1.0], [-8.0, 2.0, 3.0], [2.0, 1.0, -4.0], [2.0, -3.0, 0.0]])
    labels = np.array([0, 1, 0, 2])
    scale = np.abs(influence).mean(axis=0)  # [4, 2, 2]
    scaled = influence / scale
    expected = []
    for row, y in zip(scaled, labels):
        harm = -min(v for c, v in enumerate(row) if c != y)
        expected.append(min(harm - 1.5 * row[y], harm - 0.5))
    np.testing.assert_allclose(suspect_scores(influence, labels, margin=1.5, min_harm=0.5), expected)
    # Row 1 (label 1): harm to class 0 = 2, help to 1 = 1: a suspect whose likely label is 0.
    assert suspects(influence, labels, margin=1.5, min_harm=0.5).tolist() == [False, True, True, True]
    assert likely_labels(influence, labels).tolist() == [1, 0, 2, 1]


def test_flipped_rows_of_a_constructed_matrix_are_found_with_their_true_labels() -> None:
    rng = np.random.default_rng(0)
    n, num_classes = 300, 4
    true = rng.integers(0, num_classes, n)
    labels = true.copy()
    flipped = np.sort(rng.choice(n, 30, replace=False))
    labels[flipped] = (true[flipped] + rng.integers(1, num_classes, flipped.size)) % num_classes
    # Clean samples help their class and touch the others a little; a flip helps its label and hurts its true class.
    influence = rng.normal(0.0, 0.2, (n, num_classes))
    influence[np.arange(n), labels] += rng.uniform(0.5, 1.5, n)
    influence[flipped, true[flipped]] -= rng.uniform(4.0, 8.0, flipped.size)
    found = suspects(influence, labels)
    assert np.array_equal(np.flatnonzero(found), flipped)
    assert np.array_equal(likely_labels(influence, labels)[flipped], true[flipped])


def test_non_finite_rows_are_never_suspects_and_bad_input_is_named() -> None:
    influence = np.array([[1.0, -9.0], [np.nan, -9.0], [1.0, 1.0]])
    assert suspects(influence, np.array([0, 0, 0]), min_harm=0.0).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="labels must lie"):
        suspect_scores(influence, np.array([0, 2, 0]))
    with pytest.raises(ValueError, match="margin"):
        suspect_scores(influence, np.array([0, 1, 0]), margin=-1.0)
    with pytest.raises(ValueError, match="shape"):
        suspect_scores(influence[:, :1], np.array([0, 0, 0]))


def test_suspects_of_a_trained_model_are_mostly_the_flipped_samples() -> None:
    # Three well-separated blobs, 10% of the training labels flipped; a small MLP trained to fit them.
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 4.0], [-4.0, -2.0], [4.0, -2.0]])
    true = torch.arange(360) % 3
    x = centres[true] + torch.randn(360, 2, generator=generator)
    x_train, true_train, x_val, y_val = x[:240], true[:240], x[240:], true[240:]
    flipped = torch.randperm(240, generator=generator)[:24].sort().values
    y_train = true_train.clone()
    y_train[flipped] = (true_train[flipped] + 1 + torch.randint(0, 2, (24,), generator=generator)) % 3
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        optimizer.step()
    train = DataLoader(TensorDataset(x_train, y_train, torch.arange(240)), batch_size=64)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=64)
    table = audit_samples(model, train, val, ["a", "b", "c"], curvature="exact")
    found = np.flatnonzero(table.suspect)
    hits = np.intersect1d(found, flipped.numpy())
    assert found.size >= 12 and hits.size / found.size >= 0.8
    assert np.mean(table.likely[hits] == true_train.numpy()[hits]) >= 0.8
