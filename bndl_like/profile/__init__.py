"""Cluster-wide CPU (yappi) and memory (tracemalloc) profiling, printed on the driver.

Reach them as ``ctx.cpu_profiling`` and ``ctx.memory_profiling``; workers serve them
through their ``profiling`` service (:class:`ProfilingService`). Names load on first
use, so a worker that imports the service loads neither the driver side nor yappi.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cpu import CpuProfiling, FunctionStats, merge_stats
    from .memory import Frame, MemoryProfiling, MemorySnapshot, MemoryStat
    from .service import ProfilingService

_WHERE = {"CpuProfiling": "cpu", "FunctionStats": "cpu", "merge_stats": "cpu",
          "MemoryProfiling": "memory", "MemorySnapshot": "memory", "MemoryStat": "memory",
          "Frame": "memory", "ProfilingService": "service"}

__all__ = ["CpuProfiling", "FunctionStats", "merge_stats", "MemoryProfiling", "MemorySnapshot",
           "MemoryStat", "Frame", "ProfilingService"]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
