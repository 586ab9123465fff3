"""Resident-memory trace of `segvol predict` at stage boundaries (set ``SEGVOL_MEMORY_LOG=1``).

``tracemalloc`` does not see torch or numpy allocations made in C, so the trace reads the
kernel's own counters from ``/proc/self/status``: VmRSS (resident now) and VmHWM (peak so far,
what `benchmarks/bench_infer.py` reports as ru_maxrss). Off by default: one file read per stage.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "SEGVOL_MEMORY_LOG"


def resident_gb() -> dict[str, float]:
    """``{"VmRSS": GB, "VmHWM": GB}`` of this process (empty where /proc is missing)."""
    values = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024 / 1e9
    except OSError:
        pass
    return values


def trace(stage: str) -> None:
    """Log resident memory after ``stage`` when SEGVOL_MEMORY_LOG is set."""
    if not os.environ.get(ENVIRONMENT_VARIABLE):
        return
    values = resident_gb()
    if values:
        log.info("memory after %s: resident %.2f GB, peak %.2f GB", stage, values["VmRSS"], values["VmHWM"])
