"""Fitting the curvature on a subset of the training set (``curvature_samples``)."""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F
from _influence_reference import digits, loader, mlp, single_thread, spearman, train  # noqa: F401
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_pareto.influence import category_influence, fit_curvature
from lightning_pareto.influence._subset import curvature_batches

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits64() -> tuple[Tensor, Tensor]:
    x, y = digits(torch.float64)
    return x[:600], y[:600]


def _kept_indices(batches) -> Tensor:
    return torch.cat([batch[2] for batch in batches])


def test_subset_keeps_the_asked_share_spread_over_a_sorted_loader(digits64) -> None:
    x, y = digits64
    order = torch.argsort(y, stable=True)  # sorted by class: a first-rows subset would miss classes
    data = DataLoader(TensorDataset(x[order], y[order], torch.arange(len(y))), batch_size=64)
    subset = curvature_batches(data, 150, seed=3)
    kept = _kept_indices(subset)
    assert len(kept) in (149, 150, 151)
    assert len(torch.unique(kept)) == len(kept)
    counts, expected = torch.bincount(y[order][kept], minlength=10), torch.bincount(y, minlength=10) * 150 / len(y)
    assert (counts - expected).abs().max() <= 1.0 + 1e-9  # systematic sampling: within one of proportional
    torch.testing.assert_close(_kept_indices(subset), kept)  # every pass sees the same rows
    assert not torch.equal(_kept_indices(curvature_batches(data, 150, seed=4)), kept)


def test_kept_rows_come_in_order_in_batches_of_the_loaders_size(digits64) -> None:
    # A fifth of the rows in a fifth of the batches (the passes cost per batch), the rows those of a
    # per-batch selection: the same samples, labels and indices, in the same order.
    x, y = digits64
    data = DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=64)
    batches = list(curvature_batches(data, 120, seed=5))
    sizes = [len(batch[1]) for batch in batches]
    assert sizes[:-1] == [64] * (len(sizes) - 1) and 0 < sizes[-1] <= 64 and sum(sizes) in (119, 120, 121)
    kept = _kept_indices(batches)
    assert torch.equal(kept, torch.sort(kept).values)
    assert torch.equal(torch.cat([batch[0] for batch in batches]), x[kept])
    assert torch.equal(torch.cat([batch[1] for batch in batches]), y[kept])


def test_all_samples_or_more_leaves_the_loader_alone(digits64) -> None:
    data = loader(*digits64)
    assert curvature_batches(data, None, seed=0) is data
    assert curvature_batches(data, len(digits64[1]), seed=0) is data


def test_kfac_on_a_subset_inverts_the_factors_of_exactly_those_rows(digits64) -> None:
    x, y = digits64
    model = train(mlp().double(), x, y, steps=60)
    data = loader(x, y)
    kept = _kept_indices(curvature_batches(data, 200, seed=7))
    damping = 0.05
    curvature = fit_curvature(model, data, curvature="kfac", damping=damping, curvature_samples=200, seed=7)
    # Hand-written K-FAC factors of the kept rows only: A = E[a a^T], G = E[g g^T] per layer.
    xs, ys = x[kept], y[kept]
    first, last = model[0], model[2]
    z1 = (xs @ first.weight.T + first.bias).detach().requires_grad_(True)
    hidden = torch.relu(z1)
    z2 = hidden @ last.weight.T + last.bias
    g1, g2 = torch.autograd.grad(F.cross_entropy(z2, ys, reduction="sum"), [z1, z2])
    ones = torch.ones(len(kept), 1, dtype=x.dtype)
    factors = {"0": (torch.cat([xs, ones], 1), g1), "2": (torch.cat([hidden.detach(), ones], 1), g2)}
    torch.manual_seed(0)
    for name, (a, g) in factors.items():
        dense = torch.kron(g.T @ g, a.T @ a) / len(kept) ** 2 + damping * torch.eye(
            g.shape[1] * a.shape[1], dtype=x.dtype
        )
        vectors = torch.randn(2, g.shape[1], a.shape[1], dtype=x.dtype)
        others = {
            key: torch.zeros(2, *value.eigenvalues.shape, dtype=x.dtype) for key, value in curvature.layers.items()
        }
        solved = curvature.inverse_hvp({**others, name: vectors})[name]
        expected = torch.linalg.solve(dense, vectors.flatten(1).T).T.reshape(vectors.shape)
        torch.testing.assert_close(solved, expected, rtol=1e-8, atol=1e-10)


