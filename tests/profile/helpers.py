"""Task functions for the profiling tests (importable by the workers)."""

from __future__ import annotations

import time

import numpy as np

KEPT: list = []  # what hold_memory keeps alive on a worker


def some_fn(n: int = 1000) -> int:
    """A little CPU work in a function of its own."""
    return sum(i * i for i in range(n))


def numpy_work(n: int = 200) -> float:
    """Some numpy: a matrix product and a sum."""
    a = np.arange(n * n, dtype=float).reshape(n, n)
    return float(np.sum(a @ a))


def hold_memory(nbytes: int) -> int:
    """Allocate ``nbytes`` and keep them alive in a global of the worker."""
    KEPT.append(bytearray(nbytes))  # the line the memory profile points at
    return nbytes


def release_memory() -> int:
    """Drop what hold_memory kept."""
    KEPT.clear()
    return 0


def sleepy(seconds: float) -> float:
    """Sleep: time on the wall clock, hardly any on the CPU clock."""
    time.sleep(seconds)
    return seconds
