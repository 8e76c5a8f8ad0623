"""Switch a model to eval mode for a while and put every submodule's own mode back afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; on exit each submodule gets back its own ``training`` flag.

    Restoring per submodule (not one ``model.train(flag)``) keeps a model whose parts were in
    different modes (e.g. a frozen, eval-mode backbone) exactly as it was.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
        >>> net[0].eval()  # doctest: +ELLIPSIS
        Linear(...)
        >>> with eval_mode(net):
        ...     net[1].training
        False
        >>> net.training, net[0].training, net[1].training
        (True, False, True)
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training
