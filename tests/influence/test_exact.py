"""The one dense inverse both engines use, against ``torch.linalg`` references."""

from __future__ import annotations

import pytest
import torch

from lightning_pareto.influence.exact import DenseInverse


def _psd(size: int, rank: int, seed: int) -> torch.Tensor:
    factor = torch.randn(size, rank, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return factor @ factor.T


def test_damped_inverse_of_a_positive_definite_matrix_is_the_solve() -> None:
    matrix, vectors = _psd(12, 12, 0), torch.randn(3, 12, dtype=torch.float64)
    inverse = DenseInverse(matrix, 0.5)
    assert inverse.positive_definite and not inverse.negative_eigenvalues
    expected = torch.linalg.solve(matrix + 0.5 * torch.eye(12, dtype=torch.float64), vectors.T).T
    torch.testing.assert_close(inverse.apply(vectors), expected, rtol=1e-10, atol=1e-12)


def test_no_damping_gives_the_pseudo_inverse_of_a_singular_matrix() -> None:
    matrix, vectors = _psd(10, 4, 1), torch.randn(2, 10, dtype=torch.float64)
    inverse = DenseInverse(matrix, None)
    assert not inverse.positive_definite
    torch.testing.assert_close(
        inverse.apply(vectors), vectors @ torch.linalg.pinv(matrix, hermitian=True), rtol=1e-7, atol=1e-9
    )


def test_an_indefinite_damped_matrix_is_inverted_through_its_eigenvalues_and_flagged() -> None:
    matrix = torch.diag(torch.tensor([-2.0, 1.0, 3.0], dtype=torch.float64))
    inverse = DenseInverse(matrix, 0.5)
    assert not inverse.positive_definite and inverse.negative_eigenvalues
    vectors = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(
        inverse.apply(vectors), torch.diag(1.0 / torch.tensor([-1.5, 1.5, 3.5], dtype=torch.float64))
    )


@pytest.mark.parametrize("damping", [None, 0.1])
def test_float32_vectors_are_solved_in_float64(damping: float | None) -> None:
    inverse = DenseInverse(_psd(6, 6, 2).float(), damping)
    assert inverse.apply(torch.ones(1, 6)).dtype == torch.float64
