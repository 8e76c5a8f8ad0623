"""Truncated input eigenbases of wide layers: leading eigenpairs plus one isotropic block, against dense references."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from _influence_reference import (  # noqa: F401
    cnn,
    digits,
    layer_gradients,
    loader,
    relative_error,
    single_thread,
    spearman,
    train,
)
from torch import Tensor
from torch.func import functional_call, grad, vmap

from lightning_pareto.influence import category_influence, fit_curvature
from lightning_pareto.influence.capture import tracked_modules
from lightning_pareto.influence.curvature import influence_mode
from lightning_pareto.influence.kfac import _eigensolver, _gram, eigen
from lightning_pareto.influence.kfac._eigensolver import _next_rank, leading_eigh
from lightning_pareto.influence.kfac.factors import kronecker_factors

pytestmark = pytest.mark.usefixtures("single_thread")


def _decaying_matrix(size: int, decay: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64, generator=generator)).Q
    values = decay ** torch.arange(size, dtype=torch.float64)
    return basis @ torch.diag(values) @ basis.T, values


def test_leading_eigh_finds_the_top_eigenpairs_down_to_the_tolerance() -> None:
    matrix, values = _decaying_matrix(1200, 0.97)
    found_values, found_vectors = leading_eigh(matrix, tolerance=1e-4)
    expected = int((values > 1e-4).sum())  # 0.97^k > 1e-4 for k <= 302
    assert found_values.shape == (expected,) and found_vectors.shape == (1200, expected)
    # float32 range finder, float64 Rayleigh-Ritz: errors far below float32's 6e-8 of the largest (1.0).
    torch.testing.assert_close(found_values, values[:expected], rtol=1e-8, atol=1e-10)
    residual = matrix @ found_vectors - found_vectors * found_values
    assert residual.norm() / found_values.norm() < 1e-6
    torch.testing.assert_close(
        found_vectors.T @ found_vectors, torch.eye(expected, dtype=torch.float64), atol=1e-10, rtol=0
    )


def test_leading_eigh_gives_up_on_a_flat_spectrum() -> None:
    matrix, _ = _decaying_matrix(600, 0.999)
    assert leading_eigh(matrix, tolerance=1e-4) is None


def _first_layer_inputs(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def _nystrom_reference(matrix: Tensor, test: Tensor, tolerance: float, usable: int) -> tuple[Tensor, Tensor]:
    """Leading eigenpairs of the dense Nyström approximation ``Y (test^T Y)^+ Y^T``, ``Y = matrix @ test``."""
    image = matrix @ test
    approximation = image @ torch.linalg.pinv(test.T @ image, hermitian=True) @ image.T
    values, vectors = torch.linalg.eigh((approximation + approximation.T) / 2)
    values, vectors = values.flip(0)[:usable], vectors.flip(1)[:, :usable]
    keep = int((values > tolerance * values[0]).sum())
    return values[:keep], vectors[:, :keep]


@pytest.mark.usefixtures("truncate_wide_inputs")
def test_truncated_kfac_is_the_kronecker_product_with_the_discarded_spectrum_averaged(trained_mlp, digits400) -> None:
    """The wide layer's ``A`` is sketched (40 of 65 columns): K-FAC on its Nyström eigenpairs, the rest of the trace averaged."""
    x, y = digits400
    curvature = fit_curvature(trained_mlp, loader(x, y), curvature="kfac", damping=0.01)
    layer = curvature.layers["0"]
    assert layer.truncated and not curvature.layers["2"].truncated
    kept = layer.eigvecs_inputs.shape[1]
    assert 0 < kept < 36  # below the sketch's 40 - 4 trusted columns
    a = _first_layer_inputs(x)
    a = a.T @ a / len(x)
    values, vectors = torch.linalg.eigh(a)
    values, vectors = values.flip(0), vectors.flip(1)
    kept_basis = layer.eigvecs_inputs
    # The kept directions span about A's leading eigenspace: one sketch of 40 columns on a 65-wide
    # factor with a slow decay leaves principal angles of ~0.1 (the MNIST CNN's scores: Spearman 0.9999).
    projector = kept_basis @ kept_basis.T
    assert (projector - vectors[:, :kept] @ vectors[:, :kept].T).norm() < 0.3
    # Dense reference: the Nyström approximation's leading pairs, the rest of A's trace spread evenly.
    test = _eigensolver.sketch_test_matrix(65, 40).double()
    nystrom_values, nystrom_vectors = _nystrom_reference(a, test, 1e-2, 36)
    assert nystrom_values.shape == (kept,)
    reference_projector = nystrom_vectors @ nystrom_vectors.T
    assert (projector - reference_projector).norm() < 1e-6
    mean_discarded = (torch.trace(a) - nystrom_values.sum()) / (65 - kept)
    identity = torch.eye(65, dtype=torch.float64)
    a_truncated = nystrom_vectors @ torch.diag(nystrom_values) @ nystrom_vectors.T + mean_discarded * (
        identity - reference_projector
    )
    z1 = (x @ trained_mlp[0].weight.T + trained_mlp[0].bias).detach().requires_grad_(True)
    logits = trained_mlp[2](torch.relu(z1))
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), [z1])
    dense = torch.kron(g.T @ g / len(x), a_truncated) + 0.01 * torch.eye(32 * 65, dtype=torch.float64)
    torch.manual_seed(0)
    vectors_in = torch.randn(3, 32, 65, dtype=torch.float64)
    head = torch.zeros(3, *curvature.layers["2"].eigenvalues.shape, dtype=torch.float64)
    solved = curvature.inverse_hvp({"0": vectors_in, "2": head})["0"]
    expected = torch.linalg.solve(dense, vectors_in.flatten(1).T).T.reshape(vectors_in.shape)
    assert relative_error(solved, expected) < 1e-6  # the sketch's stabilising shift, ~1e-7 of A


@pytest.mark.usefixtures("truncate_wide_inputs")
def test_truncated_ekfac_residual_is_the_mean_second_moment_outside_the_kept_directions(trained_mlp, digits400) -> None:
    x, y = digits400
    curvature = fit_curvature(trained_mlp, loader(x, y), curvature="ekfac", damping=0.01)
    layer = curvature.layers["0"]
    kept = layer.eigvecs_inputs.shape[1]
    params = {name: p.detach() for name, p in trained_mlp.named_parameters()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(trained_mlp, p, (xi[None],)), yi[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    per_sample = torch.cat([grads["0.weight"], grads["0.bias"][:, :, None]], 2)  # (n, 32, 65)
    rotated = layer.eigvecs_grads.T @ per_sample  # output side rotated
    complement = torch.eye(65, dtype=torch.float64) - layer.eigvecs_inputs @ layer.eigvecs_inputs.T
    inner = (rotated @ layer.eigvecs_inputs).square().mean(0)
    outside = (rotated @ complement).square().sum(2).mean(0) / (65 - kept)
    torch.testing.assert_close(layer.eigenvalues, inner, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(layer.residual, outside, rtol=1e-8, atol=1e-14)


def test_truncation_leaves_default_damped_influence_unchanged(
    trained_mlp, digits400, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = digits400
    train_data, val_data = loader(x[:300], y[:300]), loader(x[300:], y[300:])
    full = category_influence(trained_mlp, train_data, val_data, 10)
    monkeypatch.setattr(eigen, "TRUNCATE_INPUTS_ABOVE", 48)
    monkeypatch.setattr(_eigensolver, "SKETCH_COLUMNS", 56)
    monkeypatch.setattr(_eigensolver, "SKETCH_OVERSAMPLING", 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the sketch resolves the spectrum down to the tolerance
        truncated = category_influence(trained_mlp, train_data, val_data, 10)
    assert min(spearman(truncated[:, c], full[:, c]) for c in range(10)) > 0.995


def test_nystrom_eigh_from_a_streamed_float32_sketch() -> None:
    """``A = X^T X / n`` seen only as ``sum_b X_b^T (X_b test)`` in float32: its leading pairs to 1e-3."""
    generator = torch.Generator().manual_seed(3)
    size, samples = 600, 2000
    scales = 0.95 ** torch.arange(size, dtype=torch.float64)  # A's spectrum decays about as 0.9^k
    rows = torch.randn(samples, size, dtype=torch.float64, generator=generator) * scales.sqrt()
    rows = rows @ torch.linalg.qr(torch.randn(size, size, dtype=torch.float64, generator=generator)).Q.T
    matrix = rows.T @ rows / samples
    test = _eigensolver.sketch_test_matrix(size, 256)
    image = torch.zeros(size, 256)
    for start in range(0, samples, 256):
        batch = rows[start : start + 256].float()
        image.addmm_(batch.T, batch @ test)
    sketch = _eigensolver.InputSketch(image / samples, test, torch.trace(matrix))
    values, vectors, reached = _eigensolver.nystrom_eigh(sketch, tolerance=1e-3)
    exact_values, exact_vectors = torch.linalg.eigh(matrix)
    exact_values, exact_vectors = exact_values.flip(0), exact_vectors.flip(1)
    expected = int((exact_values > 1e-3 * exact_values[0]).sum())
    assert reached and abs(values.shape[0] - expected) <= 1 and vectors.shape == (size, values.shape[0])
    kept = min(values.shape[0], expected)
    # Eigenvalues to 1e-4 of the largest; the kept subspace within small principal angles.
    torch.testing.assert_close(values[:kept], exact_values[:kept], rtol=0, atol=1e-4 * float(exact_values[0]))
    identity = torch.eye(values.shape[0], dtype=torch.float64)
    torch.testing.assert_close(vectors.T @ vectors, identity, rtol=0, atol=1e-8)
    leading = exact_vectors[:, :20]  # the first 20 directions are captured almost exactly
    assert (vectors @ (vectors.T @ leading) - leading).norm() / leading.norm() < 1e-3


def test_a_spectrum_longer_than_the_sketch_is_kept_at_the_sketch_and_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eigen, "TRUNCATE_INPUTS_ABOVE", 48)
    monkeypatch.setattr(_eigensolver, "SKETCH_COLUMNS", 16)
    monkeypatch.setattr(_eigensolver, "SKETCH_OVERSAMPLING", 4)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    x, y = torch.randn(256, 64, dtype=torch.float64), torch.randint(0, 3, (256,))  # a flat input spectrum
    with pytest.warns(UserWarning, match="more than its sketch resolves"):
        curvature = fit_curvature(model, loader(x, y), curvature="kfac")
    assert curvature.layers["0"].eigvecs_inputs.shape == (65, 12)  # 16 columns less 4 not trusted
    assert curvature.layers["0"].truncated and not curvature.layers["2"].truncated


class _SequenceModel(torch.nn.Module):
    """A Linear over 3 positions of 40 features (rows with the bias slot), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(40, 6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.body(x.view(-1, 3, 40))).mean(1))


@pytest.mark.parametrize("positions", [False, True])
def test_the_factor_pass_sketches_a_wide_linear_input_factor(positions: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sketch is ``A @ test`` and ``trace(A)`` for ``A`` written out by hand (bias slot included)."""
    monkeypatch.setattr(eigen, "TRUNCATE_INPUTS_ABOVE", 32)
    monkeypatch.setattr(_eigensolver, "SKETCH_COLUMNS", 16)
    torch.manual_seed(0)
    if positions:
        model, x = _SequenceModel().double(), torch.randn(64, 120, dtype=torch.float64)
        features = x.view(-1, 40)  # every position a row
    else:
        model = torch.nn.Sequential(torch.nn.Linear(40, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).double()
        x = torch.randn(64, 40, dtype=torch.float64)
        features = x
    y = torch.randint(0, 3, (64,))
    tracked = tracked_modules(model, None)
    with influence_mode(model):
        found = kronecker_factors(
            model, loader(x, y, batch_size=16), tracked, fisher="empirical", seed=0, progress=False
        )
    name = next(iter(tracked))
    sketch = found[name][0]
    assert isinstance(sketch, _eigensolver.InputSketch) and sketch.image.shape == (41, 16)
    rows = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], 1)
    matrix = rows.T @ rows / len(rows)
    torch.testing.assert_close(sketch.image, matrix @ sketch.test.double(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sketch.trace, torch.trace(matrix), rtol=1e-12, atol=0)
    # Orthonormal test columns, the same for every call (and so on every DDP rank).
    torch.testing.assert_close(sketch.test.T @ sketch.test, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-6)
    assert torch.equal(sketch.test, _eigensolver.sketch_test_matrix(41, 16).double())


@pytest.mark.parametrize("decay", [0.97, 0.985, 0.99])
def test_next_rank_extrapolates_an_exponential_decay_to_the_tolerance(decay: float) -> None:
    values = decay ** torch.arange(256, dtype=torch.float64)
    needed = int((decay ** torch.arange(4096, dtype=torch.float64) > 1e-4).sum())  # 303, 610, 917
    rank = _next_rank(values, 1e-4, limit=2000)
    assert rank % 32 == 0 and min(needed, 512) <= rank <= min(512, 1.25 * needed + 32)  # reaches it, or doubles
    # Out of reach of a 1,200-row matrix's 600 - oversampling directions: give up at once.
    assert (_next_rank(values, 1e-4, limit=568) is None) == (needed > 568)


def test_next_rank_gives_up_on_a_tail_that_does_not_decay() -> None:
    values = torch.cat([0.9 ** torch.arange(128.0), torch.full((128,), 0.9**128)]).double()
    assert _next_rank(values, 1e-4, limit=2000) is None


def test_single_threaded_lapack_restores_the_thread_count_also_on_errors() -> None:
    from lightning_pareto.influence._threads import single_threaded_lapack

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with single_threaded_lapack(torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"), single_threaded_lapack(torch.device("cpu")):
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("ones", ["none", "last", "implied"])
@pytest.mark.parametrize(
    ("strip_width", "strips_from", "width"),
    [(7, 5, 14), (7, 5, 31), (800, 192, 1700), (800, 192, 289), (800, 192, 200), (800, 192, 150)],
)
def test_strip_accumulation_equals_the_dense_gram(
    monkeypatch: pytest.MonkeyPatch, strip_width: int, strips_from: int, width: int, ones: str
) -> None:
    """Strips of the upper triangle (wide and three-strip regimes, none below ``_STRIPS_FROM``), and the
    bias slot's Gram row from column sums and the row count (``ones_last``: a ones column in the rows;
    ``ones_implied``: not in them)."""
    from lightning_pareto.influence.kfac._gram import _strips, accumulate_gram, symmetrized

    monkeypatch.setattr(_gram, "_STRIP_WIDTH", strip_width)
    monkeypatch.setattr(_gram, "_STRIPS_FROM", strips_from)
    generator = torch.Generator().manual_seed(width)
    batches = [torch.randn(rows, width, dtype=torch.float64, generator=generator) for rows in (5, 9)]
    if ones == "last":
        for rows in batches:
            rows[:, -1] = 1.0
    total = torch.zeros(width + (ones == "implied"), width + (ones == "implied"), dtype=torch.float64)
    for rows in batches:
        accumulate_gram(total, rows, ones_last=ones == "last", ones_implied=ones == "implied")
    stacked = torch.cat(batches)
    if ones == "implied":
        stacked = torch.cat([stacked, torch.ones(stacked.shape[0], 1, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(
        symmetrized(total, ones_last=ones != "none"), stacked.T @ stacked, rtol=1e-12, atol=1e-12
    )
    # The cases do exercise strips (contiguous, covering every column), and none below _STRIPS_FROM.
    strips = _strips(width)
    if width < strips_from:
        assert strips == []
    else:
        assert len(strips) > 1 and strips[0][0] == 0 and strips[-1][1] == width
        assert all(stop == start for (_, stop), (start, _) in zip(strips[:-1], strips[1:]))


@pytest.mark.parametrize("ones_last", [False, True])
@pytest.mark.parametrize("kept", [5, 32, 33])
def test_input_rotation_equals_the_plain_product(ones_last: bool, kept: int) -> None:
    """Padded columns are zero and the folded-in bias row gives the same product as ``rows @ U_A``."""
    from lightning_pareto.influence.kfac._rotation import InputRotation as _InputRotation

    generator = torch.Generator().manual_seed(kept)
    vectors = torch.randn(40, kept, dtype=torch.float64, generator=generator)
    rows = torch.randn(6, 3, 40, dtype=torch.float64, generator=generator)
    if ones_last:
        rows[..., -1] = 1.0
    rotation = _InputRotation.of(vectors, ones_last=ones_last)
    assert rotation.padded.shape[1] % 32 == 0
    product = rotation.inputs(rows)
    torch.testing.assert_close(product[..., :kept], rows @ vectors, rtol=1e-12, atol=1e-12)
    assert torch.all(product[..., kept:] == 0)
    torch.testing.assert_close(rotation.inputs(rows[:, 0]), rows[:, 0] @ rotation.padded, rtol=1e-12, atol=1e-12)


def test_leading_eigh_of_a_float32_matrix_matches_the_dense_float64_pairs() -> None:
    """A wide factor reaches leading_eigh in float32: pairs still match a dense float64 eigh."""
    generator = torch.Generator().manual_seed(3)
    size = 600
    basis, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64, generator=generator))
    spectrum = torch.logspace(0, -12, size, dtype=torch.float64)  # 1e-4 at rank 200
    matrix = ((basis * spectrum) @ basis.T).float()
    found_values, found_vectors = leading_eigh(matrix, tolerance=1e-4)
    values, vectors = torch.linalg.eigh(matrix.double())
    values, vectors = values.flip(0), vectors.flip(1)
    keep = found_values.shape[0]
    assert found_values.dtype == torch.float64
    assert keep == int((values > 1e-4 * values[0]).sum())
    torch.testing.assert_close(found_values, values[:keep], rtol=1e-4, atol=1e-8)
    overlap = (found_vectors.T @ vectors[:, :keep]).abs().diagonal()
    assert overlap[: keep // 2].min() > 0.999


@pytest.fixture(scope="module")
def trained_cnn() -> tuple[torch.nn.Module, Tensor, Tensor]:
    """The digits CNN trained in float64 on 256 digits: conv2 has 55 inputs (6 channels x 3 x 3 + bias)."""
    x, y = digits(torch.float64)
    x, y = x[:256], y[:256]
    return train(cnn().double(), x, y, steps=40), x, y


def test_a_decayed_dense_input_factor_is_truncated_a_flat_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eigen, "TRUNCATE_DECAYED_ABOVE", 64)
    grads = torch.eye(3, dtype=torch.float64)
    decayed, _ = _decaying_matrix(100, 0.85)  # 0.85^k > 1e-3 for k <= 42 > 25: kept whole
    steep, steep_values = _decaying_matrix(100, 0.7)  # 0.7^k > 1e-3 for k <= 19: truncated to 20
    narrow, _ = _decaying_matrix(60, 0.7)  # not wider than 64
    bases = eigen.eigenbases({"decayed": (decayed, grads), "steep": (steep, grads), "narrow": (narrow, grads)})
    assert not bases["decayed"].truncated and not bases["narrow"].truncated
    steep_basis = bases["steep"]
    kept = int((steep_values > eigen.TRUNCATION_TOLERANCE).sum())
    assert steep_basis.eigvecs_inputs.shape == (100, kept) and kept == 20
    torch.testing.assert_close(steep_basis.eigenvalues[0], steep_values[:kept], rtol=1e-10, atol=1e-14)
    # The discarded directions' block: the mean of the rest of the spectrum (G's eigenvalues are 1).
    torch.testing.assert_close(steep_basis.residual, torch.full((3,), float(steep_values[kept:].mean())).double())
    identity = torch.eye(kept, dtype=torch.float64)
    torch.testing.assert_close(steep_basis.eigvecs_inputs.T @ steep_basis.eigvecs_inputs, identity, atol=1e-12, rtol=0)


def test_truncated_conv_ekfac_fits_inside_the_kept_directions_and_keeps_kfac_outside(
    trained_cnn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside: per-sample second moments against torch.func gradients. Outside: K-FAC's discarded block from dense factors."""
    model, x, y = trained_cnn
    monkeypatch.setattr(eigen, "TRUNCATE_DECAYED_ABOVE", 32)
    monkeypatch.setattr(eigen, "TRUNCATED_FRACTION", 1.0)
    monkeypatch.setattr(eigen, "TRUNCATION_TOLERANCE", 1e-2)
    curvature = fit_curvature(model, loader(x, y), curvature="ekfac", damping=0.1, correction_samples=None)
    per_sample = layer_gradients(model, x, y)
    layer = curvature.layers["conv2"]
    inputs, kept = layer.eigvecs_inputs.shape
    assert layer.truncated and inputs == 55 and 0 < kept < 55
    assert not curvature.layers["conv1"].truncated  # 10 inputs
    rotated = layer.eigvecs_grads.T @ per_sample["conv2"]
    torch.testing.assert_close(
        layer.eigenvalues, (rotated @ layer.eigvecs_inputs).square().mean(0), rtol=1e-8, atol=1e-14
    )
    # Dense K-FAC factors of conv2 (KFC scaling): A over every position of the unfolded patches, G
    # over every position's output gradient per sample.
    captured = {}
    handle = model.conv2.register_forward_hook(lambda module, args, output: captured.update(x=args[0], z=output))
    training = model.training
    logits = model.eval()(x)
    model.train(training)
    handle.remove()
    (grads,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), [captured["z"]])
    conv = model.conv2
    padding = tuple(k // 2 for k in conv.kernel_size) if conv.padding == "same" else conv.padding
    patches = F.unfold(captured["x"].detach(), conv.kernel_size, padding=padding, stride=conv.stride)
    patches = torch.cat([patches, torch.ones_like(patches[:, :1])], 1).transpose(1, 2).flatten(end_dim=1)
    a = patches.T @ patches / patches.shape[0]
    flat_grads = grads.permute(0, 2, 3, 1).flatten(end_dim=2)
    g = flat_grads.T @ flat_grads / len(x)
    values_a = torch.linalg.eigvalsh(a).flip(0)
    discarded_mean = values_a[kept:].sum() / (inputs - kept)
    kfac_outside = (layer.eigvecs_grads.T @ g @ layer.eigvecs_grads).diagonal() * discarded_mean
    torch.testing.assert_close(layer.residual, kfac_outside, rtol=1e-6, atol=1e-14)
    # Not the fitted second moments (what a Linear layer gets): the check above would not pass by accident.
    complement = torch.eye(inputs, dtype=torch.float64) - layer.eigvecs_inputs @ layer.eigvecs_inputs.T
    fitted = (rotated @ complement).square().sum(2).mean(0) / (inputs - kept)
    assert relative_error(layer.residual, fitted) > 1e-2


def test_truncating_the_convolution_leaves_default_damped_influence_unchanged(
    trained_cnn, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, y = trained_cnn
    train_data, val_data = loader(x[:192], y[:192]), loader(x[192:], y[192:])
    full = category_influence(model, train_data, val_data, 10)
    monkeypatch.setattr(eigen, "TRUNCATE_DECAYED_ABOVE", 32)
    monkeypatch.setattr(eigen, "TRUNCATED_FRACTION", 1.0)
    truncated = category_influence(model, train_data, val_data, 10)
    assert min(spearman(truncated[:, c], full[:, c]) for c in range(10)) > 0.99


def test_nystrom_eigh_of_an_all_zero_factor_ends_with_a_zero_eigenvalue() -> None:
    """Inputs that are all zero (a dead layer): a zero shift would never make the core positive definite."""
    test = _eigensolver.sketch_test_matrix(100, 24)
    sketch = _eigensolver.InputSketch(torch.zeros(100, 24), test, torch.zeros((), dtype=torch.float64))
    values, vectors, reached = _eigensolver.nystrom_eigh(sketch, tolerance=1e-3)
    assert reached and values.shape == (1,) and float(values[0]) == 0.0
    assert vectors.shape == (100, 1) and torch.isfinite(vectors).all()
