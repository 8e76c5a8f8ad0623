"""Products with an input eigenbasis ``U_A``, padded to widths BLAS runs fast on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_pareto.influence.kfac._gram import aligned

__all__ = ["InputRotation", "rotated_features"]


@dataclass(frozen=True)
class InputRotation:
    """``U_A`` arranged for fast products with layer inputs and per-sample gradients.

    BLAS runs markedly slower on odd widths (the rotation of the MNIST CNN's second conv, 289 wide;
    see ``benchmarks/RESULTS.md``, influence engine). So the
    columns are zero-padded to a multiple of the BLAS alignment (``_gram.aligned``) (the products' padded columns are zero),
    and with a bias slot the inputs' constant last column is folded in as an added row.

    Attributes:
        padded: ``U_A`` with zero columns appended, shape ``(in + has_bias, aligned(k))``.
        ones_last: Whether layer inputs end in the bias slot's constant one.
    """

    padded: Tensor
    ones_last: bool

    @classmethod
    def of(cls, vectors: Tensor, *, ones_last: bool) -> InputRotation:
        """Pad ``vectors`` ``(in + has_bias, k)``; ``ones_last`` when the layer has a bias."""
        padded = vectors.new_zeros(vectors.shape[0], aligned(vectors.shape[1]))
        padded[:, : vectors.shape[1]] = vectors
        return cls(padded, ones_last)

    def features(self, features: Tensor) -> Tensor:
        """``inputs`` of rows without the bias slot's one, ``(m, in)`` -> ``(m, aligned(k))``."""
        return rotated_features(features, self.padded, ones_last=self.ones_last)

    def inputs(self, rows: Tensor) -> Tensor:
        """``rows @ padded`` for layer inputs ``(..., in + has_bias)`` -> ``(..., aligned(k))``."""
        if not self.ones_last:
            return rows @ self.padded
        flat = rows.reshape(-1, rows.shape[-1])
        return self.features(flat[:, :-1]).view(*rows.shape[:-1], -1)


def rotated_features(features: Tensor, rotation: Tensor, *, ones_last: bool) -> Tensor:
    """``[features, 1] @ rotation`` without forming the ones column (``features @ rotation`` without ``ones_last``).

    Args:
        features: ``(m, in)``.
        rotation: ``(in + ones_last, k)``.

    Returns:
        ``(m, k)``.
    """
    if not ones_last:
        return features @ rotation
    return torch.addmm(rotation[-1], features, rotation[:-1])
