"""Nothing hangs, nothing is lost: results the driver cannot take, deep and huge results,
the driver's memory, results= and timeouts — with a real local cluster."""

from __future__ import annotations

import gc
import hashlib
import os
import time
import uuid
import weakref

import pytest

from bndl_like import ExecutionContext, FuncTask, Job
from bndl_like.execute.recent import JobSummary
from bndl_like.rmi import SerializationError

from ..conftest import wait_until
from . import faulty, helpers


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def still_usable(ctx) -> None:
    assert list(ctx.execute(Job(ctx, [FuncTask(ctx, 0, helpers.add, (1, 2))]))) == [3]
    assert ctx.run_function(helpers.add, 2, 3, timeout=30) == 5


# -- 1. results the driver cannot unpickle -----------------------------------------------------------


def test_run_function_result_of_a_module_only_the_worker_has(ctx, tmp_path):
    module = f"only_on_worker_{uuid.uuid4().hex[:8]}"
    with pytest.raises(SerializationError) as info:
        ctx.run_function(faulty.only_on_worker, str(tmp_path), module, timeout=30)
    text = str(info.value)
    assert "the result of the function" in text and "cannot be unpickled on driver" in text
    assert f"ModuleNotFoundError: No module named '{module}'" in text
    still_usable(ctx)


def test_run_each_worker_result_that_refuses_unpickling(ctx):
    with pytest.raises(SerializationError, match="refuses to be unpickled"):
        ctx.run_each_worker(faulty.refuses_unpickling, timeout=30)
    still_usable(ctx)


def test_task_result_the_driver_cannot_unpickle_fails_that_task_only(ctx, tmp_path):
    module = f"only_on_worker_{uuid.uuid4().hex[:8]}"
    tasks = [FuncTask(ctx, i, helpers.identity, (i,)) for i in range(12)]
    bad = FuncTask(ctx, "bad", faulty.only_on_worker, (str(tmp_path), module))
    job = Job(ctx, [*tasks, bad])
    got = []
    with pytest.raises(SerializationError) as info:
        for result in ctx.execute(job, order_results=False, attempts=3):
            got.append(result)
    text = str(info.value)
    assert text.startswith("the result of task 'bad' cannot be unpickled on the driver: ")
    assert f"No module named '{module}'" in text
    assert job.state == "failed" and bad.failed
    assert bad.attempts == 1  # not retried: it would fail the same way
    assert all(isinstance(r, int) for r in got)
    still_usable(ctx)


def test_task_arguments_a_worker_cannot_unpickle_fail_that_task_only(ctx):
    tasks = [FuncTask(ctx, i, helpers.identity, (i,)) for i in range(8)]
    bad = FuncTask(ctx, "bad", helpers.identity, (faulty.RefusesUnpickling(),))
    job = Job(ctx, [*tasks, bad])
    with pytest.raises(Exception) as info:
        list(ctx.execute(job, concurrency=4))
    text = str(info.value)
    assert "task 'bad' cannot be unpickled on worker" in text and "refuses to be unpickled" in text
    assert [t for t in job.tasks if t.failed] == [bad]  # not the others of its batch
    still_usable(ctx)


def test_call_arguments_a_worker_cannot_unpickle(ctx):
    with pytest.raises(Exception, match="arguments of the function .* cannot be unpickled on worker"):
        ctx.run_function(helpers.identity, faulty.RefusesUnpickling(), timeout=30)
    still_usable(ctx)


# -- 2. deeply nested results -------------------------------------------------------------------------


def test_deeply_nested_result_fails_its_task_with_a_clear_error(ctx):
    job = Job(ctx, [FuncTask(ctx, "deep", faulty.nested, (100_000,)),
                    FuncTask(ctx, "fine", helpers.identity, (1,))])
    with pytest.raises(Exception) as info:
        list(ctx.execute(job))
    text = str(info.value)
    assert "the result of task 'deep' cannot be sent to the driver" in text
    assert "recursion" in text.lower()
    with pytest.raises(Exception, match="(?i)result of the function cannot be sent back.*recursion"):
        ctx.run_function(faulty.nested, 100_000, timeout=30)
    still_usable(ctx)


# -- 6. the driver's memory ---------------------------------------------------------------------------


