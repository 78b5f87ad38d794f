"""The ExecutionContext on a real local cluster of worker processes."""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback

import pytest

from bndl_like import ExecutionContext, FuncTask, Job, JobCancelled, RemoteError, current_worker, task_context

from . import helpers


def run(ctx, tasks, **kw):
    return list(ctx.execute(Job(ctx, tasks), **kw))


def test_diamond_with_nested_dependency_arguments(ctx):
    a = FuncTask(ctx, "a", helpers.add, (1, 2))
    b = FuncTask(ctx, "b", helpers.add, (10, 20))
    c = FuncTask(ctx, "c", helpers.total, ([a, b, 100],))
    d = FuncTask(ctx, "d", helpers.combine, ((a, b), {"x": c, "y": [a]}))
    assert run(ctx, [a, b, c, d]) == [3, 30, 133, [3, 30, 136]]
    assert set(d.dependencies) == {a, b, c} and d in a.dependents
    assert all(t.succeeded and t.done and not t.pending for t in (a, b, c, d))
    assert d.executed_on_last() in {w.name for w in ctx.workers}
    with pytest.raises(RuntimeError, match="result of task 'd' was handed out by execute"):
        d.result()  # the driver holds a result only until it is yielded


def test_results_in_completion_order(ctx):
    slow = FuncTask(ctx, 0, helpers.sleep_then, (0.5, "slow"))
    fast = FuncTask(ctx, 1, helpers.sleep_then, (0.0, "fast"))
    assert run(ctx, [slow, fast], order_results=False) == ["fast", "slow"]
    assert run(ctx, [FuncTask(ctx, 0, helpers.sleep_then, (0.3, "slow")),
                     FuncTask(ctx, 1, helpers.sleep_then, (0.0, "fast"))]) == ["slow", "fast"]


def test_ten_thousand_tasks(ctx):
    tasks = [FuncTask(ctx, i, helpers.identity, (i,)) for i in range(10_000)]
    assert run(ctx, tasks) == list(range(10_000))
    used = {t.executed_on_last() for t in tasks}
    assert used == {w.name for w in ctx.workers}


def test_failing_task_raises_its_own_type_with_remote_traceback(ctx):
    bad = FuncTask(ctx, "bad", helpers.fail, ("it broke",))
    ok = FuncTask(ctx, "ok", helpers.identity, (1,))
    job = Job(ctx, [ok, bad])
    with pytest.raises(helpers.TaskError, match="it broke") as info:
        list(ctx.execute(job, attempts=2))
    frames = traceback.extract_tb(info.value.__traceback__)
    assert any(f.name == "fail" and f.filename.endswith("helpers.py") for f in frames)
    assert "in fail" in info.value.remote_traceback
    assert len(bad.executed_on) == 2
    assert bad.executed_on[0] != bad.executed_on[1]  # the retry avoided the worker it failed on
    assert bad.failed and isinstance(bad.exception(), helpers.TaskError)
    assert job.state == "failed"
    assert run(ctx, [FuncTask(ctx, 0, helpers.identity, ("usable",))]) == ["usable"]


def test_retry_succeeds_elsewhere(ctx, tmp_path):
    task = FuncTask(ctx, 0, helpers.fail_on_first_worker, (str(tmp_path), "second time"))
    assert run(ctx, [task], attempts=2) == ["second time"]
    assert len(task.executed_on) == 2


def _size(path):
    return os.path.getsize(path) if os.path.exists(path) else 0


def assert_stops_growing(path, within: float = 5.0) -> None:
    """A task appending to ``path`` every 10 ms has stopped: no growth in 0.2 s."""
    deadline = time.monotonic() + within
    while True:
        before = _size(path)
        time.sleep(0.2)
        if _size(path) == before:
            return
        assert time.monotonic() < deadline, "the task kept running after it was cancelled"


