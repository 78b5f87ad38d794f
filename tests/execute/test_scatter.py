"""ctx.scatter: objects shipped once per worker and referred to by handles, on a local cluster."""

from __future__ import annotations

import os
import pickle
import signal
import time

import numpy as np
import pytest

from bndl_like import ExecutionContext, FuncTask, Job, ScatterError, ScatterHandle

from . import helpers


def test_a_handle_is_small_and_picklable(ctx):
    handle = ctx.scatter(3)
    assert isinstance(handle, ScatterHandle) and handle.version == 1
    assert len(pickle.dumps(handle)) < 200
    assert pickle.loads(pickle.dumps(handle)) == handle  # on the driver it stays a handle
    ctx.release(handle)


def test_a_large_array_is_shipped_once_per_worker(ctx):
    arr = np.ones(100 * 2**20 // 8)  # 100 MiB
    expected = float(arr.sum())
    handle = ctx.scatter(arr)
    try:
        tasks = [FuncTask(ctx, i, helpers.array_total, (handle, i)) for i in range(50)]
        assert list(ctx.execute(Job(ctx, tasks))) == [expected] * 50
        assert {t.executed_on_last() for t in tasks} == {w.name for w in ctx.workers}
        assert ctx.run_function(helpers.array_total, handle) == expected
        mapped = ctx.map(helpers.item_plus_total, range(10), handle, chunksize=1)
        assert mapped == [i + expected for i in range(10)]
        puts = ctx.run_each_worker(helpers.scatter_puts, handle.id)
        assert puts == {w.name: 1 for w in ctx.workers}
    finally:
        ctx.release(handle)


def test_handles_nested_in_arguments(ctx):
    handle = ctx.scatter(5)
    try:
        task = FuncTask(ctx, "t", helpers.combine, ([handle, 1], {"x": handle, "y": (handle,)}))
        assert list(ctx.execute(Job(ctx, [task]))) == [[1, 5, 10]]
        assert ctx.run_each_worker(helpers.add, handle, b=handle) == {w.name: 10 for w in ctx.workers}
        assert ctx.map(helpers.add_to, [1, 2, 3], handle) == [6, 7, 8]
    finally:
        ctx.release(handle)


def test_scatter_update_replaces_it_everywhere(ctx):
    handle = ctx.scatter(helpers.Patchable(1))
    try:
        assert set(ctx.run_each_worker(helpers.value_of, handle).values()) == {1}
        ctx.scatter_update(handle, helpers.Patchable(42))
        assert handle.version == 2
        assert set(ctx.run_each_worker(helpers.value_of, handle).values()) == {42}
        tasks = [FuncTask(ctx, i, helpers.value_of, (handle,)) for i in range(8)]
        assert list(ctx.execute(Job(ctx, tasks))) == [42] * 8
    finally:
        ctx.release(handle)


def test_scatter_update_patch_patches_every_worker(ctx):
    handle = ctx.scatter(helpers.Patchable(10))
    try:
        ctx.scatter_update_patch(handle, 5)
        assert ctx.run_each_worker(helpers.value_of, handle) == {w.name: 15 for w in ctx.workers}
        ctx.scatter_update_patch(handle, 1)
        assert set(ctx.run_each_worker(helpers.value_of, handle).values()) == {16}
    finally:
        ctx.release(handle)


def test_a_failing_patch_reraises_with_the_remote_traceback(ctx):
    handle = ctx.scatter(helpers.Patchable(10))
    try:
        with pytest.raises(helpers.TaskError, match="negative patch -1") as info:
            ctx.scatter_update_patch(handle, -1)
        assert "in patch" in info.value.remote_traceback
        assert set(ctx.run_each_worker(helpers.value_of, handle).values()) == {10}
    finally:
        ctx.release(handle)


def test_release_drops_it_from_every_worker(ctx):
    handle = ctx.scatter(helpers.Patchable(7))
    assert ctx.run_function(helpers.value_of, handle) == 7
    ctx.release(handle)
    with pytest.raises(ScatterError, match=handle.id):
        list(ctx.execute(Job(ctx, [FuncTask(ctx, "after", helpers.value_of, (handle,))])))
    with pytest.raises(ScatterError, match=handle.id):
        ctx.run_function(helpers.value_of, handle)
    with pytest.raises(ScatterError, match=handle.id):
        ctx.scatter_update(handle, 1)
    # the context stays usable
    assert ctx.run_function(helpers.identity, "ok") == "ok"


def test_a_worker_joining_later_gets_it():
    with ExecutionContext.local(workers=2) as ctx:
        assert ctx.await_workers() == 2
        handle = ctx.scatter(helpers.Patchable(3))
        ctx.scatter_update_patch(handle, 1)
        victim = ctx.workers[0]
        os.kill(victim.pid, signal.SIGKILL)  # the local cluster starts a new worker process
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = {w.pid for w in ctx.workers}
            if len(pids) == 2 and victim.pid not in pids:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no new worker joined")
        assert ctx.run_each_worker(helpers.value_of, handle) == {w.name: 4 for w in ctx.workers}


def test_the_async_twin(ctx):
    import asyncio

    async def main():
        actx = ctx.ensure_async()
        handle = await actx.scatter(helpers.Patchable(2))
        await actx.scatter_update_patch(handle, 3)
        values = await actx.run_each_worker(helpers.value_of, handle)
        await actx.scatter_update(handle, helpers.Patchable(9))
        mapped = await actx.map(helpers.add_to, [1], 0)
        after = await actx.run_function(helpers.value_of, handle)
        await actx.release(handle)
        return values, mapped, after

    values, mapped, after = asyncio.run(main())
    assert set(values.values()) == {5} and mapped == [1] and after == 9
