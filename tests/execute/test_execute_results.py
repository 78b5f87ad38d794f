"""What ctx.execute() returns: the job runs when its results are read, never before, and
results dropped unread say so."""

from __future__ import annotations

import gc
import os
import time
import warnings

import pytest

from bndl_like import FuncTask, Job, JobCancelled

from ..conftest import wait_until
from . import helpers

pytestmark = pytest.mark.timeout(60)


def _size(path) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def stops_growing(path, within: float = 5.0) -> bool:
    """A task appending to ``path`` every 10 ms no longer runs: no growth for 0.2 s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = _size(path)
        time.sleep(0.2)
        if _size(path) == before:
            return True
    return False


def ticking_job(ctx, path, name="ticking"):
    return Job(ctx, [FuncTask(ctx, 0, helpers.identity, ("first",)),
                     FuncTask(ctx, 1, helpers.tick_forever, (str(path),))], name=name)


def no_runtime_warnings(records) -> list:
    return [str(w.message) for w in records if issubclass(w.category, RuntimeWarning)]


def test_results_dropped_unread_run_nothing_and_say_so(ctx, tmp_path):
    path = tmp_path / "ticks"
    job = ticking_job(ctx, path, name="dropped")
    with pytest.warns(RuntimeWarning, match=r"the results of job 'dropped' \(2 tasks\) were dropped "
                                            r"without being iterated, so the job never ran"):
        ctx.execute(job)  # a statement: the results are dropped at once
        gc.collect()
    assert job.state == "created" and job._run is None and all(not t.executed_on for t in job.tasks)
    assert job not in list(ctx.jobs)
    # a job both workers ran after it: anything sent before would have run by now
    assert sorted(ctx.run_each_worker(helpers.identity, 1).values()) == [1, 1]
    assert not path.exists(), "a job whose results were never read ran"
    # the job is free: run it for real
    results = ctx.execute(job)
    assert next(results) == "first"
    wait_until(lambda: _size(path) > 0, message="the job to run once its results are read")
    results.close()
    assert stops_growing(path) and job.state == "cancelled"


def test_the_repr_says_what_to_do(ctx):
    job = Job(ctx, [FuncTask(ctx, i, helpers.identity, (i,)) for i in range(3)], name="shown")
    results = ctx.execute(job)
    assert repr(results) == ("<results of job 'shown' (3 tasks): not started \N{EM DASH} iterate it (for r "
                             "in \N{HORIZONTAL ELLIPSIS}, list(\N{HORIZONTAL ELLIPSIS})) to run the job>")
    assert list(results) == [0, 1, 2]
    assert repr(results) == "<results of job 'shown' (3 tasks): done, 3/3 done; 3 of 3 results read>"
    closed = ctx.execute(job)
    closed.close()
    assert repr(closed) == "<results of job 'shown' (3 tasks): closed before it started; the job did not run>"
    assert list(closed) == [] and job.state == "done"


def test_results_dropped_half_read_cancel_the_job_with_a_warning(ctx, tmp_path):
    path = tmp_path / "ticks"
    job = ticking_job(ctx, path, name="half-read")
    results = ctx.execute(job)
    assert next(results) == "first"
    wait_until(lambda: _size(path) > 0, message="the ticking task to run")
    assert "running" in repr(results) and "1 of 2 results read" in repr(results)
    with pytest.warns(RuntimeWarning, match=r"job 'half-read' was cancelled because its results were "
                                            r"not read: they were dropped after 1 of 2"):
        del results
        gc.collect()
    wait_until(lambda: job.state == "cancelled", message="the job to be cancelled")
    assert stops_growing(path), "the task still runs on its worker"
    assert ctx.map(helpers.square, [3]) == [9]


def test_leaving_a_loop_or_closing_cancels_without_a_warning(ctx, tmp_path):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        job = ticking_job(ctx, tmp_path / "a", name="loop-left")
        for result in ctx.execute(job):
            assert result == "first"
            break
        gc.collect()
        assert job.state == "cancelled"
        job = ticking_job(ctx, tmp_path / "b", name="with-block")
        with ctx.execute(job) as results:
            assert next(results) == "first"
        assert job.state == "cancelled"
        assert stops_growing(tmp_path / "a") and stops_growing(tmp_path / "b")
    assert no_runtime_warnings(records) == []


def test_start_runs_the_job_before_its_results_are_read(ctx, tmp_path):
    path = tmp_path / "ticks"
    job = Job(ctx, [FuncTask(ctx, 0, helpers.tick_forever, (str(path),))], name="background")
    results = ctx.execute(job).start()
    wait_until(lambda: _size(path) > 0, message="the started job to run unread")
    job.cancel()
    with pytest.raises(JobCancelled):
        list(results)
    assert stops_growing(path)


def test_job_cancel_before_the_results_are_read_frees_the_job(ctx):
    job = Job(ctx, [FuncTask(ctx, 0, helpers.identity, ("ran",))], name="unread")
    unread = ctx.execute(job)
    with pytest.raises(RuntimeError, match=r"^job unread is already executing; read its results, or "
                                           r"job.cancel\(\) it$"):
        ctx.execute(job)
    job.cancel()
    with pytest.raises(JobCancelled, match="job unread was cancelled before it started"):
        next(unread)
    assert list(ctx.execute(job)) == ["ran"]  # the cancel did not stick to the next run
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        del unread
        gc.collect()
    assert no_runtime_warnings(records) == []


def test_a_worker_joining_between_execute_and_reading_gets_work(tmp_path):
    from bndl_like import ExecutionContext
    from bndl_like.local import LocalWorkers

    secret = LocalWorkers.new_secret()
    with ExecutionContext(seeds=[], listen="tcp://127.0.0.1:0", secret=secret) as ctx:
        first = LocalWorkers(1, ctx.node.addresses[0], secret)
        second = None
        try:
            assert ctx.await_workers(worker_count=1, stable_timeout=30) == 1
            tasks = [FuncTask(ctx, i, helpers.sleep_then, (0.02, i)) for i in range(40)]
            results = ctx.execute(Job(ctx, tasks), order_results=False)
            second = LocalWorkers(1, ctx.node.addresses[0], secret)
            assert ctx.await_workers(worker_count=2, stable_timeout=30) == 2
            assert sorted(results) == list(range(40))
            assert len({t.executed_on_last() for t in tasks}) == 2
        finally:
            first.stop()
            if second is not None:
                second.stop()
