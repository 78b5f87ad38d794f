"""Event hooks, holding and draining workers, on a real local cluster."""

from __future__ import annotations

import logging
import os
import signal
import threading

import pytest

from bndl_like import ExecutionContext, FuncTask, Job, JobCancelled

from ..conftest import wait_until
from . import helpers


class Recorder:
    """Hooks that record (event, argument, thread) for some events."""

    def __init__(self, target, events):
        self.calls: list[tuple] = []
        for event in events:
            target.add_hook(event, self._for(event))

    def _for(self, event):
        def hook(arg):
            self.calls.append((event, arg, threading.current_thread()))
        return hook

    def events(self, arg=None) -> list[str]:
        return [e for e, a, _ in self.calls if arg is None or a is arg]


def squeeze(events: list[str]) -> list[str]:
    """Runs of the same event as one."""
    return [e for i, e in enumerate(events) if i == 0 or events[i - 1] != e]


def worker_names(ctx) -> tuple[str, str]:
    first, second = ctx.workers
    return first.name, second.name


TASK_EVENTS = ("task_started", "task_done", "task_failed", "task_cancelled", "task_retried",
               "job_done", "job_failed")


# -- hooks ---------------------------------------------------------------------------------------

def test_unknown_event_raises_listing_the_known_ones(ctx):
    with pytest.raises(ValueError, match="task_started.*job_failed"):
        ctx.add_hook("task_exploded", print)
    job = Job(ctx, [FuncTask(ctx, 0, helpers.identity, (0,))])
    with pytest.raises(ValueError, match="unknown hook event 'nope'"):
        job.add_hook("nope", print)


def test_retry_fires_started_retried_done_and_job_done(ctx, tmp_path):
    flaky = FuncTask(ctx, "flaky", helpers.fail_on_first_worker, (str(tmp_path), "ok"))
    plain = FuncTask(ctx, "plain", helpers.identity, (1,))
    job = Job(ctx, [flaky, plain])
    rec = Recorder(job, TASK_EVENTS)
    assert list(ctx.execute(job, attempts=2)) == ["ok", 1]
    assert ctx._hook_runner.join(5)
    # (task_started fires each time a task is sent: again after a take-back for an idle worker)
    assert squeeze(rec.events(flaky)) == ["task_started", "task_retried", "task_started", "task_done"]
    assert squeeze(rec.events(plain)) == ["task_started", "task_done"]
    assert rec.events(job) == ["job_done"] and rec.calls[-1][0] == "job_done"
    # hooks run in their own thread, neither the driver loop's nor the caller's
    threads = {t for _, _, t in rec.calls}
    assert len(threads) == 1
    assert threads.isdisjoint({ctx._portal.thread, threading.current_thread()})


def test_failure_fires_task_failed_task_cancelled_and_job_failed(ctx, tmp_path):
    bad = FuncTask(ctx, "bad", helpers.fail, ("broken",))
    ticking = FuncTask(ctx, "tick", helpers.tick_forever, (str(tmp_path / "ticks"),))
    job = Job(ctx, [ticking, bad])
    rec = Recorder(job, TASK_EVENTS)
    with pytest.raises(helpers.TaskError, match="broken"):
        list(ctx.execute(job))
    assert ctx._hook_runner.join(5)
    assert squeeze(rec.events(bad)) == ["task_started", "task_failed"]
    assert squeeze(rec.events(ticking)) == ["task_started", "task_cancelled"]
    assert rec.events(job) == ["job_failed"] and job.state == "failed"


def test_cancelled_job_fires_task_cancelled_and_job_failed(ctx, tmp_path):
    path = tmp_path / "ticks"
    task = FuncTask(ctx, 0, helpers.tick_forever, (str(path),))
    job = Job(ctx, [task])
    rec = Recorder(job, TASK_EVENTS)
    results = ctx.execute(job).start()
    wait_until(lambda: path.exists())
    job.cancel()
    with pytest.raises(JobCancelled):
        list(results)
    assert ctx._hook_runner.join(5)
    assert squeeze(rec.events(task)) == ["task_started", "task_cancelled"]
    assert rec.events(job) == ["job_failed"] and job.state == "cancelled"


def test_context_hooks_see_every_job(ctx):
    rec = Recorder(ctx, ("task_done", "job_done"))
    try:
        tasks = [FuncTask(ctx, i, helpers.identity, (i,)) for i in range(5)]
        job = Job(ctx, tasks)
        assert list(ctx.execute(job)) == list(range(5))
        assert ctx._hook_runner.join(5)
        assert sorted(t.id for e, t, _ in rec.calls if e == "task_done") == list(range(5))
        assert rec.events(job) == ["job_done"]
    finally:
        for event in ("task_done", "job_done"):
            ctx._state.hooks.fns[event].clear()


def test_a_hook_that_raises_is_logged_and_the_job_goes_on(ctx, caplog):
    def boom(task):
        raise RuntimeError("hook broke")

    tasks = [FuncTask(ctx, i, helpers.identity, (i,)) for i in range(20)]
    job = Job(ctx, tasks)
    job.add_hook("task_done", boom)
    rec = Recorder(job, ("task_done", "job_done"))
    with caplog.at_level(logging.ERROR, logger="bndl_like.execute.hooks"):
        assert list(ctx.execute(job)) == list(range(20))
        assert ctx._hook_runner.join(5)
    assert len(rec.events()) == 21  # the hooks after the broken one still ran
    errors = [r for r in caplog.records if "task_done" in r.getMessage()]
    assert len(errors) == 20 and "hook broke" in (errors[0].exc_text or "")


