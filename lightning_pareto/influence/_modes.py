"""Save and restore the training flags of a model's submodules around the engine's passes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside; each one's own ``training`` flag restored on exit, also on exceptions.

    Each flag is restored as it was, not by one ``model.train(mode)`` (a model may hold a frozen,
    eval-mode submodule inside a training one).
    """
    flags = {module: module.training for module in model.modules()}
    try:
        model.eval()
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag
