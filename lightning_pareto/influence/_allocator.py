"""Keep freed CPU memory in the process heap while the engine runs (Linux with glibc only).

The passes allocate and free the same large buffers batch after batch (captured rows, rotated
positions, per-sample gradient chunks). glibc serves blocks above its mmap threshold with fresh
``mmap`` pages and gives freed heap tops back to the system, so every batch pays page faults that
zero those pages again; on a virtual machine their cost is large and erratic (benchmarks/RESULTS.md,
"The allocator"). Inside ``retained_heap`` blocks up to glibc's largest mmap threshold come from the
heap and freed memory stays there; on the way out the trim threshold is put back and ``malloc_trim``
hands the freed memory back, so the process's resident memory afterwards is what it was without.
"""

from __future__ import annotations

import ctypes
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

__all__ = ["MMAP_THRESHOLD", "retained_heap"]

# mallopt's parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's upper bound for the mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX): blocks
# above it are mapped whatever the setting. Its dynamic rule moves the threshold towards this value
# as large blocks are freed, and sets the trim threshold to twice the mmap threshold; the exit restores that.
MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_WHILE_RETAINED = 2**31 - 1  # mallopt takes a C int

_lock = threading.Lock()
_depth = 0


@cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc with ``mallopt`` and ``malloc_trim``, else ``None``."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


@contextmanager
def retained_heap() -> Iterator[bool]:
    """Serve the body's allocations from a heap that keeps freed memory; re-entrant.

    Elsewhere than on glibc the body runs unchanged. Leaves glibc's mmap threshold fixed at
    ``MMAP_THRESHOLD`` (where its dynamic rule heads for a process that frees large blocks).

    Yields:
        Whether the allocator settings are in effect.
    """
    global _depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_WHILE_RETAINED)
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)
                libc.malloc_trim(0)