def test_cancelling_a_running_task_stops_it_on_the_worker(ctx, tmp_path):
    path = str(tmp_path / "ticks")
    job = Job(ctx, [FuncTask(ctx, 0, helpers.tick_forever, (path,))])
    results = ctx.execute(job).start()  # runs before its results are read
    deadline = time.monotonic() + 10
    while _size(path) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _size(path) >= 5, "the task did not start"
    threading.Timer(0.1, job.cancel).start()
    with pytest.raises(JobCancelled):
        next(results)
    assert_stops_growing(path)  # the thread on the worker really stopped
    assert job.state == "cancelled" and job.tasks[0].cancelled
    assert run(ctx, [FuncTask(ctx, 0, helpers.identity, ("usable",))]) == ["usable"]


def test_closing_the_generator_cancels_the_job(ctx, tmp_path):
    path = str(tmp_path / "ticks")
    tasks = [FuncTask(ctx, 0, helpers.identity, (0,)),
             FuncTask(ctx, 1, helpers.tick_forever, (path,))]
    results = ctx.execute(Job(ctx, tasks))
    assert next(results) == 0
    deadline = time.monotonic() + 10
    while _size(path) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    results.close()
    assert_stops_growing(path)
    assert ctx.jobs[-1].state == "cancelled"


def test_current_worker_and_task_context(ctx):
    task = FuncTask(ctx, "me", helpers.who_am_i)
    [(worker, task_id, attempt)] = run(ctx, [task])
    assert worker == task.executed_on_last() and task_id == "me" and attempt == 1
    with pytest.raises(RuntimeError, match="inside a task"):
        current_worker()
    with pytest.raises(RuntimeError, match="inside a task"):
        task_context()


def test_restricting_workers(ctx):
    one = ctx.workers[0]
    tasks = [FuncTask(ctx, i, helpers.pid_of) for i in range(20)]
    run(ctx, tasks, workers=[one])
    assert {t.executed_on_last() for t in tasks} == {one.name}
    with pytest.raises(ValueError, match="no-such-worker"):
        ctx.execute(Job(ctx, [FuncTask(ctx, 0, helpers.pid_of)]), workers=["no-such-worker"])


def test_user_errors_are_clear(ctx):
    a = FuncTask(ctx, "a", helpers.identity, (1,))
    b = FuncTask(ctx, "b", helpers.identity, (a,))
    with pytest.raises(ValueError, match="'b' depends on 'a'"):
        Job(ctx, [b])
    c = FuncTask(ctx, "c", helpers.identity, (1,))
    d = FuncTask(ctx, "d", helpers.identity, (c,))
    c.add_dependency(d)
    with pytest.raises(ValueError, match="cycle: 'c' -> 'd' -> 'c'|cycle: 'd' -> 'c' -> 'd'"):
        Job(ctx, [c, d])
    with pytest.raises(ValueError, match="duplicate task id 'a'"):
        Job(ctx, [a, FuncTask(ctx, "a", helpers.identity, (1,))])
    with pytest.raises(TypeError, match="callable"):
        FuncTask(ctx, "x", 42)
    lock = threading.Lock()
    with pytest.raises(Exception, match="cannot"):
        run(ctx, [FuncTask(ctx, "x", helpers.identity, (lock,))])
    assert run(ctx, [FuncTask(ctx, 0, helpers.identity, ("usable",))]) == ["usable"]


def test_remote_error_for_unimportable_exception(ctx):
    def raise_local():
        class Local(Exception):
            def __reduce__(self):
                raise TypeError("no pickling")
        raise Local("local failure")
    with pytest.raises(RemoteError, match="local failure"):
        run(ctx, [FuncTask(ctx, 0, raise_local)])