def test_influence_from_a_subset_approaches_the_full_fit_as_it_grows() -> None:
    x, y = digits(torch.float64)
    model = train(mlp().double(), x[:1400], y[:1400], steps=80)
    train_data, val_data = loader(x[:1400], y[:1400]), loader(x[1400:], y[1400:])
    full = category_influence(model, train_data, val_data, 10)

    def agreement(samples: int) -> float:
        subset = category_influence(model, train_data, val_data, 10, curvature_samples=samples)
        assert subset.shape == full.shape and torch.isfinite(subset).all()
        return statistics.median(spearman(subset[:, c], full[:, c]) for c in range(10))

    half, quarter = agreement(700), agreement(350)
    assert half > 0.9  # measured 0.94
    assert half > quarter  # measured 0.76 at a quarter


@pytest.mark.parametrize(
    ("samples", "error", "match"),
    [(0, ValueError, ">= 1"), (2.5, TypeError, "int"), (True, TypeError, "int")],
)
def test_bad_curvature_samples_fail_before_any_pass(digits64, samples, error, match) -> None:
    model = nn.Sequential(nn.Linear(64, 10)).double()
    with pytest.raises(error, match=match):
        category_influence(model, loader(*digits64), loader(*digits64), 10, curvature_samples=samples)


def test_a_loader_without_a_dataset_cannot_be_subset(digits64) -> None:
    x, y = digits64
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 600, 100)]
    model = nn.Sequential(nn.Linear(64, 10)).double()
    with pytest.raises(ValueError, match="sized .dataset"):
        fit_curvature(model, batches, curvature_samples=100)


def _eigenvalues(curvature) -> dict[str, Tensor]:
    return {name: layer.eigenvalues for name, layer in curvature.layers.items()}


def test_the_correction_sees_its_own_subset_capped_by_the_factor_subset(digits64, monkeypatch) -> None:
    from lightning_pareto.influence import _subset
    from lightning_pareto.influence.kfac import factors

    x, y = digits64
    model = train(mlp().double(), x, y, steps=60)
    data = loader(x, y)

    def fitted(**options) -> dict[str, Tensor]:
        return _eigenvalues(fit_curvature(model, data, curvature="ekfac", damping=0.05, seed=7, **options))

    def same(left: dict[str, Tensor], right: dict[str, Tensor]) -> bool:
        return all(torch.allclose(left[name], right[name], rtol=1e-12, atol=0) for name in left)

    everything = fitted(correction_samples=None)
    assert not same(fitted(correction_samples=100), everything)
    monkeypatch.setattr(_subset, "DEFAULT_CORRECTION_SAMPLES", 100)
    # "auto" (the default): every sample while the factor pass keeps them all, else the default subset.
    assert same(fitted(), everything)
    for room in (0, 400_000):  # nothing kept; part of the 600 samples' 660 kB kept
        monkeypatch.setattr(factors, "STASH_BYTES", room)
        assert same(fitted(), fitted(correction_samples=100))
    assert same(
        fitted(curvature_samples=200, correction_samples=400), fitted(curvature_samples=200, correction_samples=200)
    )
    # A loader without a sized dataset: "auto" means every sample (its size is unknown).
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(y), 64)]
    auto = _eigenvalues(fit_curvature(model, batches, curvature="ekfac", damping=0.05))
    assert same(
        auto, _eigenvalues(fit_curvature(model, batches, curvature="ekfac", damping=0.05, correction_samples=None))
    )


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), ("all", TypeError), (2.5, TypeError)])
def test_bad_correction_samples_fail_before_any_pass(digits64, value, error) -> None:
    x, y = digits64
    with pytest.raises(error, match="correction_samples"):
        fit_curvature(mlp().double(), [(x, "not a batch")], curvature="ekfac", correction_samples=value)


