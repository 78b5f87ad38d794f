"""Task functions for the integration tests (importable by the workers)."""

from __future__ import annotations

import os
import time


def add(a, b):
    return a + b


def total(values):
    return sum(values)


def combine(parts, mapping):
    return sorted(parts) + [mapping["x"] + mapping["y"][0]]


def identity(x):
    return x


def pid_of(_=None):
    return os.getpid()


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


class TaskError(Exception):
    pass


def fail(message):
    raise TaskError(message)


def fail_on_first_worker(marker_dir, value):
    """Fails the first time it runs in a worker process, succeeds elsewhere."""
    path = os.path.join(marker_dir, "failed-once")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        raise TaskError("first attempt fails")
    return value


def tick_forever(path):
    """Append to a file in small steps until cancelled."""
    while True:
        with open(path, "a") as f:
            f.write(".")
        time.sleep(0.01)


def who_am_i(_=None):
    from bndl_like import current_worker, task_context
    context = task_context()
    return current_worker().name, context.task_id, context.attempt


def allocate(nbytes):
    """Keep ``nbytes`` of output on the worker (touched, so it is resident)."""
    import numpy as np
    return np.ones(nbytes // 8)


def square(x):
    return x * x


def fail_on(bad, x):
    """``x``, or TaskError when ``x == bad``."""
    if x == bad:
        raise TaskError(f"bad item {x}")
    return x


def host_and_pid(_=None):
    import socket
    return socket.gethostname(), os.getpid()


def scaled(x, *, factor=1, fn=None):
    """Keyword arguments named like the functions service's own parameters still arrive."""
    return (x * factor, fn)


class Patchable:
    """A scattered object whose ``patch`` adds to its value (and fails on a negative patch)."""

    def __init__(self, value):
        self.value = value

    def patch(self, delta):
        if delta < 0:
            raise TaskError(f"negative patch {delta}")
        self.value += delta


def value_of(obj, _=None):
    return obj.value


def array_total(arr, _=None):
    return float(arr.sum())


def scatter_puts(handle_id):
    """How many times this worker received the scattered object ``handle_id``."""
    from bndl_like.execute import handles
    return handles._service.put_count(handle_id)


def add_to(x, obj):
    return x + obj


def item_plus_total(x, arr):
    return x + float(arr.sum())


def secret_in_env(_=None):
    """Whether BNDL_LIKE_SECRET is in this worker's environment, and in that of a process it starts."""
    import subprocess
    import sys

    code = "import os; print('BNDL_LIKE_SECRET' in os.environ)"
    child = subprocess.check_output([sys.executable, "-c", code], text=True, timeout=30)
    return "BNDL_LIKE_SECRET" in os.environ, child.strip() == "True"