def test_sigkill_of_a_worker_mid_job_gives_correct_results():
    with ExecutionContext.local(workers=2) as ctx:
        assert ctx.await_workers() == 2
        first = [FuncTask(ctx, ("a", i), helpers.sleep_then, (0.05, i)) for i in range(40)]
        second = [FuncTask(ctx, ("b", i), helpers.add, (first[i], first[(i + 1) % 40]))
                  for i in range(40)]
        job = Job(ctx, first + second)
        results = ctx.execute(job, order_results=False)
        got = [next(results) for _ in range(10)]
        victim = ctx._local.processes[0]
        os.kill(victim.pid, signal.SIGKILL)
        got += list(results)
        assert len(got) == 80
        assert sorted(got) == sorted(list(range(40)) + [i + (i + 1) % 40 for i in range(40)])
        assert run(ctx, [FuncTask(ctx, 0, helpers.identity, ("usable",))]) == ["usable"]
        # the local cluster replaces the dead worker, like a supervisor
        deadline = time.monotonic() + 20
        while ctx.worker_count < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ctx.worker_count == 2 and victim.pid not in {w.pid for w in ctx.workers}
        pids = [p.pid for p in ctx._local.processes] + [victim.pid]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_ctrl_c_cancels_the_job_and_the_context_stays_usable(tmp_path):
    import subprocess
    import sys

    ticks = str(tmp_path / "ticks")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-m", "tests.execute.interrupt_driver", ticks], cwd=root,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "RUNNING"
        deadline = time.monotonic() + 10
        while _size(ticks) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "INTERRUPTED cancelled" in out and "USABLE" in out, out
    assert proc.returncode == 0
    # the task stopped on the worker, which exited with the driver
    before = _size(ticks)
    time.sleep(0.3)
    assert _size(ticks) == before


def test_sync_api_inside_a_running_event_loop(ctx):
    """As in a notebook, whose main thread runs an event loop already."""
    import asyncio

    async def cell():
        return run(ctx, [FuncTask(ctx, i, helpers.add, (i, 1)) for i in range(5)])

    assert asyncio.run(cell()) == [1, 2, 3, 4, 5]


def test_driver_as_seed_and_a_worker_joining_mid_job():
    from bndl_like.local import LocalWorkers

    secret = LocalWorkers.new_secret()
    with ExecutionContext(seeds=[], listen="tcp://127.0.0.1:0", secret=secret) as ctx:
        first = LocalWorkers(1, ctx.node.addresses[0], secret)
        second = None
        try:
            assert ctx.await_workers(worker_count=1, stable_timeout=30) == 1
            tasks = [FuncTask(ctx, i, helpers.sleep_then, (0.02, i)) for i in range(150)]
            results = ctx.execute(Job(ctx, tasks), order_results=False)
            got = [next(results) for _ in range(5)]
            second = LocalWorkers(1, ctx.node.addresses[0], secret)
            got += list(results)
            assert sorted(got) == list(range(150))
            assert ctx.worker_count == 2
            assert len({t.executed_on_last() for t in tasks}) == 2  # the late joiner got work
        finally:
            first.stop()
            if second is not None:
                second.stop()


def test_job_fails_clearly_when_every_worker_is_lost():
    from bndl_like import WorkersLost

    with ExecutionContext.local(workers=1) as ctx:
        assert ctx.await_workers() == 1
        tasks = [FuncTask(ctx, i, helpers.sleep_then, (0.05, i)) for i in range(100)]
        results = ctx.execute(Job(ctx, tasks))
        next(results)
        ctx._local.stop()  # no replacement: the only worker is gone for good
        with pytest.raises(WorkersLost, match="worker"):
            list(results)


def test_a_function_task_that_runs_past_its_timeout_fails(ctx, tmp_path):
    from bndl_like import TaskTimeout

    path = str(tmp_path / "ticks")
    task = FuncTask(ctx, "slow", helpers.tick_forever, (path,), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out after 0.5s") as info:
        run(ctx, [task])
    assert isinstance(info.value, TaskTimeout)
    assert time.monotonic() - started < 10
    assert_stops_growing(path)
    quick = FuncTask(ctx, "quick", helpers.add, (1, 2), timeout=5)
    assert run(ctx, [quick]) == [3]
    with pytest.raises(ValueError, match="timeout"):
        FuncTask(ctx, "bad", helpers.add, (1, 2), timeout=-1)
