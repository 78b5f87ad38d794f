"""Task functions that produce what the driver or a worker cannot take (imported by workers)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import sys


def only_on_worker(directory: str, module: str, value=1):
    """An object of a class from a module that only this worker can import."""
    path = os.path.join(directory, module + ".py")
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            f.write("class OnlyHere:\n    def __init__(self, v):\n        self.v = v\n")
        os.replace(path + ".tmp", path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    return importlib.import_module(module).OnlyHere(value)


def _refuse(where: str):
    raise ValueError(f"this object refuses to be unpickled ({where})")


class RefusesUnpickling:
    """Pickles fine; unpickling it raises."""

    def __reduce__(self):
        return _refuse, ("by design",)


def refuses_unpickling(_=None):
    return RefusesUnpickling()


def nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def big_bytes(nbytes: int) -> bytes:
    """``nbytes`` zero bytes: calloc'ed, so making them does not hold the GIL for long."""
    return bytes(nbytes)


def zeros_digest(nbytes: int) -> str:
    """The SHA-1 of ``nbytes`` zero bytes, computed in steps."""
    digest, step = hashlib.sha1(), bytes(1 << 24)
    while nbytes:
        n = min(nbytes, len(step))
        digest.update(memoryview(step)[:n])
        nbytes -= n
    return digest.hexdigest()


def megabytes(n: int, _=None):
    import numpy as np
    return np.full(n * (1 << 20) // 8, 1.0)


def array_sum(*arrays) -> float:
    return float(sum(a.sum() for a in arrays))


def identity(x):
    return x


def exit_worker(code: int):
    """A poison pill: ends the worker process at once."""
    os._exit(code)


def kill_worker(_=None):
    """A poison pill: the worker process SIGKILLs itself (as the OOM killer would)."""
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


@dataclasses.dataclass(frozen=True, order=True)
class Key:
    """A task id that is not a builtin: messages naming it take the payload path."""
    n: int


def _wait_for(path: str, timeout: float) -> bool:
    import time
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def bystander(directory: str):
    """First run: marks that it runs and blocks (it dies with its worker); later runs return."""
    marker = os.path.join(directory, "bystander")
    if os.path.exists(marker):
        return "ran"
    open(marker, "w").close()
    _wait_for(os.path.join(directory, "never"), 60)
    return "timed out"


def pill_beside_bystander(directory: str, code: int = 3):
    """Ends its worker once the bystander runs (at once on later runs)."""
    _wait_for(os.path.join(directory, "bystander"), 60)
    os._exit(code)