@pytest.mark.parametrize("correction_samples", [None, 150])
def test_the_factor_pass_keeps_the_corrections_rows_and_gives_the_same_curvature(
    digits64, monkeypatch, correction_samples
) -> None:
    from lightning_pareto.influence.kfac import correction, factors

    x, y = digits64
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10)
    ).double()
    data = loader(x, y)

    def fitted() -> dict[str, Tensor]:
        return _eigenvalues(
            fit_curvature(model, data, curvature="ekfac", damping=0.05, seed=2, correction_samples=correction_samples)
        )

    monkeypatch.setattr(factors, "STASH_BYTES", 0)  # nothing fits: the correction runs its own pass
    two_passes = fitted()
    monkeypatch.setattr(factors, "STASH_BYTES", 256 << 20)
    passes = []
    original = correction.captured_batches
    monkeypatch.setattr(
        correction, "captured_batches", lambda *args, **kwargs: passes.append(1) or original(*args, **kwargs)
    )
    one_pass = fitted()
    assert passes == []  # the correction used the factor pass's rows
    for name in two_passes:
        torch.testing.assert_close(one_pass[name], two_passes[name], rtol=1e-10, atol=1e-14)
    sampled = fit_curvature(
        model, data, curvature="ekfac", damping=0.05, fisher="sampled", correction_samples=correction_samples
    )
    assert passes == [1] and set(_eigenvalues(sampled)) == set(two_passes)  # the sampled Fisher keeps its own pass


def test_auto_fits_the_factors_on_a_subset_only_of_a_large_training_set(digits64, monkeypatch) -> None:
    from lightning_pareto.influence import _subset

    x, y = digits64
    model = train(mlp().double(), x, y, steps=60)
    data = loader(x, y)

    def factors(curvature: str = "ekfac", **options) -> dict[str, Tensor]:
        fitted = fit_curvature(model, data, curvature=curvature, damping=0.05, seed=7, **options)
        return {"matrix": fitted.matrix} if curvature == "exact" else _eigenvalues(fitted)

    def same(left: dict[str, Tensor], right: dict[str, Tensor]) -> bool:
        return all(torch.allclose(left[name], right[name], rtol=1e-12, atol=0) for name in left)

    # 600 samples, at most the default: "auto" (the default) fits on every one.
    assert same(factors(), factors(curvature_samples=None))
    # A training set larger than the default: "auto" is the default's subset, which the hand-written
    # reference above checks row by row for an explicit size.
    monkeypatch.setattr(_subset, "DEFAULT_CURVATURE_SAMPLES", 200)
    assert same(factors(), factors(curvature_samples=200))
    assert not same(factors(), factors(curvature_samples=None))
    # "exact" stays exact: "auto" does not subsample the dense curvature.
    assert same(factors("exact"), factors("exact", curvature_samples=None))


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10)
    ).double()


