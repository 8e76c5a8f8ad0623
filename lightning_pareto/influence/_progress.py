"""Optional progress bars over the engine's data passes."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], *, desc: str, enabled: bool | None) -> Iterator[T]:
    """Wrap ``iterable`` in a ``tqdm`` bar when wanted and available.

    Args:
        iterable: The batches of one pass.
        desc: Label of the bar, for example ``"influence: factors"``.
        enabled: ``True`` shows the bar, ``False`` never does, ``None`` shows it only when stderr is a
            terminal. Without ``tqdm`` installed no bar is shown.

    Returns:
        An iterator over the same items.
    """
    show = sys.stderr.isatty() if enabled is None else enabled
    if show:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            show = False
    if not show:
        return iter(iterable)
    total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
    return iter(tqdm(iterable, desc=desc, total=total, leave=False))
