"""Batched passes over the unlabelled pool: predictive probabilities (plain or MC dropout) and raw inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from lightning_pareto.influence.batches import unpack_batch

# The dropout layers MC dropout switches on (nn.Dropout, Dropout1d/2d/3d, AlphaDropout, ...).
_DROPOUT_TYPES = (nn.modules.dropout._DropoutNd,)


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The model's dropout layers with a positive drop probability."""
    return [module for module in model.modules() if isinstance(module, _DROPOUT_TYPES) and module.p > 0]


@contextlib.contextmanager
def scoring_mode(model: nn.Module, *, mc_dropout: bool = False, seed: int = 0) -> Iterator[None]:
    """Eval mode (dropout layers in train mode if ``mc_dropout``) and a forked, seeded RNG; modes restored after."""
    modes = {module: module.training for module in model.modules()}
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    model.eval()
    if mc_dropout:
        for layer in dropout_layers(model):
            layer.train()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        for module, training in modes.items():
            module.train(training)


def pool_inputs(loader: Iterable) -> Tensor:
    """The pool's inputs flattened to ``(|U|, features)`` float32 on the CPU, in loader order."""
    parts = [unpack_batch(batch, labels=False)[0] for batch in loader]
    if not parts:
        raise ValueError("the pool loader yielded no batches")
    return torch.cat([x.reshape(len(x), -1).float().cpu() for x in parts])


def pool_probabilities(
    model: nn.Module,
    loader: Iterable,
    *,
    samples: int | None = None,
    input_dropout: float = 0.0,
    seed: int = 0,
) -> Tensor:
    """Softmax probabilities of every pool point, in loader order.

    Args:
        model: Classifier returning logits ``(b, K)``.
        loader: Pool batches ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, index)``.
        samples: ``None``: one deterministic pass in eval mode, result ``(|U|, K)``. An int ``T``:
            ``T`` stochastic passes with dropout on (MC dropout), result ``(T, |U|, K)``.
        input_dropout: With ``samples``: dropout probability applied to the inputs of every pass as
            well (MC dropout for models without dropout layers, e.g. softmax regression).
        seed: Seeds the dropout masks (the global RNG is left untouched).

    Returns:
        Float64 CPU tensor of probabilities.
    """
    device = next(model.parameters()).device
    parts = []
    with scoring_mode(model, mc_dropout=samples is not None, seed=seed), torch.no_grad():
        for batch in loader:
            x = unpack_batch(batch, labels=False)[0].to(device)
            if samples is None:
                parts.append(model(x).softmax(-1).double().cpu())
            else:
                passes = [model(nn.functional.dropout(x, input_dropout)) for _ in range(samples)]
                parts.append(torch.stack([logits.softmax(-1).double().cpu() for logits in passes]))
    if not parts:
        raise ValueError("the pool loader yielded no batches")
    return torch.cat(parts, dim=0 if samples is None else 1)
