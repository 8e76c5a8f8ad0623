"""``matmul_precision``: reduced-precision products agree with float64 scores, and the caller's setting survives."""

from __future__ import annotations

import copy
import statistics

import pytest
import torch
from _influence_reference import cnn, digits, loader, relative_error, spearman, train
from torch import Tensor, nn

from lightning_pareto.influence import category_influence
from lightning_pareto.influence._precision import float32_matmul_precision


@pytest.fixture(scope="module")
def float64_cnn() -> tuple[nn.Module, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The digits CNN trained in float64, with 600 training and 200 validation digits."""
    x, y = digits(torch.float64)
    model = train(cnn().double(), x[:800], y[:800], steps=60)
    return model, (x[:600], y[:600]), (x[600:800], y[600:800])


@pytest.fixture
def restore_precision():
    before = torch.get_float32_matmul_precision()
    yield before
    torch.set_float32_matmul_precision(before)


def _scores(model: nn.Module, train_set, val_set, dtype: torch.dtype, precision: str | None) -> Tensor:
    model = copy.deepcopy(model).to(dtype)
    train_set, val_set = [(x.to(dtype), y) for x, y in (train_set, val_set)]
    return category_influence(model, loader(*train_set), loader(*val_set), 10, matmul_precision=precision)


def test_medium_precision_agrees_with_float64_scores(float64_cnn, restore_precision) -> None:
    model, train_set, val_set = float64_cnn
    reference = _scores(model, train_set, val_set, torch.float64, None)  # float64 products ignore the setting
    highest = _scores(model, train_set, val_set, torch.float32, "highest")
    medium = _scores(model, train_set, val_set, torch.float32, "medium")
    assert relative_error(highest, reference) < 1e-4
    assert relative_error(medium, reference) < 3e-2
    assert statistics.median(spearman(medium[:, c], reference[:, c]) for c in range(10)) > 0.99
    assert torch.get_float32_matmul_precision() == restore_precision
    if _medium_products_are_reduced():
        # Where this machine's "medium" products are bfloat16, the engine's passes do use them.
        assert relative_error(medium, reference) > 10 * relative_error(highest, reference)
    else:
        # oneDNN keeps float32 at "medium" here (e.g. AVX512-BF16 without AMX): the setting changes nothing.
        assert relative_error(medium, highest) < 1e-4


def _medium_products_are_reduced() -> bool:
    """Whether one float32 product at ``"medium"`` carries bfloat16 rounding on this machine.

    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is no guide: it is true on an AMD EPYC with
    AVX512-BF16 where oneDNN still multiplies float32 matrices in float32.
    """
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randn(512, 512, generator=generator), torch.randn(512, 512, generator=generator)
    with float32_matmul_precision("highest"):
        exact = left @ right
    with float32_matmul_precision("medium"):
        reduced = left @ right
    return relative_error(reduced, exact) > 1e-4


def test_the_callers_setting_is_restored_after_an_error(float64_cnn, restore_precision) -> None:
    torch.set_float32_matmul_precision("high")
    model, _, val_set = float64_cnn

    class Failing:
        def __iter__(self):
            assert torch.get_float32_matmul_precision() == "medium"  # read inside the call
            raise RuntimeError("the loader failed")

    with pytest.raises(RuntimeError, match="the loader failed"):
        category_influence(model, Failing(), loader(*val_set), 10, matmul_precision="medium")
    assert torch.get_float32_matmul_precision() == "high"
    with pytest.raises(RuntimeError, match="boom"), float32_matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
        raise RuntimeError("boom")
    assert torch.get_float32_matmul_precision() == "high"


def test_an_unknown_precision_fails_before_any_pass(float64_cnn) -> None:
    model, train_set, val_set = float64_cnn

    class Unread:
        def __iter__(self):
            raise AssertionError("a pass ran before the option was checked")

    with pytest.raises(ValueError, match="matmul_precision must be None or one of"):
        category_influence(model, Unread(), Unread(), 10, matmul_precision="low")
