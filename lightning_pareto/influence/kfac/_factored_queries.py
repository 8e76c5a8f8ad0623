"""Class queries of wide Linear layers kept as validation rows, for truncated Kronecker bases.

For a Linear layer without positions the class-``c`` query is a sum of rank-one gradients,
``V_c = (1/n_c) sum_{v in c} g_v a_v^T``. With a truncated input basis (see ``kfac.eigen``) the
preconditioned query splits (``KroneckerFactors.split_inverse``) as

    (block + lambda I)^{-1} V_c = W V_c + M_c U_A^T,      W = U_G diag(1 / (residual + lambda)) U_G^T,

with ``M_c`` of shape ``(out, k)``, so a training sample's score is

    I[i, c] = (1/n_c) sum_{v in c} (g_v^T W g_i) (a_v^T a_i) + g_i^T M_c U_A^T a_i:

``n_V (in + out) + k (in + K out)`` multiply-adds per training sample with ``n_V`` validation rows,
against ``K out in`` for the dense ``(K, out, in)`` preconditioned query (the MNIST CNN's 3,137-input
layer: 4.7M against 8.0M), and the preconditioning works on ``(K, out, k)`` arrays instead of
rotating ``K x out x in`` ones. Both forms are exact; ``FactoredQuery.cost`` says which is cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_pareto.influence.kfac._rotation import rotated_features
from lightning_pareto.influence.kfac.curvature import KroneckerFactors
from lightning_pareto.influence.kfac.factors import plain_linear


def group_members(groups: Tensor) -> list[tuple[int, Tensor]]:
    """``(group, indices of its rows)`` for every group present in ``groups``."""
    return [(group, (groups == group).nonzero().squeeze(1)) for group in groups.unique().tolist()]


def keeps_rows(module: nn.Module, inputs: list[Tensor], wide_above: int) -> bool:
    """Whether a layer's validation rows may be kept: a Linear called once on ``(batch, in > wide_above)`` inputs."""
    return plain_linear(module, inputs) and module.in_features > wide_above


@dataclass(frozen=True)
class ValidationRows:
    """One layer's validation inputs and output gradients with each row's group (class).

    Attributes:
        features: Layer inputs without the bias slot, ``(n_V, in)``.
        grads: Loss gradients with respect to the outputs, ``(n_V, out)``.
        groups: int64 group of each row, ``(n_V,)``.
        has_bias: Whether the layer has a bias (a constant one after ``features``).
    """

    features: Tensor
    grads: Tensor
    groups: Tensor
    has_bias: bool

    def group_sums(self, num_groups: int) -> Tensor:
        """``sum_{v in c} g_v a_v^T`` of every group, shape ``(num_groups, out, in + has_bias)``."""
        return _group_outer_sums(self.grads, self.features, self.groups, num_groups, self.has_bias)

    def projected(self, counts: Tensor, rotation: Tensor) -> Tensor:
        """``V_c U_A`` of every group ``c`` (``V_c`` the group's mean gradient), ``(K, out, k)``, from ``rotation = U_A``."""
        rotated = rotated_features(self.features, rotation, ones_last=self.has_bias)
        sums = _group_outer_sums(self.grads, rotated, self.groups, counts.shape[0], ones_last=False)
        return sums * mean_scale(counts, sums)[:, None, None]


def mean_scale(counts: Tensor, like: Tensor) -> Tensor:
    """``1 / n_c`` of every group (1 for an empty one, whose sums are zero), in the dtype and device of ``like``."""
    return (1.0 / counts.clamp(min=1)).to(like)


def _group_outer_sums(left: Tensor, right: Tensor, groups: Tensor, num_groups: int, ones_last: bool) -> Tensor:
    """``sum_{v in c} left_v [right_v, 1]^T`` (``right_v`` alone without ``ones_last``), ``(num_groups, l, r + ones_last)``."""
    sums = left.new_zeros(num_groups, left.shape[1], right.shape[1] + int(ones_last))
    for group, members in group_members(groups):
        rows = left.index_select(0, members)
        sums[group, :, : right.shape[1]] = rows.T @ right.index_select(0, members)
        if ones_last:
            sums[group, :, -1] = rows.sum(dim=0)
    return sums


