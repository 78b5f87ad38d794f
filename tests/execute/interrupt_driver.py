"""A driver script for the Ctrl-C test: runs a job that never ends until interrupted."""

from __future__ import annotations

import sys
import time

from bndl_like import ExecutionContext, FuncTask, Job

from . import helpers

if __name__ == "__main__":
    ticks = sys.argv[1]
    with ExecutionContext.local(workers=1) as ctx:
        ctx.await_workers()
        job = Job(ctx, [FuncTask(ctx, 0, helpers.tick_forever, (ticks,))])
        print("RUNNING", flush=True)
        try:
            for _ in ctx.execute(job):
                pass
        except KeyboardInterrupt:
            print("INTERRUPTED", job.state, flush=True)
        started = time.monotonic()
        assert list(ctx.execute(Job(ctx, [FuncTask(ctx, 0, helpers.identity, ("usable",))]))) == ["usable"]
        print("USABLE", round(time.monotonic() - started, 3), flush=True)
