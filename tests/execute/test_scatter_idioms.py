"""Scatter as code around it uses it: a handle as a context manager, release after close,
and scatter_update reaching the tasks already queued on the workers."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from bndl_like import ExecutionContext, FuncTask, Job, ScatterError

from ..conftest import wait_until
from . import helpers

pytestmark = pytest.mark.timeout(60)

QUEUED = 24  # tasks queued on the 2 workers (within concurrency 1 + prefetch 16 each)


@pytest.fixture(autouse=True)
def _prefetch(monkeypatch):
    """Tasks handed ahead to the workers (read as each job starts)."""
    monkeypatch.setenv("BNDL_LIKE_EXECUTE_PREFETCH", "16")
    monkeypatch.setenv("BNDL_LIKE_EXECUTE_CONCURRENCY", "1")


@pytest.fixture(scope="module")
def ctx():
    with ExecutionContext.local(workers=2, progress=False) as ctx:
        assert ctx.await_workers() == 2
        yield ctx


def gate(directory, name):
    """Say it started, then wait (bounded) until the test opens the gate."""
    open(os.path.join(directory, f"started-{name}"), "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(directory, "open")):
        if time.monotonic() > deadline:
            raise TimeoutError("the gate was never opened")
        time.sleep(0.005)
    return name


def value_plus(obj, dependency, i):
    return obj.value, dependency, i


def queued_on_workers(ctx) -> int:
    return sum(ctx._portal.run(lambda w=w: w.call("tasks", "status"))["queued"] for w in ctx.workers)


def run_gated(ctx, tmp_path, handle, change):
    """A job whose QUEUED last tasks are queued on the workers, behind a gate task running on
    each, when ``change()`` runs on the driver; the gate opens after it returned, so every one
    of them starts after it. Their results, or the exception raised."""
    names = [w.name for w in ctx.workers]
    first = FuncTask(ctx, 0, helpers.identity, (100,))  # a dependency, done before the gates
    # one gate on each worker, both running once ``first`` is done
    gates = [FuncTask(ctx, 1 + g, gate, (str(tmp_path), g), dependencies=[first],
                      locality={name: 1 if i == g else -1 for i, name in enumerate(names)})
             for g in range(2)]
    queued = [FuncTask(ctx, 3 + i, value_plus, (handle, first, i)) for i in range(QUEUED)]
    results = ctx.execute(Job(ctx, [first, *gates, *queued]), order_results=False)
    try:
        assert next(results) == 100
        wait_until(lambda: all(os.path.exists(tmp_path / f"started-{g}") for g in range(2)),
                   message="both gates run")
        wait_until(lambda: queued_on_workers(ctx) == QUEUED, message="the tasks are queued on the workers")
        change()
        (tmp_path / "open").touch()
        return sorted((r for r in results if type(r) is tuple), key=lambda r: r[2])
    finally:
        results.close()


def test_release_after_close_does_nothing():
    ctx = ExecutionContext.local(workers=1, progress=False)
    try:
        handle = ctx.scatter(helpers.Patchable(1))
        kept = ctx.scatter(helpers.Patchable(2))
    finally:
        ctx.close()
    ctx.release(handle)  # no RuntimeError: the workers that held it are gone
    ctx.release(handle)
    asyncio.run(ctx.ensure_async().release(handle))
    with kept:
        pass  # leaving the block after close() releases nothing, raises nothing
    with pytest.raises(TypeError, match="ScatterHandle"):
        ctx.release("not a handle")
    with pytest.raises(RuntimeError, match="closed"):
        ctx.scatter(3)  # other calls still say the context is closed


def test_scatter_update_reaches_the_tasks_queued_on_the_workers(ctx, tmp_path):
    handle = ctx.scatter(helpers.Patchable("old"))
    try:
        got = run_gated(ctx, tmp_path, handle, lambda: ctx.scatter_update(handle, helpers.Patchable("new")))
    finally:
        ctx.release(handle)
    # every task started after scatter_update returned: all got the new object (and their dependency)
    assert got == [("new", 100, i) for i in range(QUEUED)]


def test_scatter_update_patch_reaches_them_too(ctx, tmp_path):
    handle = ctx.scatter(helpers.Patchable(1))
    try:
        got = run_gated(ctx, tmp_path, handle, lambda: ctx.scatter_update_patch(handle, 41))
    finally:
        ctx.release(handle)
    assert got == [(42, 100, i) for i in range(QUEUED)]


def test_a_release_fails_the_queued_tasks_that_start_after_it(ctx, tmp_path):
    handle = ctx.scatter(helpers.Patchable(1))
    with pytest.raises(ScatterError, match=handle.id):
        run_gated(ctx, tmp_path, handle, lambda: ctx.release(handle))
    assert ctx.run_function(helpers.identity, "ok") == "ok"  # the cluster keeps working


def test_with_releases_the_object_on_exit(ctx):
    with ctx.scatter(helpers.Patchable(7)) as handle:
        assert ctx.run_function(helpers.value_of, handle) == 7
        assert set(ctx.run_each_worker(helpers.scatter_puts, handle.id).values()) == {1}
    with pytest.raises(ScatterError, match=handle.id):
        ctx.run_function(helpers.value_of, handle)
    with pytest.raises(helpers.TaskError), ctx.scatter(helpers.Patchable(8)) as failing:
        helpers.fail("inside the block")  # released on the way out of a failing block too
    with pytest.raises(ScatterError, match=failing.id):
        ctx.run_function(helpers.value_of, failing)


def test_async_with_releases_the_object_on_exit(ctx):
    async def main():
        actx = ctx.ensure_async()
        async with await actx.scatter(helpers.Patchable(3)) as handle:
            inside = await actx.run_function(helpers.value_of, handle)
        try:
            await actx.run_function(helpers.value_of, handle)
        except ScatterError as exc:
            return inside, exc
        return inside, None

    inside, error = asyncio.run(main())
    assert inside == 3 and isinstance(error, ScatterError)
