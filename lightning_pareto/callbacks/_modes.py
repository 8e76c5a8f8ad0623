"""Save and restore the ``training`` flag of a model and all its submodules around a pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["training_mode"]


@contextmanager
def training_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put ``model`` in train (``True``) or eval (``False``) mode for the block, then give every submodule its own flag back.

    Submodules are restored one by one, so a model with a frozen part in eval mode (a batch-norm
    backbone, say) comes back exactly as it was, not all in one mode.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
        >>> _ = model[1].eval()
        >>> with training_mode(model, False):
        ...     model.training, model[1].training
        (False, False)
        >>> model.training, model[1].training
        (True, False)
    """
    flags = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag
