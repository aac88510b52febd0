"""Peak resident memory of this process, for arms measured in their own subprocess.

``ru_maxrss`` is the wrong number there: Linux carries the high-water mark of the parent's address space across the
child's exec (the child starts as a copy of the parent), so every arm would report at least the parent's peak.
``VmHWM`` in /proc/self/status belongs to the address space the exec created, so it starts from nothing.
"""
from __future__ import annotations

import os
from pathlib import Path


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line: peak memory needs Linux")


def rss_mib() -> float:
    """Resident memory now, to subtract what a process held before the part being measured."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib(device: str) -> float:
    """Peak memory of this process on ``device``: the resident set on CPU, allocated GPU memory on CUDA."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mib()


def clock(device: str) -> float:
    """Wall time once ``device`` has finished its queued work (CUDA runs asynchronously)."""
    import time

    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()