def test_worker_lost_and_joined_hooks():
    with ExecutionContext.local(workers=2) as ctx:
        assert ctx.await_workers() == 2
        rec = Recorder(ctx, ("worker_joined", "worker_lost"))
        victim = ctx.workers[0]
        os.kill(victim.pid, signal.SIGKILL)  # the local cluster starts a replacement
        wait_until(lambda: len(rec.calls) >= 2, timeout=30)
        ctx._hook_runner.join(5)
        lost = [a for e, a, _ in rec.calls if e == "worker_lost"]
        joined = [a for e, a, _ in rec.calls if e == "worker_joined"]
        assert lost == [victim.name]
        assert len(joined) == 1 and joined[0] != victim.name and isinstance(joined[0], str)


# -- hold, release, drain ------------------------------------------------------------------------------

def test_unknown_worker_raises(ctx):
    for method in (ctx.hold, ctx.release_worker, ctx.drain):
        with pytest.raises(ValueError, match="no-such-worker"):
            method("no-such-worker")


def _status(ctx, name: str) -> dict:
    peer = ctx.node.peers[name]
    return ctx._portal.run(lambda: peer.call("tasks", "status"), timeout=5)


def test_hold_mid_job_then_release(ctx):
    held, other = worker_names(ctx)
    tasks = [FuncTask(ctx, i, helpers.sleep_then, (0.02, i)) for i in range(80)]
    results = ctx.execute(Job(ctx, tasks), order_results=False)
    got = [next(results) for _ in range(6)]
    try:
        ctx.hold(ctx.workers[0])  # a worker object works as well as a name
        sent_before = ctx._portal.call(lambda: {t.id for t in tasks if t.executed_on})
        assert _status(ctx, held)["held"] is True and _status(ctx, other)["held"] is False
        got += list(results)
        assert sorted(got) == list(range(80))
        later = [t for t in tasks if t.id not in sent_before]
        assert len(later) > 20
        assert all(held not in t.executed_on for t in later)
        # later jobs start with the worker held too
        again = [FuncTask(ctx, i, helpers.sleep_then, (0.01, i)) for i in range(20)]
        assert list(ctx.execute(Job(ctx, again))) == list(range(20))
        assert {t.executed_on_last() for t in again} == {other}
    finally:
        ctx.release_worker(held)
    assert _status(ctx, held)["held"] is False
    tasks = [FuncTask(ctx, i, helpers.sleep_then, (0.02, i)) for i in range(40)]
    assert list(ctx.execute(Job(ctx, tasks))) == list(range(40))
    assert {t.executed_on_last() for t in tasks} == {held, other}


def test_drain_returns_after_its_running_task_finishes(ctx):
    drained, other = worker_names(ctx)
    tasks = [FuncTask(ctx, i, helpers.sleep_then, (0.4, i)) for i in range(8)]
    job = Job(ctx, tasks)
    results = ctx.execute(job).start()

    def started_on_drained():  # started on the worker, not only sent there
        run = job._run
        return run and [t for t in tasks if t.executed_on_last() == drained
                        and run.scheduler.state(t.id) == "running"]
    wait_until(lambda: ctx._portal.call(started_on_drained))
    running = ctx._portal.call(started_on_drained)[0]
    try:
        ctx.drain(drained, timeout=20)
        assert running.succeeded and running.executed_on == [drained]
        assert ctx._portal.call(lambda: job._run is None or not job._run.scheduler.assigned(drained))
        assert list(results) == list(range(8))
        assert tasks[-1].executed_on_last() == other
    finally:
        ctx.release_worker(drained)


def test_drain_recomputes_needed_outputs_elsewhere(ctx):
    drained, other = worker_names(ctx)
    parts = [FuncTask(ctx, ("part", i), helpers.identity, (i,), locality={drained: 1}) for i in range(6)]
    slow = FuncTask(ctx, "slow", helpers.sleep_then, (3.0, 100), locality={drained: -1})
    total = FuncTask(ctx, "total", helpers.total, (parts + [slow],))
    job = Job(ctx, parts + [slow, total])
    results = ctx.execute(job, concurrency=2).start()  # room on the other worker next to "slow"
    wait_until(lambda: all(p.succeeded for p in parts))

    def locations():
        run = job._run
        return None if run is None else {run.scheduler.location(p.id) for p in parts}
    before = ctx._portal.call(locations)
    assert before is not None and drained in before
    try:
        ctx.drain(drained, timeout=20)
        after = ctx._portal.call(locations)
        assert not slow.done, "the drain should not wait for the job when outputs can move"
        assert after == {other}
        assert list(results) == list(range(6)) + [100, 115]
    finally:
        ctx.release_worker(drained)


def test_drain_mid_job_then_sigkill_loses_nothing():
    """Drained, a worker can die: the job completes and nothing re-runs because of it."""
    with ExecutionContext.local(workers=2) as own:
        assert own.await_workers() == 2
        drained, other = sorted(w.name for w in own.workers)
        victim = next(w for w in own.workers if w.name == drained)
        first = [FuncTask(own, ("a", i), helpers.identity, (i,), locality={drained: 1}) for i in range(8)]
        slow = FuncTask(own, "slow", helpers.sleep_then, (2.0, 100), locality={drained: -1})
        total = FuncTask(own, "total", helpers.total, (first + [slow],))
        job = Job(own, first + [slow, total])
        results = own.execute(job, concurrency=2).start()
        wait_until(lambda: all(t.succeeded for t in first))
        own.drain(drained, timeout=20)
        runs_before = {t.id: len(t.executed_on) for t in job.tasks}
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: drained not in {w.name for w in own.workers}, message="the loss is seen")
        assert list(results) == list(range(8)) + [100, 128]
        # nothing ran again because of the killed worker
        assert {t.id: len(t.executed_on) for t in job.tasks if t is not total} == \
            {k: v for k, v in runs_before.items() if k != "total"}
        assert total.executed_on_last() == other
