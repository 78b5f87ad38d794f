"""Task functions for ``benchmarks/execute.py``.

They live in a module of their own so that every worker process (bndl_like's, dask's, a
``ProcessPoolExecutor``'s, Ray's) imports them by name instead of receiving them by value:
``execute.py`` puts this directory on ``PYTHONPATH`` before it starts any worker.
"""

from __future__ import annotations

import os
import time

import numpy as np


def noop(x=None):
    """Return the argument: the no-op task of W1, W2 and the first layers of W3."""
    return x


def add(*values):
    """Sum of the arguments: the dependent tasks of W3."""
    return sum(values)


def sleep_task(i, seconds=0.02):
    """Sleep ``seconds``, then return ``i``: the tasks of W5."""
    time.sleep(seconds)
    return i


def array_sum(arr):
    """``np.sum(arr)``: W4 for Ray, which needs a function of its own to wrap."""
    return np.sum(arr)


def getpid(_=None):
    """The pid of the worker process that runs the task."""
    return os.getpid()
