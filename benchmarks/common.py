"""Pieces the benchmark scripts share: the machine a figure was measured on, and a plural
callback that stamps the end of each round."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

import torch

import plural


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPUs, memory, library versions and the 1-minute load average now, plus ``extra``."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    page_bytes = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "memory_gb": pages * page_bytes / 1024**3 if pages and page_bytes else None,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "plural": plural.__version__,
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **extra,
    }


class RoundClock:
    """A plural callback that notes when each round ended."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        self.ends.append(time.perf_counter())
        return False