def concatenated(parts: list[tuple[Tensor, Tensor, Tensor]], has_bias: bool) -> ValidationRows:
    """``ValidationRows`` of batches ``(features, grads, groups)``."""
    features, grads, groups = (torch.cat(items) for items in zip(*parts))
    return ValidationRows(features, grads, groups, has_bias)


@dataclass(frozen=True)
class FactoredQuery:
    """A layer's preconditioned class queries ``W V_c + M_c U_A^T`` with ``V_c`` kept as validation rows.

    Attributes:
        features: Validation inputs without the bias slot, ``(n_V, in)``.
        weighted_grads: ``G_V W`` (``W`` symmetric), ``(n_V, out)``.
        groups: int64 group of each validation row, ``(n_V,)``.
        scale: ``1 / n_c`` of every group, ``(K,)`` (see ``mean_scale``).
        has_bias: Whether the layer's inputs end in a constant one.
        rotation: ``U_A``, ``(in + has_bias, k)``.
        kept: ``M``, ``(K, out, k)``.
    """

    features: Tensor
    weighted_grads: Tensor
    groups: Tensor
    scale: Tensor
    has_bias: bool
    rotation: Tensor
    kept: Tensor

    @classmethod
    def build(cls, rows: ValidationRows, counts: Tensor, layer: KroneckerFactors, damping: float) -> FactoredQuery:
        """Precondition ``rows``' group means with a truncated ``layer`` basis at ``damping``."""
        dtype = rows.features.dtype
        rotation = layer.eigvecs_inputs.to(dtype)
        weights, kept = layer.split_inverse(rows.projected(counts, rotation), damping)
        scale = mean_scale(counts, rows.grads)
        return cls(rows.features, rows.grads @ weights, rows.groups, scale, rows.has_bias, rotation, kept)

    @staticmethod
    def cost(rows: ValidationRows, kept: int, num_groups: int) -> tuple[int, int]:
        """Multiply-adds per training sample: ``(factored, dense)``."""
        count, inputs = rows.features.shape
        outputs = rows.grads.shape[1]
        factored = count * (inputs + outputs) + kept * (inputs + num_groups * outputs)
        return factored, num_groups * outputs * (inputs + int(rows.has_bias))

    def scores(self, features: Tensor, grads: Tensor) -> Tensor:
        """``I[i, c]`` of a batch: inputs ``(b, in)`` without the bias slot, output gradients ``(b, out)`` -> ``(b, K)``."""
        similarity = features @ self.features.T  # a_i^T a_v (the bias slots' product is the 1 added below)
        if self.has_bias:
            similarity += 1.0
        per_row = (grads @ self.weighted_grads.T) * similarity
        low_rank = (
            per_row.new_zeros(per_row.shape[0], self.scale.shape[0]).index_add_(1, self.groups, per_row) * self.scale
        )
        rotated = rotated_features(features, self.rotation, ones_last=self.has_bias)
        num_groups, outputs, kept = self.kept.shape
        projected = (grads @ self.kept.transpose(0, 1).reshape(outputs, num_groups * kept)).view(-1, num_groups, kept)
        return low_rank + torch.bmm(projected, rotated[:, :, None]).squeeze(2)

    def dense(self) -> Tensor:
        """The preconditioned queries as a dense ``(K, out, in + has_bias)`` tensor (``W V_c + M_c U_A^T``)."""
        sums = _group_outer_sums(self.weighted_grads, self.features, self.groups, self.scale.shape[0], self.has_bias)
        return sums * self.scale[:, None, None] + self.kept @ self.rotation.T
