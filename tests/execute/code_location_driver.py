"""A driver script whose task functions live in ``__main__`` (so cloudpickle sends them by
value, as it does a notebook's): prints, as JSON, where the worker says they ran.

Run as ``python code_location_driver.py``; the cloudpickle first on ``PYTHONPATH`` is the
one the driver and its workers use.
"""

from __future__ import annotations

import json
import sys
import traceback

import cloudpickle

from bndl_like import ExecutionContext, FuncTask, Job


def fail(text):
    return int(text)  # FAIL_LINE


def spin(n):  # SPIN_LINE
    total = 0
    for i in range(n):
        total += i * i
    return total


def hold(n):
    # kept in a module the worker imported (this function's globals come by value, and go)
    sys.held_by_code_location_test = bytearray(n)  # HOLD_LINE
    return n


def worker_cloudpickle():
    return cloudpickle.__version__


def main() -> None:
    found = {"driver_cloudpickle": cloudpickle.__version__}
    with ExecutionContext.local(workers=1) as ctx:
        assert ctx.await_workers() == 1
        found["worker_cloudpickle"] = ctx.run_function(worker_cloudpickle)
        try:
            list(ctx.execute(Job(ctx, [FuncTask(ctx, "bad", fail, ("x",))]), progress=False))
        except ValueError as exc:
            frames = traceback.extract_tb(exc.__traceback__)
            found["traceback"] = [(f.filename, f.lineno, f.name, f.line) for f in frames]
            found["remote_traceback"] = exc.remote_traceback
        with ctx.cpu_profiling:
            ctx.run_function(spin, 20_000)
        found["cpu"] = [(s.filename, s.lineno, s.name) for s in ctx.cpu_profiling.get_stats()
                        if s.name == "spin"]
        ctx.memory_profiling.start()
        try:
            ctx.run_function(hold, 1 << 20)
            stats = ctx.memory_profiling.take_snapshot().statistics("lineno")
        finally:
            ctx.memory_profiling.stop()
        found["memory"] = [(s.filename, s.lineno, s.source) for s in stats if s.size >= 1 << 20]
    json.dump(found, sys.stdout)


if __name__ == "__main__":
    main()
