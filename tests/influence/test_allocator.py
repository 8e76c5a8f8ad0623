"""``retained_heap``: large blocks come from the heap inside, freed memory stays there, and leaves on exit.

Each check runs in a fresh interpreter, where glibc's mmap threshold is still its start value (an
earlier influence call in the test process fixes it at ``MMAP_THRESHOLD``).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator only"
)

# mallinfo2's fields are size_t: arena (heap bytes), ordblks, smblks, hblks, hblkhd (mmapped bytes),
# usmblks, fsmblks, uordblks (in use), fordblks (free in the heap), keepcost.
_PROBE = """
import contextlib, ctypes, json, sys
from lightning_pareto.influence._allocator import retained_heap

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096

SIZE = 24 << 20
out = {}
with retained_heap() if sys.argv[1] == "retained" else contextlib.nullcontext(False) as active:
    out["active"] = active
    before = libc.mallinfo2().hblkhd
    block = ctypes.create_string_buffer(SIZE)  # zero-filled: its pages are resident
    out["mapped"] = libc.mallinfo2().hblkhd - before
    with retained_heap():  # a nested exit keeps the heap
        pass
    del block
    out["heap_free"] = libc.mallinfo2().fordblks
    out["resident_inside"] = resident()
out["resident_after"] = resident()
print(json.dumps(out))
"""


def _probe(mode: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_large_blocks_come_from_a_heap_that_keeps_them_until_exit():
    size = 24 << 20
    plain = _probe("plain")
    assert plain["mapped"] >= size  # the premise: in a fresh process glibc maps such a block
    retained = _probe("retained")
    assert retained["active"]
    assert retained["mapped"] < size  # inside: served from the heap
    assert retained["heap_free"] >= size  # freed, kept in the heap (also past the nested exit)
    assert retained["resident_inside"] - retained["resident_after"] >= size // 2  # handed back on exit
