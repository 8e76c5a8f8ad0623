"""Put a model in train or eval mode for a while, then give every submodule its own flag back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from torch import nn

__all__ = ["eval_mode", "training_mode"]


@contextmanager
def training_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """``model.train(training)`` inside the block; on exit each submodule gets back its own ``training`` flag.

    Restoring submodule by submodule (not one ``model.train(flag)``) keeps a model whose parts were in
    different modes (a frozen batch-norm backbone in eval mode, say) exactly as it was.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
        >>> _ = model[1].eval()
        >>> with training_mode(model, True):
        ...     model.training, model[1].training
        (True, True)
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


def eval_mode(model: nn.Module) -> AbstractContextManager[nn.Module]:
    """:func:`training_mode` with ``training=False``: eval mode inside the block, every flag restored after.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
        >>> with eval_mode(net):
        ...     net[1].training
        False
        >>> net[1].training
        True
    """
    return training_mode(model, False)
