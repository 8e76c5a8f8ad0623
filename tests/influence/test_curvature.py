"""K-FAC, EKFAC and exact curvatures against dense references; damping and option handling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _influence_reference import (  # noqa: F401
    cnn,
    dense_ggn,
    digits,
    layer_gradients,
    loader,
    mlp,
    relative_error,
    single_thread,
    train,
)
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from lightning_pareto.influence import InfluenceTimings, KroneckerCurvature, fit_curvature
from lightning_pareto.influence._base import DEFAULT_DAMPING_FACTOR
from lightning_pareto.influence.exact import MAX_EXACT_PARAMETERS

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits64() -> tuple[Tensor, Tensor]:
    x, y = digits(torch.float64)
    return x[:256], y[:256]


@pytest.fixture(scope="module")
def trained_mlp(digits64) -> nn.Module:
    return train(mlp().double(), *digits64, steps=80)


@pytest.fixture(scope="module")
def trained_cnn(digits64) -> nn.Module:
    return train(cnn().double(), *digits64, steps=40)


class WideConv(nn.Module):
    """A 24-channel Conv2d over 4 positions (more channels than positions) and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 24, 4, stride=4)
        self.head = nn.Linear(96, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.conv(x.view(-1, 1, 8, 8))).flatten(1))


@pytest.fixture(scope="module")
def trained_wide_cnn(digits64) -> nn.Module:
    torch.manual_seed(0)
    return train(WideConv().double(), *digits64, steps=40)


def _mlp_factors(model: nn.Sequential, x: Tensor, y: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """K-FAC factors of the 64-32-10 MLP written out by hand: A = E[a a^T], G = E[g g^T]."""
    first, last = model[0], model[2]
    z1 = x @ first.weight.T + first.bias
    z1.retain_grad()
    h = torch.relu(z1)
    z2 = h @ last.weight.T + last.bias
    z2.retain_grad()
    F.cross_entropy(z2, y, reduction="sum").backward()
    ones = torch.ones(len(x), 1, dtype=x.dtype)
    factors = {}
    for name, a, g in [("0", torch.cat([x, ones], 1), z1.grad), ("2", torch.cat([h.detach(), ones], 1), z2.grad)]:
        factors[name] = (a.T @ a / len(x), g.T @ g / len(x))
    model.zero_grad(set_to_none=True)
    return factors


def test_kfac_inverts_the_damped_kronecker_product(trained_mlp, digits64) -> None:
    damping = 0.03
    curvature = fit_curvature(trained_mlp, loader(*digits64), curvature="kfac", damping=damping)
    factors = _mlp_factors(trained_mlp, *digits64)
    torch.manual_seed(1)
    vectors = {
        name: torch.randn(3, *factors[name][1].shape[:1], factors[name][0].shape[0], dtype=torch.float64)
        for name in factors
    }
    solved = curvature.inverse_hvp(vectors)
    for name, (a, g) in factors.items():
        dense = torch.kron(g, a) + damping * torch.eye(g.shape[0] * a.shape[0], dtype=torch.float64)
        expected = torch.linalg.solve(dense, vectors[name].flatten(1).T).T.reshape(vectors[name].shape)
        assert relative_error(solved[name], expected) < 1e-9


# The CNN's convolutions rotate each sample's gradient, the wide one's rotate its positions (see _gradient_first).
@pytest.mark.parametrize("model_name", ["trained_mlp", "trained_cnn", "trained_wide_cnn"])
def test_ekfac_eigenvalues_are_second_moments_in_the_kfac_eigenbasis(request, model_name, digits64) -> None:
    model = request.getfixturevalue(model_name)
    curvature = fit_curvature(model, loader(*digits64), curvature="ekfac", damping=0.1)
    per_sample = layer_gradients(model, *digits64)
    for name, layer in curvature.layers.items():
        rotated = layer.eigvecs_grads.T @ per_sample[name] @ layer.eigvecs_inputs
        torch.testing.assert_close(layer.eigenvalues, rotated.square().mean(dim=0), rtol=1e-8, atol=1e-14)
        # The trace is basis-free: mean squared per-sample gradient norm.
        torch.testing.assert_close(layer.eigenvalues.sum(), per_sample[name].square().sum((1, 2)).mean())


def test_kfac_eigenbasis_diagonalises_the_factors(trained_mlp, digits64) -> None:
    curvature = fit_curvature(trained_mlp, loader(*digits64), curvature="kfac", damping=0.1)
    for name, (a, g) in _mlp_factors(trained_mlp, *digits64).items():
        layer = curvature.layers[name]
        rotated_a = layer.eigvecs_inputs.T @ a @ layer.eigvecs_inputs
        rotated_g = layer.eigvecs_grads.T @ g @ layer.eigvecs_grads
        for rotated in (rotated_a, rotated_g):
            off_diagonal = rotated - torch.diag(rotated.diagonal())
            assert off_diagonal.abs().max() < 1e-10 * rotated.abs().max()
        expected = torch.outer(rotated_g.diagonal(), rotated_a.diagonal()).clamp(min=0)
        torch.testing.assert_close(layer.eigenvalues, expected, rtol=1e-8, atol=1e-14)


def test_conv_factors_follow_the_kfc_expansion(trained_cnn, digits64) -> None:
    x, y = digits64
    conv = trained_cnn.conv2
    stored: dict[str, Tensor] = {}
    handle = conv.register_forward_hook(lambda m, args, out: stored.update(a=args[0].detach(), out=out))
    logits = trained_cnn(x)
    handle.remove()
    stored["out"].retain_grad()
    F.cross_entropy(logits, y, reduction="sum").backward()
    trained_cnn.zero_grad(set_to_none=True)
    patches = F.unfold(stored["a"], 3, padding=1).transpose(1, 2)  # (n, 16, 54)
    patches = torch.cat([patches, torch.ones(*patches.shape[:2], 1, dtype=patches.dtype)], 2).flatten(0, 1)
    grads = stored["out"].grad.flatten(2).transpose(1, 2).flatten(0, 1)  # (n * 16, 8)
    a = patches.T @ patches / len(patches)  # mean over samples and positions
    g = grads.T @ grads / len(x)  # summed over positions, mean over samples
    curvature = fit_curvature(trained_cnn, loader(*digits64), curvature="kfac", damping=0.1)
    expected = torch.outer(torch.linalg.eigvalsh(g), torch.linalg.eigvalsh(a)).clamp(min=0)
    torch.testing.assert_close(curvature.layers["conv2"].eigenvalues, expected, rtol=1e-7, atol=1e-12)


def test_ekfac_inverse_matches_its_dense_matrix(trained_cnn, digits64) -> None:
    curvature = fit_curvature(trained_cnn, loader(*digits64), curvature="ekfac", damping=0.02)
    torch.manual_seed(2)
    for name, layer in curvature.layers.items():
        vectors = torch.randn(2, *layer.eigenvalues.shape, dtype=torch.float64)
        basis = torch.kron(layer.eigvecs_grads, layer.eigvecs_inputs)
        dense = basis @ torch.diag(layer.eigenvalues.flatten() + 0.02) @ basis.T
        expected = torch.linalg.solve(dense, vectors.flatten(1).T).T.reshape(vectors.shape)
        others = {
            key: torch.zeros(1, *value.eigenvalues.shape, dtype=torch.float64)
            for key, value in curvature.layers.items()
        }
        solved = curvature.inverse_hvp({**{k: v.expand(2, -1, -1) for k, v in others.items()}, name: vectors})
        assert relative_error(solved[name], expected) < 1e-9


def test_exact_curvature_is_the_dense_ggn(digits64) -> None:
    x, y = digits64
    model = train(nn.Sequential(nn.Linear(64, 10)).double(), x, y, steps=50)
    curvature = fit_curvature(model, loader(x, y), curvature="exact", fisher="ggn", damping=0.1)
    # Reference order is (weight rows..., bias); the engine's layout appends the bias to each row.
    order = torch.arange(650).reshape(10, 65)
    permutation = torch.cat([order[:, :64].flatten(), order[:, 64]])
    reference = dense_ggn(model, x)
    torch.testing.assert_close(curvature.matrix[permutation][:, permutation], reference, rtol=1e-9, atol=1e-13)


def test_sampled_fisher_averages_to_the_ggn(digits64) -> None:
    x, y = digits64[0][:128], digits64[1][:128]
    model = train(nn.Sequential(nn.Linear(64, 10)).double(), x, y, steps=50)
    ggn = fit_curvature(model, loader(x, y), curvature="exact", fisher="ggn").matrix
    empirical = fit_curvature(model, loader(x, y), curvature="exact", fisher="empirical").matrix
    replicated = DataLoader(ConcatDataset([TensorDataset(x, y)] * 20), batch_size=512)
    sampled = fit_curvature(model, replicated, curvature="exact", fisher="sampled", seed=3).matrix
    # 20 label draws per sample: Monte-Carlo error ~ 0.44 / sqrt(20); the empirical Fisher is 0.59 away.
    assert relative_error(sampled, ggn) < 0.15 < relative_error(empirical, ggn)
    once = [
        fit_curvature(model, loader(x, y), curvature="exact", fisher="sampled", seed=seed).matrix for seed in (3, 3, 4)
    ]
    assert torch.equal(once[0], once[1]) and not torch.equal(once[0], once[2])


def test_default_damping_is_a_tenth_of_the_largest_eigenvalue(trained_mlp, digits64) -> None:
    data = loader(*digits64)
    exact = fit_curvature(trained_mlp, data, curvature="exact")
    assert exact.damping == pytest.approx(
        DEFAULT_DAMPING_FACTOR * float(torch.linalg.eigvalsh(exact.matrix).max()), rel=1e-4
    )
    ekfac = fit_curvature(trained_mlp, data, curvature="ekfac")
    largest = max(float(layer.eigenvalues.max()) for layer in ekfac.layers.values())
    assert ekfac.damping == pytest.approx(DEFAULT_DAMPING_FACTOR * largest, rel=1e-12)
    assert ekfac.with_damping(0.25).damping == 0.25


def test_explicit_damping_is_kept_and_with_damping_equals_a_refit(trained_mlp, digits64) -> None:
    data = loader(*digits64)
    curvature = fit_curvature(trained_mlp, data, curvature="ekfac", damping=0.3)
    assert curvature.damping == 0.3
    vectors = {
        name: torch.ones(1, *layer.eigenvalues.shape, dtype=torch.float64) for name, layer in curvature.layers.items()
    }
    refit = fit_curvature(trained_mlp, data, curvature="ekfac", damping=0.05).inverse_hvp(vectors)
    reused = curvature.with_damping(0.05).inverse_hvp(vectors)
    for name in vectors:
        torch.testing.assert_close(reused[name], refit[name])


def test_singular_curvature_gets_more_damping_and_a_warning(digits64) -> None:
    # Pixel 0 of every digit is blank, so the first layer's input factor A is singular.
    x, y = digits64
    assert torch.all(x[:, 0] == 0)
    model = train(mlp().double(), x, y, steps=20)
    with pytest.warns(UserWarning, match="zero damped eigenvalue at damping 0"):
        curvature = fit_curvature(model, loader(x, y), curvature="kfac", damping=0.0)
    assert curvature.damping == pytest.approx(DEFAULT_DAMPING_FACTOR * curvature.largest_eigenvalue)
    with pytest.warns(UserWarning, match="not positive definite at damping 0"):
        exact = fit_curvature(model, loader(x, y), curvature="exact", damping=0.0)
    assert exact.damping > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"damping": -1.0}, ValueError, "damping must be a finite float >= 0"),
        ({"damping": float("nan")}, ValueError, "damping must be a finite float >= 0"),
        ({"damping": "0.1"}, TypeError, "damping must be a float"),
        ({"curvature": "lissa"}, ValueError, "curvature must be one of"),
        ({"fisher": "true"}, ValueError, "fisher must be one of"),
        ({"curvature": "ekfac", "fisher": "ggn"}, ValueError, "fisher='ggn' needs curvature='exact'"),
    ],
)
def test_bad_options_fail_before_any_pass(kwargs, error, match) -> None:
    class Untouchable:
        def __iter__(self):
            raise AssertionError("the loader must not be iterated")

    with pytest.raises(error, match=match):
        fit_curvature(mlp(), Untouchable(), **kwargs)