def test_results_are_held_only_until_yielded(ctx):
    job = Job(ctx, [FuncTask(ctx, i, faulty.megabytes, (1,)) for i in range(4)])
    refs = [weakref.ref(array) for array in ctx.execute(job)]
    gc.collect()
    assert [r() for r in refs] == [None] * 4, "the driver still refers to a result it yielded"
    with pytest.raises(RuntimeError, match="handed out by execute"):
        job.tasks[0].result()
    assert job.counts["done"] == 4


def test_repeated_jobs_do_not_grow_the_driver():
    with ExecutionContext.local(workers=2) as ctx:
        ctx.await_workers()

        def one_run():
            job = Job(ctx, [FuncTask(ctx, i, faulty.megabytes, (8,)) for i in range(8)])
            for array in ctx.execute(job):
                assert array.nbytes == 8 << 20
        one_run()
        gc.collect()
        before = rss()
        for _ in range(5):
            one_run()
        gc.collect()
        grown = rss() - before
        # kept, they would be 320 MiB; the allocator may keep some freed memory mapped
        assert grown < 128 << 20, f"5 runs of 8 x 8 MiB grew the driver by {grown >> 20} MiB"
        # the jobs nobody refers to are summaries: no tasks, no arguments, no results
        # (a job's hooks may still be on their way out)
        wait_until(lambda: gc.collect() >= 0 and all(isinstance(j, JobSummary) for j in ctx.jobs), 10,
                   "the ended jobs to be let go")
        assert all(isinstance(j, JobSummary) and j.state == "done" and len(j) == 8 for j in ctx.jobs), \
            list(ctx.jobs)


def test_ctx_jobs_keeps_a_bounded_history(monkeypatch):
    monkeypatch.setenv("BNDL_LIKE_EXECUTE_KEEP_JOBS", "3")
    with ExecutionContext.local(workers=1) as ctx:
        ctx.await_workers()
        kept = Job(ctx, [FuncTask(ctx, 0, helpers.identity, (0,))], name="kept")
        assert list(ctx.execute(kept)) == [0]
        for i in range(5):
            assert ctx.map(helpers.square, [i]) == [i * i]
        failing = Job(ctx, [FuncTask(ctx, 0, helpers.fail, ("boom",))], name="failing")
        with pytest.raises(helpers.TaskError):
            list(ctx.execute(failing))
        del failing
        # the loop thread and the hook runner may hold the ended job a moment longer
        wait_until(lambda: gc.collect() >= 0 and isinstance(ctx.jobs[-1], JobSummary), 10,
                   "the failed job to be let go")
        assert len(ctx.jobs) == 3 and ctx.jobs.run_count == 7
        last = ctx.jobs[-1]
        assert isinstance(last, JobSummary) and last.name == "failing" and last.state == "failed"
        assert isinstance(last.error, helpers.TaskError) and last.counts["failed"] == 1
        assert last.duration is not None and last.duration >= 0
        assert kept not in list(ctx.jobs)  # the oldest went, though its Job is alive
        ctx.jobs.clear()
        assert len(ctx.jobs) == 0


def test_ctx_jobs_gives_the_job_while_the_caller_holds_it(ctx):
    job = Job(ctx, [FuncTask(ctx, 0, helpers.identity, (5,))])
    assert list(ctx.execute(job)) == [5]
    assert ctx.jobs[-1] is job and job.error is None


# -- 7. results= ----------------------------------------------------------------------------------------


def test_results_sinks_leaves_intermediate_outputs_on_the_workers():
    with ExecutionContext.local(workers=2) as ctx:
        ctx.await_workers()

        def run(results):
            parts = [FuncTask(ctx, ("part", i), faulty.megabytes, (8,)) for i in range(8)]
            sink = FuncTask(ctx, "sum", faulty.array_sum, tuple(parts))
            job = Job(ctx, [*parts, sink])
            return job, parts, list(ctx.execute(job, results=results))
        run("sinks")  # warm up
        gc.collect()
        before = rss()
        job, parts, got = run("sinks")
        gc.collect()
        grown = rss() - before
        assert got == [8 * (1 << 20)]  # 8 parts of 2**20 ones
        assert grown < 10 << 20, f"the driver grew by {grown >> 20} MiB for a scalar"
        with pytest.raises(RuntimeError, match="not brought to the driver"):
            parts[0].result()
        assert all(p.succeeded for p in parts)

        job, parts, got = run([parts_ for parts_ in []])  # nothing at all
        assert got == [] and job.state == "done"


