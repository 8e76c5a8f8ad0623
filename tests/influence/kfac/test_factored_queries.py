"""Class queries of wide Linear layers kept as validation rows (``_factored_queries``) against dense references."""

from __future__ import annotations

import pytest
import torch
from _influence_reference import loader, relative_error, single_thread  # noqa: F401
from torch import Tensor

from lightning_pareto.influence import category_influence, influence_value
from lightning_pareto.influence.kfac import queries
from lightning_pareto.influence.kfac._factored_queries import FactoredQuery, ValidationRows
from lightning_pareto.influence.kfac.curvature import KroneckerFactors

pytestmark = pytest.mark.usefixtures("single_thread")

OUT, IN, KEPT, GROUPS = 5, 12, 4, 3


def _truncated_layer(has_bias: bool, seed: int = 0) -> KroneckerFactors:
    generator = torch.Generator().manual_seed(seed)
    width = IN + int(has_bias)
    rotate_g = torch.linalg.qr(torch.randn(OUT, OUT, dtype=torch.float64, generator=generator)).Q
    rotate_a = torch.linalg.qr(torch.randn(width, KEPT, dtype=torch.float64, generator=generator)).Q
    eigenvalues = torch.rand(OUT, KEPT, dtype=torch.float64, generator=generator) * 3
    residual = torch.rand(OUT, dtype=torch.float64, generator=generator) * 0.1
    return KroneckerFactors(rotate_a, rotate_g, eigenvalues, residual)


def _dense_block(layer: KroneckerFactors) -> Tensor:
    """The block ``(U_G (x) U_A) diag(Lambda) (U_G (x) U_A)^T + (U_G (x) P) diag(r (x) 1) (U_G (x) P)^T``, written out."""
    rotate_g, rotate_a = layer.eigvecs_grads, layer.eigvecs_inputs
    outside = torch.eye(rotate_a.shape[0], dtype=torch.float64) - rotate_a @ rotate_a.T
    block = torch.zeros(OUT * rotate_a.shape[0], OUT * rotate_a.shape[0], dtype=torch.float64)
    for o in range(OUT):
        for j in range(KEPT):
            vector = torch.kron(rotate_g[:, o], rotate_a[:, j])
            block += layer.eigenvalues[o, j] * torch.outer(vector, vector)
        block += layer.residual[o] * torch.kron(torch.outer(rotate_g[:, o], rotate_g[:, o]), outside)
    return block


def _solve(layer: KroneckerFactors, vectors: Tensor, damping: float) -> Tensor:
    block = _dense_block(layer) + damping * torch.eye(_dense_block(layer).shape[0], dtype=torch.float64)
    return torch.linalg.solve(block, vectors.reshape(vectors.shape[0], -1).T).T.reshape(vectors.shape)


def test_split_inverse_solves_the_written_out_block() -> None:
    layer = _truncated_layer(has_bias=True)
    vectors = torch.randn(GROUPS, OUT, IN + 1, dtype=torch.float64)
    weights, kept = layer.split_inverse(vectors @ layer.eigvecs_inputs, damping=0.3)
    expected = _solve(layer, vectors, damping=0.3)
    assert relative_error(weights @ vectors + kept @ layer.eigvecs_inputs.T, expected) < 1e-12
    assert relative_error(layer.inverse(vectors, 0.3), expected) < 1e-12


def test_split_inverse_needs_a_truncated_basis() -> None:
    layer = _truncated_layer(has_bias=False)
    full = KroneckerFactors(layer.eigvecs_inputs, layer.eigvecs_grads, layer.eigenvalues)
    with pytest.raises(ValueError, match="truncated"):
        full.split_inverse(torch.zeros(1, OUT, KEPT, dtype=torch.float64), 0.1)


@pytest.mark.parametrize("has_bias", [True, False])
def test_factored_scores_equal_per_sample_gradients_times_the_solved_means(has_bias: bool) -> None:
    layer = _truncated_layer(has_bias)
    features, grads = torch.randn(20, IN, dtype=torch.float64), torch.randn(20, OUT, dtype=torch.float64)
    groups = torch.tensor([0, 2] * 10)  # group 1 has no rows: its column must be zero
    rows = ValidationRows(features, grads, groups, has_bias)
    counts = torch.bincount(groups, minlength=GROUPS).double()
    query = FactoredQuery.build(rows, counts, layer, damping=0.2)

    inputs = torch.cat([features, torch.ones(20, 1, dtype=torch.float64)], dim=1) if has_bias else features
    per_sample = grads[:, :, None] * inputs[:, None, :]  # rank-one gradients g a^T
    means = torch.stack([per_sample[groups == c].sum(0) / max(int(counts[c]), 1) for c in range(GROUPS)])
    solved = _solve(layer, means, damping=0.2)
    assert relative_error(query.dense(), solved) < 1e-12

    train_features, train_grads = torch.randn(7, IN, dtype=torch.float64), torch.randn(7, OUT, dtype=torch.float64)
    train_inputs = torch.cat([train_features, torch.ones(7, 1, dtype=torch.float64)], 1) if has_bias else train_features
    expected = torch.einsum("coi,bo,bi->bc", solved, train_grads, train_inputs)
    scores = query.scores(train_features, train_grads)
    assert relative_error(scores, expected) < 1e-12
    assert scores[:, 1].abs().max() == 0


