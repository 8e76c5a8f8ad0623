"""The processor a benchmark ran on, for its JSON: timings from different CPUs do not compare."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["processor"]


def processor() -> str:
    """The CPU's model name and its core count, e.g. ``"AMD EPYC 9R14, 2 CPU cores"``.

    ``platform.processor()`` says only ``"x86_64"`` on Linux; ``/proc/cpuinfo`` names the model (the
    Intel Xeons with AMX run ``matmul_precision="medium"`` products in bfloat16, the AMD EPYCs here do not).
    """
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} CPU cores"