@pytest.mark.parametrize(
    ("stash_bytes", "shuffle", "indexed", "scored_in_a_pass"),
    [
        (512 << 20, False, True, "none"),  # every batch kept whole: no score pass
        (512 << 20, True, True, "none"),  # a reshuffled loader: rows are matched by index
        (500_000, False, True, "some"),  # room for part of the set (780 kB): the pass scores the rest only
        (512 << 20, False, False, "all"),  # (x, y) batches: rows have no index to be matched by
    ],
)
def test_scores_of_the_rows_the_factor_pass_kept_equal_a_score_pass_over_every_row(
    digits64, monkeypatch, stash_bytes, shuffle, indexed, scored_in_a_pass
) -> None:
    from lightning_pareto.influence.kfac import factors, scores

    x, y = digits64
    model = _conv_model()
    dataset = TensorDataset(x[:480], y[:480], torch.arange(480)) if indexed else TensorDataset(x[:480], y[:480])
    data = DataLoader(dataset, batch_size=64, shuffle=shuffle, generator=torch.Generator().manual_seed(3))
    val = loader(x[480:], y[480:])
    # The reference: a curvature fitted apart, so the score phase runs its own pass over every row.
    # A reshuffled loader's subset rows differ from pass to pass: correct on every row there.
    options = {"damping": 0.05, "seed": 1, "correction_samples": None if shuffle else 120}
    expected = category_influence(model, data, val, 10, curvature=fit_curvature(model, data, **options))
    monkeypatch.setattr(factors, "STASH_BYTES", stash_bytes)
    rows_in_pass = []
    original = scores.captured_batches

    def counted(*args, **kwargs):
        for batch in original(*args, **kwargs):
            rows_in_pass.append(batch.size)
            yield batch

    monkeypatch.setattr(scores, "captured_batches", counted)
    actual = category_influence(model, data, val, 10, **options)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(actual).all()
    seen = sum(rows_in_pass)
    assert {"none": seen == 0, "some": 0 < seen < 480, "all": seen == 480}[scored_in_a_pass], seen


@pytest.mark.parametrize(("free", "expected"), [(1 << 30, 256 << 20), (8 << 30, 512 << 20), (0, 0)])
def test_on_a_gpu_the_factor_pass_keeps_at_most_a_quarter_of_the_free_memory(monkeypatch, free, expected) -> None:
    from lightning_pareto.influence.kfac import factors

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 << 30))
    assert factors.stash_budget(torch.device("cuda", 0)) == expected
    assert factors.stash_budget(torch.device("cpu")) == factors.STASH_BYTES


def test_a_batch_kept_whole_unfolds_its_patches_once(digits64, monkeypatch) -> None:
    """The factor sums form a kept batch's conv rows in the stored batch; the correction and the scores reuse them."""
    from lightning_pareto.influence import capture

    x, y = digits64
    model = _conv_model()
    conv = model[1]
    unfolded = []
    original = capture._write_inputs

    def counted(module, inputs, out, cache):
        if module is conv:
            unfolded.append(inputs.shape[0])
        return original(module, inputs, out, cache)

    monkeypatch.setattr(capture, "_write_inputs", counted)
    category_influence(model, loader(x[:480], y[:480]), loader(x[480:], y[480:]), 10, damping=0.05)
    # 480 training rows in 8 batches (factors, correction and scores from one unfolding each) and the
    # 120 validation rows of the queries.
    assert sorted(unfolded) == sorted([64] * 7 + [32] + [64, 56])


def test_a_loader_that_reuses_its_batch_buffer_gives_the_same_scores(digits64) -> None:
    """Batches kept whole hold what the pass recorded: a loader that overwrites one buffer must not change them."""
    x, y = digits64
    train_x, train_y = x[:480], y[:480]
    model = train(mlp().double(), train_x, train_y, steps=30)
    val = loader(x[480:], y[480:])
    expected = category_influence(model, loader(train_x, train_y), val, 10, damping=0.05)
    buffer = torch.empty(64, train_x.shape[1], dtype=train_x.dtype)

    def collate_into_buffer(items: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        inputs, labels, index = (torch.stack(column) for column in zip(*items))
        return buffer[: len(items)].copy_(inputs), labels, index

    dataset = TensorDataset(train_x, train_y, torch.arange(480))
    reusing = DataLoader(dataset, batch_size=64, collate_fn=collate_into_buffer)
    actual = category_influence(model, reusing, val, 10, damping=0.05)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)
