"""Float32 matmul precision of the engine's passes, set for one call and restored after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch

__all__ = ["MATMUL_PRECISIONS", "MatmulPrecision", "check_matmul_precision", "float32_matmul_precision"]

# The values of torch.set_float32_matmul_precision: "medium" lets float32 products use bfloat16
# internally (oneDNN with AMX on CPU, not an AMD EPYC's AVX512-BF16; on CUDA, TF32 or bfloat16),
# "high" TF32 on CUDA.
MatmulPrecision = Literal["highest", "high", "medium"]
MATMUL_PRECISIONS: tuple[str, ...] = get_args(MatmulPrecision)


def check_matmul_precision(precision: str | None) -> None:
    """Raise ``ValueError`` unless ``precision`` is ``None`` or one of ``MATMUL_PRECISIONS``."""
    if precision is not None and precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be None or one of {MATMUL_PRECISIONS}, got {precision!r}")


@contextmanager
def float32_matmul_precision(precision: str | None) -> Iterator[None]:
    """Run the body under ``torch.set_float32_matmul_precision(precision)``; ``None`` leaves the caller's.

    The previous setting is restored on exit, also on exceptions, so a training run around an
    intervention keeps its own precision.

    Example:
        >>> import torch
        >>> before = torch.get_float32_matmul_precision()
        >>> with float32_matmul_precision("medium"):
        ...     torch.get_float32_matmul_precision()
        'medium'
        >>> torch.get_float32_matmul_precision() == before
        True
    """
    check_matmul_precision(precision)
    previous = torch.get_float32_matmul_precision()
    if precision is None or precision == previous:
        yield
        return
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
