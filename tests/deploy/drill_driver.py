"""A driver for the kill-the-driver drill: fills a worker's memory and runs forever."""

from __future__ import annotations

import sys

from bndl_like import ExecutionContext, FuncTask, Job

from ..execute import helpers

if __name__ == "__main__":
    seed, ticks = sys.argv[1], sys.argv[2]
    with ExecutionContext(seeds=[seed], heartbeat_timeout=2.0, heartbeat_interval=0.25) as ctx:
        ctx.await_workers(worker_count=1, stable_timeout=20)
        big = [FuncTask(ctx, ("big", i), helpers.allocate, (64 << 20,)) for i in range(3)]
        forever = FuncTask(ctx, "forever", helpers.tick_forever, (ticks,), dependencies=big)
        for _ in ctx.execute(Job(ctx, [*big, forever])):
            print("RESULT", flush=True)