def test_results_given_tasks_in_task_order(ctx):
    tasks = [FuncTask(ctx, i, helpers.identity, (i * 10,)) for i in range(6)]
    last = FuncTask(ctx, "total", helpers.total, (tasks,))
    job = Job(ctx, [*tasks, last])
    assert list(ctx.execute(job, results=[last, tasks[4], tasks[1]])) == [10, 40, 150]
    got = sorted(ctx.execute(Job(ctx, [FuncTask(ctx, i, helpers.identity, (i,)) for i in range(5)]),
                             order_results=False, results="all"))
    assert got == list(range(5))


def test_results_argument_is_checked(ctx):
    a = FuncTask(ctx, "a", helpers.identity, (1,))
    other = FuncTask(ctx, "other", helpers.identity, (1,))
    with pytest.raises(ValueError, match="'all', 'sinks' or an iterable"):
        ctx.execute(Job(ctx, [a]), results="some")
    with pytest.raises(ValueError, match="is not a task of job"):
        ctx.execute(Job(ctx, [a]), results=[other])
    with pytest.raises(TypeError, match="not int"):
        ctx.execute(Job(ctx, [a]), results=3)
    still_usable(ctx)


# -- timeouts -------------------------------------------------------------------------------------------


def test_run_function_timeout(ctx):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"run_function\(sleep_then\) did not return within 0.5 s"):
        ctx.run_function(helpers.sleep_then, 3, "late", timeout=0.5)
    assert time.monotonic() - started < 2.5
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        ctx.run_function(helpers.identity, 1, timeout=0)
    with pytest.raises(TimeoutError, match=r"run_each_worker\(sleep_then\)"):
        ctx.run_each_worker(helpers.sleep_then, 3, "late", timeout=0.3)
    still_usable(ctx)


def test_map_timeout_cancels_the_job(ctx):
    with pytest.raises(TimeoutError, match=r"map\(sleep_then\) \(timeout=0.5 s\) did not finish"):
        ctx.map(helpers.sleep_then, [5, 5, 5, 5], "x", timeout=0.5)
    assert ctx.jobs[-1].state == "cancelled"
    still_usable(ctx)


async def test_async_timeouts(ctx):
    actx = ctx.ensure_async()
    with pytest.raises(TimeoutError, match=r"run_function\(sleep_then\)"):
        await actx.run_function(helpers.sleep_then, 3, "late", timeout=0.3)
    with pytest.raises(TimeoutError, match=r"map\(sleep_then\) did not finish within 0.3 s"):
        await actx.map(helpers.sleep_then, [3, 3], "x", timeout=0.3)
    assert await actx.run_function(helpers.add, 1, 1, timeout=30) == 2


# -- 3. a 2 GiB bytes result ----------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_two_gib_bytes_result_arrives_intact_and_no_worker_is_lost():
    nbytes = 2 << 30
    with ExecutionContext.local(workers=2) as ctx:
        ctx.await_workers()
        lost = []
        ctx.add_hook("worker_lost", lost.append)
        names = {w.name for w in ctx.workers}
        big = FuncTask(ctx, "big", faulty.big_bytes, (nbytes,))
        small = [FuncTask(ctx, i, helpers.sleep_then, (0.2, i)) for i in range(20)]
        data, *rest = ctx.execute(Job(ctx, [big, *small]), concurrency=2)
        assert type(data) is bytes and len(data) == nbytes
        assert hashlib.sha1(data).hexdigest() == faulty.zeros_digest(nbytes)
        del data
        assert rest == list(range(20))
        assert lost == [] and {w.name for w in ctx.workers} == names


def test_task_ids_of_any_hashable_type_travel_in_payloads(ctx):
    first = [FuncTask(ctx, faulty.Key(i), helpers.identity, (i,)) for i in range(6)]
    then = FuncTask(ctx, faulty.Key(100), helpers.total, (first,))
    job = Job(ctx, [*first, then])
    assert list(ctx.execute(job)) == [0, 1, 2, 3, 4, 5, 15]
    failing = FuncTask(ctx, faulty.Key(7), helpers.fail, ("boom",))
    with pytest.raises(helpers.TaskError, match="boom"):
        list(ctx.execute(Job(ctx, [failing])))
