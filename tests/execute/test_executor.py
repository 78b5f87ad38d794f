"""Executor conveniences (run_function, run_each_*, map) and the async twin, on a local cluster."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time

import pytest

from bndl_like import ExecutionContext, FuncTask, Job
from bndl_like.execute.executor import AsyncExecutionContext, default_chunksize

from . import helpers

_FAIL_ON_SEVEN = functools.partial(helpers.fail_on, 7)



def _size(path) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


# -- sync -------------------------------------------------------------------------------------------

def test_run_function_returns_the_result(ctx):
    assert ctx.run_function(helpers.add, 2, b=3) == 5
    assert ctx.run_function(helpers.pid_of) in {w.pid for w in ctx.workers}


def test_run_function_passes_keywords_named_like_the_services_parameters(ctx):
    assert ctx.run_function(helpers.scaled, 2, factor=3, fn="f") == (6, "f")


def test_run_function_spreads_over_the_workers(ctx):
    pids = {ctx.run_function(helpers.pid_of) for _ in range(6)}
    assert pids == {w.pid for w in ctx.workers}


def test_run_function_reraises_the_remote_exception(ctx):
    with pytest.raises(helpers.TaskError, match="it broke") as info:
        ctx.run_function(helpers.fail, "it broke")
    assert "in fail" in info.value.remote_traceback
    assert "helpers.py" in info.value.remote_traceback
    assert ctx.run_function(helpers.identity, "usable") == "usable"


def test_run_each_worker(ctx):
    pids = ctx.run_each_worker(helpers.pid_of)
    assert set(pids) == {w.name for w in ctx.workers}
    assert len(set(pids.values())) == 2
    assert {w.name: w.pid for w in ctx.workers} == pids


def test_run_each_worker_raises_the_remote_exception(ctx):
    with pytest.raises(helpers.TaskError, match="everywhere"):
        ctx.run_each_worker(helpers.fail, "everywhere")


def test_run_each_host(ctx):
    results = ctx.run_each_host(helpers.host_and_pid)
    assert list(results) == ["127.0.0.1"]
    hostname, pid = results["127.0.0.1"]
    assert pid in {w.pid for w in ctx.workers}


def test_map_over_many_items(ctx):
    n = 100_000
    assert ctx.map(helpers.square, range(n)) == [x * x for x in range(n)]
    job = ctx.jobs[-1]
    assert len(job) == 16 and job.state == "done"  # ceil(100_000 / (2 * 8)) per chunk


def test_map_with_an_explicit_chunksize_and_a_generator(ctx):
    assert ctx.map(helpers.square, (x for x in range(10)), chunksize=3) == [x * x for x in range(10)]
    assert len(ctx.jobs[-1]) == 4 and ctx.jobs[-1].counts["done"] == 4


def test_map_of_nothing(ctx):
    jobs = ctx.jobs.run_count
    assert ctx.map(helpers.square, []) == []
    assert ctx.jobs.run_count == jobs  # no job at all


def test_map_with_a_failing_item(ctx):
    with pytest.raises(helpers.TaskError, match="bad item 7") as info:
        ctx.map(_FAIL_ON_SEVEN, range(20), chunksize=5)
    assert "in fail_on" in info.value.remote_traceback
    assert ctx.jobs[-1].state == "failed"
    assert ctx.map(helpers.square, [3]) == [9]


def test_default_chunksize_rule():
    assert default_chunksize(100_000, 2) == 6250
    assert default_chunksize(3, 4) == 1
    assert default_chunksize(10**9, 1) == 10_000
    assert default_chunksize(0, 0) == 1


def test_user_errors_are_clear(ctx):
    for method in (ctx.run_function, ctx.run_each_worker, ctx.run_each_host):
        with pytest.raises(TypeError, match="needs a callable"):
            method(42)
    with pytest.raises(TypeError, match="needs a callable"):
        ctx.map("not callable", [1])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="chunksize"):
            ctx.map(helpers.square, [1], chunksize=bad)


def test_closed_context_refuses():
    ctx = ExecutionContext.local(workers=1)
    ctx.close()
    actx = ctx.ensure_async()
    for method in (ctx.run_function, ctx.run_each_worker, ctx.run_each_host):
        with pytest.raises(RuntimeError, match="closed"):
            method(helpers.pid_of)
    with pytest.raises(RuntimeError, match="closed"):
        ctx.map(helpers.square, [1])
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(actx.run_function(helpers.pid_of))


def test_sync_conveniences_inside_a_running_event_loop(ctx):
    async def cell():
        return ctx.map(helpers.square, range(5)), ctx.run_function(helpers.add, 1, 1)
    assert asyncio.run(cell()) == ([0, 1, 4, 9, 16], 2)


# -- async ------------------------------------------------------------------------------------------

def test_ensure_sync_and_async_identities(ctx):
    actx = ctx.ensure_async()
    assert isinstance(actx, AsyncExecutionContext)
    assert ctx.ensure_sync() is ctx
    assert actx.ensure_sync() is ctx
    assert actx.ensure_async() is actx
    assert ctx.ensure_async() is actx
    assert actx.worker_count == 2 and [w.name for w in actx.workers] == [w.name for w in ctx.workers]


def test_async_conveniences(ctx):
    actx = ctx.ensure_async()

    async def main():
        assert await actx.await_workers() == 2
        squares, pids, hosts, one = await asyncio.gather(
            actx.map(helpers.square, range(1000)),
            actx.run_each_worker(helpers.pid_of),
            actx.run_each_host(helpers.pid_of),
            actx.run_function(helpers.add, 40, 2))
        with pytest.raises(helpers.TaskError, match="async"):
            await actx.run_function(helpers.fail, "async")
        with pytest.raises(helpers.TaskError, match="bad item 7"):
            await actx.map(_FAIL_ON_SEVEN, range(20), chunksize=5)
        return squares, pids, hosts, one, await actx.map(helpers.square, [])

    squares, pids, hosts, one, empty = asyncio.run(asyncio.wait_for(main(), 30))
    assert squares == [x * x for x in range(1000)]
    assert pids == {w.name: w.pid for w in ctx.workers}
    assert list(hosts) == ["127.0.0.1"]
    assert one == 42 and empty == []


def test_async_for_over_execute(ctx):
    actx = ctx.ensure_async()

    async def main():
        job = Job(ctx, [FuncTask(ctx, i, helpers.add, (i, 1)) for i in range(50)])
        return [r async for r in actx.execute(job)]

    assert asyncio.run(asyncio.wait_for(main(), 30)) == list(range(1, 51))
    assert ctx.jobs[-1].state == "done"


def test_async_execute_raises_a_failing_task(ctx):
    actx = ctx.ensure_async()

    async def main():
        job = Job(ctx, [FuncTask(ctx, 0, helpers.fail, ("in a job",))])
        return [r async for r in actx.execute(job)]

    with pytest.raises(helpers.TaskError, match="in a job"):
        asyncio.run(asyncio.wait_for(main(), 30))
    assert ctx.jobs[-1].state == "failed"


def _ticking_job(ctx, path):
    return Job(ctx, [FuncTask(ctx, 0, helpers.identity, ("first",)),
                     FuncTask(ctx, 1, helpers.tick_forever, (str(path),))])


def test_breaking_out_of_async_for_cancels_the_job(ctx, tmp_path):
    actx = ctx.ensure_async()
    path = tmp_path / "ticks"

    async def main():
        job = _ticking_job(ctx, path)
        async with contextlib.aclosing(actx.execute(job)) as results:
            async for r in results:
                assert r == "first"
                break
        return job  # closed: cancelled on every worker already

    job = asyncio.run(asyncio.wait_for(main(), 30))
    assert job is ctx.jobs[-1] and ctx.jobs[-1].state == "cancelled"
    assert ctx.map(helpers.square, [2]) == [4]


def test_breaking_out_of_a_plain_async_for_cancels_the_job(ctx, tmp_path):
    """Without aclosing the event loop closes the generator when it is collected."""
    actx = ctx.ensure_async()
    path = tmp_path / "ticks"

    async def main():
        job = _ticking_job(ctx, path)
        async for r in actx.execute(job):
            assert r == "first"
            break
        deadline = time.monotonic() + 10
        while job.state != "cancelled" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return job

    job = asyncio.run(asyncio.wait_for(main(), 30))
    assert job is ctx.jobs[-1] and ctx.jobs[-1].state == "cancelled"


def test_cancelling_the_awaiting_task_cancels_the_job(ctx, tmp_path):
    actx = ctx.ensure_async()
    path = tmp_path / "ticks"

    async def consume(job):
        async for _ in actx.execute(job):
            pass

    async def main():
        job = Job(ctx, [FuncTask(ctx, 0, helpers.tick_forever, (str(path),))])
        task = asyncio.ensure_future(consume(job))
        deadline = time.monotonic() + 10
        while _size(path) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # until the task runs on a worker
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return job

    job = asyncio.run(asyncio.wait_for(main(), 30))
    assert job.state == "cancelled"