def test_exact_refuses_too_many_parameters() -> None:
    model = nn.Sequential(nn.Linear(200, 100))
    assert 201 * 100 > MAX_EXACT_PARAMETERS
    with pytest.raises(ValueError, match=r"20100 x 20100.*use curvature='ekfac'"):
        fit_curvature(model, [], curvature="exact")
    curvature = fit_curvature(model, [(torch.randn(4, 200), torch.tensor([0, 1, 2, 3]))], curvature="ekfac")
    assert isinstance(curvature, KroneckerCurvature)


def test_inverse_hvp_wants_every_tracked_layer(trained_mlp, digits64) -> None:
    curvature = fit_curvature(trained_mlp, loader(*digits64), curvature="kfac", damping=0.1)
    with pytest.raises(ValueError, match="one entry per tracked layer"):
        curvature.inverse_hvp({"0": torch.zeros(1, 32, 65, dtype=torch.float64)})


def test_timings_and_progress(trained_mlp, digits64, capsys) -> None:
    timings = InfluenceTimings()
    fit_curvature(trained_mlp, loader(*digits64), curvature="ekfac", timings=timings, progress=True)
    assert timings.factors > 0 and timings.eigen > 0 and timings.correction > 0
    assert timings.total == pytest.approx(timings.factors + timings.eigen + timings.correction)
    assert "influence: factors" in capsys.readouterr().err
    fit_curvature(trained_mlp, loader(*digits64), curvature="kfac", progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kind", ["kfac", "exact"])
def test_non_finite_curvature_is_a_floating_point_error(digits64, kind) -> None:
    x, y = digits64[0].clone(), digits64[1]
    x[7, 20] = float("inf")
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        fit_curvature(mlp().double(), loader(x, y), curvature=kind, damping=0.1)
