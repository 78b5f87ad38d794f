"""current_worker() and task_context() work in every function the cluster runs."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

import bndl_like
from bndl_like import FuncTask, Job

pytestmark = pytest.mark.timeout(60)


def where(*_):
    """What the helpers say, as plain values."""
    context = bndl_like.task_context()
    return (bndl_like.current_worker().name, os.getpid(), context.task_id, context.job_id,
            context.attempt, context.worker, context.driver, context.function)


def outside_the_call():
    """The helpers in a thread the function starts: not part of the call."""
    answers = []

    def probe():
        for helper in (bndl_like.current_worker, bndl_like.task_context):
            try:
                helper()
                answers.append("worked")
            except RuntimeError as exc:
                answers.append(str(exc))
    thread = threading.Thread(target=probe)
    thread.start()
    thread.join(10)
    return answers


def _pids(ctx) -> dict:
    return {w.name: w.pid for w in ctx.workers}


def test_run_function(ctx):
    name, pid, task_id, job_id, attempt, worker, driver, function = ctx.run_function(where)
    assert _pids(ctx)[name] == pid
    assert (task_id, job_id, attempt, worker, driver, function) == (None, None, 1, name, ctx.node.name,
                                                                    "where")


def test_run_each_worker(ctx):
    answers = ctx.run_each_worker(where, 1)
    assert sorted(answers) == sorted(_pids(ctx))
    for key, (name, pid, task_id, job_id, _, worker, driver, function) in answers.items():
        assert key == name == worker and _pids(ctx)[name] == pid
        assert (task_id, job_id, driver, function) == (None, None, ctx.node.name, "where")


def test_run_each_host(ctx):
    answers = ctx.run_each_host(where)
    hosts = {w.host: w.name for w in ctx.workers}
    assert sorted(answers) == sorted(hosts)
    for name, *_ in answers.values():
        assert name in _pids(ctx)


def test_map_and_tasks(ctx):
    answers = ctx.map(where, range(4), chunksize=1)
    assert [a[2] for a in answers] == [0, 1, 2, 3]  # map's tasks: one per chunk
    assert all(a[3] is not None and a[6] == ctx.node.name and a[7] is None for a in answers)
    job = Job(ctx, [FuncTask(ctx, "where", where)])
    [(name, _, task_id, job_id, attempt, *_)] = list(ctx.execute(job))
    assert (task_id, job_id, attempt) == ("where", job.id, 1) and name in _pids(ctx)


def test_async_twins(ctx):
    actx = ctx.ensure_async()

    async def main():
        return await asyncio.gather(actx.run_function(where), actx.run_each_worker(where))
    one, each = asyncio.run(asyncio.wait_for(main(), 30))
    assert one[0] in _pids(ctx) and one[7] == "where"
    assert all(key == answer[0] for key, answer in each.items())


def test_only_inside_the_call(ctx):
    message = "only available inside a task or a function the cluster runs"
    assert all(message in answer for answer in ctx.run_function(outside_the_call))
    for helper in (bndl_like.current_worker, bndl_like.task_context):
        with pytest.raises(RuntimeError, match=message):
            helper()  # on the driver
    assert all(message in answer for answer in ctx.map(lambda _: outside_the_call()[0], range(2)))