def test_group_sums_are_the_summed_rank_one_gradients() -> None:
    features, grads = torch.randn(9, IN, dtype=torch.float64), torch.randn(9, OUT, dtype=torch.float64)
    groups = torch.tensor([1, 0, 1, 1, 0, 2, 2, 1, 0])
    sums = ValidationRows(features, grads, groups, has_bias=True).group_sums(4)
    inputs = torch.cat([features, torch.ones(9, 1, dtype=torch.float64)], dim=1)
    for group in range(4):
        members = (groups == group).nonzero().squeeze(1).tolist()
        expected = sum(
            (torch.outer(grads[v], inputs[v]) for v in members), torch.zeros(OUT, IN + 1, dtype=torch.float64)
        )
        torch.testing.assert_close(sums[group], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("validation", "builds"),
    [
        (100, 1),  # 100 rows x 96 numbers: cheaper than the dense 10 x 32 x 65 query, factored
        (210, 0),  # rows kept through the pass, but with the kept directions dearer than dense: dense means
        (300, 0),  # more numbers than the dense query after 4 batches: folded into dense sums in the pass
    ],
)
def test_category_influence_is_the_same_on_either_route(
    trained_mlp, digits400, truncate_wide_inputs, monkeypatch: pytest.MonkeyPatch, validation: int, builds: int
) -> None:
    x, y = digits400
    x, y = torch.cat([x, x.flip(0)]), torch.cat([y, y.flip(0)])  # enough validation rows for every case
    train_data, val_data = loader(x[:100], y[:100]), loader(x[400 : 400 + validation], y[400 : 400 + validation])
    built = []
    original = FactoredQuery.build

    def counted(*args, **kwargs) -> FactoredQuery:
        built.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(FactoredQuery, "build", staticmethod(counted))
    routed = category_influence(trained_mlp, train_data, val_data, 10)
    assert len(built) == builds
    monkeypatch.setattr(queries, "keeps_rows", lambda *args: False)
    dense = category_influence(trained_mlp, train_data, val_data, 10)
    assert relative_error(routed, dense) < 1e-10


def test_influence_value_keeps_the_dense_query(trained_mlp, digits400, truncate_wide_inputs, monkeypatch) -> None:
    # One group: the dense (1, 32, 65) query is smaller than 100 validation rows, so no rows are used.
    x, y = digits400
    monkeypatch.setattr(FactoredQuery, "build", staticmethod(lambda *args: pytest.fail("factored route taken")))
    values = influence_value(trained_mlp, loader(x[:100], y[:100]), loader(x[300:], y[300:]))
    assert values.shape == (100,) and torch.isfinite(values).all()


class _SequenceOrFlat(torch.nn.Module):
    """The digits MLP, also taking ``(batch, 1, 64)`` inputs (a sequence axis: the Linear then has positions)."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x).mean(dim=1) if x.dim() == 3 else self.mlp(x)


def test_training_calls_with_positions_fall_back_to_the_dense_query(
    trained_mlp, digits400, truncate_wide_inputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Validation batches are flat (rows kept, factored query built); training batches carry a sequence
    # axis, which the factored form cannot score: the scores pass must switch to the dense query.
    x, y = digits400
    model = _SequenceOrFlat(trained_mlp)
    train_data, val_data = loader(x[:100, None, :], y[:100]), loader(x[300:], y[300:])
    built = []
    original = FactoredQuery.build
    monkeypatch.setattr(FactoredQuery, "build", staticmethod(lambda *args: built.append(1) or original(*args)))
    routed = category_influence(model, train_data, val_data, 10)
    assert built
    monkeypatch.setattr(queries, "keeps_rows", lambda *args: False)
    dense = category_influence(model, train_data, val_data, 10)
    assert relative_error(routed, dense) < 1e-10
