"""Poison-pill tasks: a worker lost while running a task counts against it, and at
``worker_deaths`` such losses the job fails with WorkerDied. Driven by events only."""

from __future__ import annotations

import pickle
import random
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bndl_like
from bndl_like import config
from bndl_like.execute.core import (
    CancelTask,
    EndJob,
    JobOutcome,
    MarkOutputLost,
    MarkTaskDone,
    RetryTask,
    RunTask,
    Scheduler,
    TakeBack,
    TaskFailed,
    TaskSpec,
    TaskStarted,
    TaskTakenBack,
    WorkerAdded,
    WorkerHeld,
    WorkerLost,
)
from bndl_like.execute.errors import WorkerDied
from bndl_like.execute.scheduler import worker_died

from .test_scheduler import JOB_DONE, Sim, finish, jobs, play, run, started

T = TaskSpec


def died(task_id, workers: list[str], limit: int = 2) -> EndJob:
    """The decision that ends a job when ``task_id`` was running on each of ``workers`` as it died."""
    return EndJob(JobOutcome.FAILED, task_id, None,
                  f"task {task_id!r} was running on {len(workers)} worker(s) that died "
                  f"({', '.join(workers)}), the maximum (worker_deaths={limit})", tuple(workers))


# -- the limit -------------------------------------------------------------------------------------------

def test_task_started_on_two_lost_workers_fails_the_job_with_worker_died():
    s = Scheduler([T("boom"), T("x")], ["w1", "w2", "w3"])
    assert started(s) == [RunTask("boom", "w1", 1), RunTask("x", "w2", 1)]
    assert run(s, TaskStarted("boom", "w1"), TaskStarted("x", "w2")) == []
    # the first loss re-queues it, as before (not an attempt; the run still counts up)
    assert run(s, WorkerLost("w1")) == [RunTask("boom", "w3", 2)]
    assert s.counts()["worker_deaths"] == 1 and s.counts()["failed_attempts"] == 0
    assert run(s, TaskStarted("boom", "w3")) == []
    decisions = run(s, WorkerLost("w3"))
    assert decisions == [CancelTask("x", "w2"), died("boom", ["w1", "w3"])]
    error = worker_died(decisions[-1])
    assert (error.task_id, error.worker, error.deaths, error.workers, error.exit_status) == (
        "boom", "w3", 2, ["w1", "w3"], None)
    assert s.over and s.state("boom") == "failed" and s.state("x") == "cancelled"
    assert s.counts()["worker_deaths"] == 2 and s.workers == ["w2"]
    assert s.handle(WorkerLost("w2"), WorkerAdded("w4")) == []


def test_worker_deaths_1_fails_at_the_first_loss():
    s = Scheduler([T("a"), T("b")], ["w1", "w2"], worker_deaths=1)
    started(s)
    run(s, TaskStarted("a", "w1"))
    assert run(s, WorkerLost("w1")) == [CancelTask("b", "w2"), died("a", ["w1"], 1)]
    assert s.state("a") == "failed"


def test_worker_died_wins_over_every_worker_lost_and_a_loss_below_the_limit_does_not():
    s = Scheduler([T("a")], ["w1"], worker_deaths=1)
    started(s)
    run(s, TaskStarted("a", "w1"))
    assert run(s, WorkerLost("w1")) == [died("a", ["w1"], 1)]

    s = Scheduler([T("a")], ["w1"], worker_deaths=2)
    started(s)
    run(s, TaskStarted("a", "w1"))
    (decision,) = run(s, WorkerLost("w1"))
    assert decision.task_id is None and "every worker was lost" in decision.reason
    assert s.counts()["worker_deaths"] == 1


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", None])
def test_worker_deaths_must_be_a_positive_int(value):
    with pytest.raises(ValueError, match=f"worker_deaths must be an int >= 1, got {value!r}"):
        Scheduler([T("a")], ["w1"], worker_deaths=value)


# -- what counts ------------------------------------------------------------------------------------------

def test_tasks_handed_over_but_not_started_do_not_count():
    s = Scheduler([T(t) for t in "abcd"], ["w1", "w2"], concurrency=1, prefetch=1, worker_deaths=1)
    assert started(s) == [RunTask(t, w, 1) for t, w in zip("abcd", ["w1", "w2", "w1", "w2"], strict=True)]
    # nothing started on w1: a and c go back in line, nobody died running them
    assert run(s, WorkerLost("w1")) == []
    assert s.counts()["worker_deaths"] == 0 and s.state("a") == "ready" and s.state("c") == "ready"
    assert finish(s, "b", "w2") == [MarkTaskDone("b", "w2"), RunTask("a", "w2", 2)]
    assert run(s, WorkerAdded("w3")) == [RunTask("c", "w3", 2)]
    # w2 runs d and has a prefetched: only d dies with it
    assert run(s, TaskStarted("d", "w2")) == []
    assert run(s, WorkerLost("w2")) == [CancelTask("c", "w3"), died("d", ["w2"], 1)]
    assert s.counts()["worker_deaths"] == 1 and s.state("a") == "cancelled"


def test_a_refused_take_back_means_started_and_counts():
    s = Scheduler([T("a"), T("b")], ["w1"], concurrency=1, prefetch=1)
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w1", 1)]
    assert run(s, WorkerAdded("w2")) == [TakeBack("a", "w1")]
    assert run(s, TaskTakenBack("a", "w1", False)) == [TakeBack("b", "w1")]
    assert run(s, WorkerLost("w1")) == [RunTask("a", "w2", 2), RunTask("b", "w2", 2)]  # b never started
    assert s.counts()["worker_deaths"] == 1


def test_every_task_running_on_the_lost_worker_counts_and_the_first_by_priority_is_named():
    s = Scheduler([T("a"), T("b"), T("c", locality={"w3": 1})], ["w1", "w2", "w3"], concurrency=2)
    assert started(s) == [RunTask("c", "w3", 1), RunTask("a", "w1", 1), RunTask("b", "w1", 1)]
    run(s, TaskStarted("a", "w1"), TaskStarted("b", "w1"), TaskStarted("c", "w3"))
    assert run(s, WorkerLost("w1")) == [RunTask("a", "w2", 2), RunTask("b", "w2", 2)]
    assert s.counts()["worker_deaths"] == 2
    run(s, TaskStarted("a", "w2"), TaskStarted("b", "w2"))
    assert run(s, WorkerLost("w2")) == [CancelTask("c", "w3"), died("a", ["w1", "w2"])]
    assert s.counts()["worker_deaths"] == 4
    assert [s.state(t) for t in "abc"] == ["failed", "cancelled", "cancelled"]


def test_a_task_that_died_once_then_succeeded_finishes_the_job():
    s = Scheduler([T("a")], ["w1", "w2"])
    started(s)
    run(s, TaskStarted("a", "w1"))
    assert run(s, WorkerLost("w1")) == [RunTask("a", "w2", 2)]
    assert finish(s, "a", "w2") == [MarkTaskDone("a", "w2"), JOB_DONE]
    assert s.counts()["worker_deaths"] == 1


def test_a_drained_worker_let_go_of_runs_nothing_and_nothing_counts():
    # what JobRun.drain_step does: hold, wait until nothing of the job is assigned there, then WorkerLost
    s = Scheduler([T("a"), T("b"), T("c", ("a",))], ["w1", "w2"], concurrency=1, prefetch=1, worker_deaths=1)
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w2", 1)]
    run(s, TaskStarted("a", "w1"))
    assert run(s, WorkerHeld("w1")) == []
    assert finish(s, "a", "w1") == [MarkTaskDone("a", "w1"), RunTask("c", "w2", 1)]  # w1 is held
    assert s.assigned("w1") == [] and s.outputs("w1") == ["a"]
    assert run(s, WorkerLost("w1")) == [MarkOutputLost("a", "w1")]  # c needs it; w2 is full
    assert s.counts()["worker_deaths"] == 0 and not s.over


# -- with attempts and lineage ------------------------------------------------------------------------------

def test_a_failed_attempt_and_a_death_are_counted_apart():
    err = RuntimeError("boom")
    # one failed attempt, then a death: neither limit is reached
    s = Scheduler([T("a")], ["w1", "w2", "w3"], attempts=2)
    started(s)
    run(s, TaskStarted("a", "w1"))
    assert run(s, TaskFailed("a", "w1", err)) == [RetryTask("a", "w1", err), RunTask("a", "w2", 2)]
    run(s, TaskStarted("a", "w2"))
    assert run(s, WorkerLost("w2")) == [RunTask("a", "w3", 3)]
    assert s.counts()["failed_attempts"] == 1 and s.counts()["worker_deaths"] == 1
    # the second failed attempt ends it with the task's own error
    run(s, TaskStarted("a", "w3"))
    (decision,) = run(s, TaskFailed("a", "w3", err))
    assert decision.error is err and "failed 2 time(s)" in decision.reason

    # one failed attempt, then two deaths: WorkerDied
    s = Scheduler([T("a")], ["w1", "w2", "w3"], attempts=2)
    started(s)
    run(s, TaskStarted("a", "w1"), TaskFailed("a", "w1", err))
    run(s, TaskStarted("a", "w2"))
    assert run(s, WorkerLost("w2")) == [RunTask("a", "w3", 3)]  # w1 is still banned for the retry
    run(s, TaskStarted("a", "w3"))
    assert run(s, WorkerLost("w3")) == [died("a", ["w2", "w3"])]
    assert s.counts()["failed_attempts"] == 1


def test_the_count_survives_a_success_and_the_re_run_of_a_lost_output():
    specs = [T("a"), T("b", ("a",), locality={"w3": 5}, data_locality=False)]
    s = Scheduler(specs, ["w1", "w2", "w3", "w4"])
    assert started(s) == [RunTask("a", "w1", 1)]
    run(s, TaskStarted("a", "w1"))
    assert run(s, WorkerLost("w1")) == [RunTask("a", "w2", 2)]
    assert finish(s, "a", "w2") == [MarkTaskDone("a", "w2"), RunTask("b", "w3", 1)]
    # b needs a's output, which goes with w2: a runs again, and its first death still counts
    assert run(s, WorkerLost("w2")) == [MarkOutputLost("a", "w2"), RunTask("a", "w4", 3)]
    run(s, TaskStarted("a", "w4"))
    assert run(s, WorkerLost("w4")) == [CancelTask("b", "w3"), died("a", ["w1", "w4"])]


def test_dependents_of_a_dying_task_and_lost_outputs_are_re_run_as_before():
    specs = [T("a", locality={"w1": 1}), T("b", locality={"w2": 1}), T("c", ("a", "b"))]
    s = Scheduler(specs, ["w1", "w2", "w3"])
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w2", 1)]
    finish(s, "a", "w1", 10)
    assert finish(s, "b", "w2", 1) == [MarkTaskDone("b", "w2"), RunTask("c", "w1", 1)]
    run(s, TaskStarted("c", "w1"))
    # c dies with w1 and waits for a, which runs again
    assert run(s, WorkerLost("w1")) == [MarkOutputLost("a", "w1"), RunTask("a", "w2", 2)]
    assert s.state("c") == "waiting" and s.counts()["worker_deaths"] == 1
    assert finish(s, "a", "w2") == [MarkTaskDone("a", "w2"), RunTask("c", "w2", 2)]
    run(s, TaskStarted("c", "w2"))
    # the second death ends the job: no MarkOutputLost for outputs nobody will use
    assert run(s, WorkerLost("w2")) == [died("c", ["w1", "w2"])]
    assert [s.state(t) for t in "abc"] == ["lost", "lost", "failed"]


# -- random jobs: deaths as an oracle counts them ------------------------------------------------------------

class DeathSim(Sim):
    """The random simulation, also counting which workers died while each task was started on them."""

    def __init__(self, specs, *args, worker_deaths: int, **kwargs):
        self.limit, self.deaths, self.error = worker_deaths, {}, None
        self.order = {spec.task_id: (spec.priority, i) for i, spec in enumerate(specs)}
        super().__init__(specs, *args, factory=partial(Scheduler, worker_deaths=worker_deaths), **kwargs)

    def apply(self, decisions) -> None:
        for d in decisions:
            if isinstance(d, EndJob) and d.deaths:
                assert d.outcome is JobOutcome.FAILED and d.error is None
                self.error = worker_died(d)
        super().apply(decisions)

    def lose(self, w) -> None:
        over = self.outcome is not None
        running = [t for t in self.started if self.on[t] == w]
        for t in running:
            self.deaths.setdefault(t, []).append(w)
        fatal = [t for t in running if len(self.deaths[t]) >= self.limit]
        super().lose(w)
        if over:
            return
        if fatal:  # the first of them by priority (ties: spec order) is named
            first = min(fatal, key=self.order.__getitem__)
            assert self.outcome == "failed" and self.error == WorkerDied(
                first, w, self.limit, self.deaths[first])
        else:
            assert self.error is None
        assert self.s.counts()["worker_deaths"] == sum(map(len, self.deaths.values()))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs(), st.integers(0, 2**32), st.integers(0, 400), st.integers(1, 3), st.integers(1, 3))
def test_random_jobs_fail_with_worker_died_exactly_when_a_task_reaches_the_limit(job, seed, steps, attempts,
                                                                                 worker_deaths):
    specs, workers, concurrency, prefetch = job
    sim = DeathSim(specs, workers, concurrency=concurrency, prefetch=prefetch, attempts=attempts,
                   worker_deaths=worker_deaths)
    play(sim, random.Random(seed), steps, attempts=attempts, must_finish=False)
    assert sim.outcome in ("done", "failed", "cancelled")
    assert (sim.error is not None) == any(len(w) >= worker_deaths for w in sim.deaths.values())


# -- WorkerDied and the options ------------------------------------------------------------------------------

def test_worker_died_message_is_built_from_its_attributes_when_shown():
    error = WorkerDied("boom", "host.124.1", 2, ["host.123.1", "host.124.1"])
    assert str(error) == ("task 'boom' was running on worker host.124.1 when it died (exit status unknown); "
                          "2 workers died running it (host.123.1, host.124.1), the limit is "
                          "execute.worker_deaths=2")
    error.exit_status = "killed by SIGKILL"  # what the shell fills in once it knows
    assert str(error) == ("task 'boom' was running on worker host.124.1 when it died (killed by SIGKILL); "
                          "2 workers died running it (host.123.1, host.124.1), the limit is "
                          "execute.worker_deaths=2")
    one = WorkerDied(7, "w1", 1, exit_status="exited with code 3")
    assert one.workers == ["w1"]
    assert str(one) == ("task 7 was running on worker w1 when it died (exited with code 3); 1 worker died "
                        "running it (w1), the limit is execute.worker_deaths=1")


def test_worker_died_pickles_with_its_attributes_and_is_exported():
    error = WorkerDied(("stage", 3), "w2", 2, ["w1", "w2"], "killed by SIGSEGV")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is WorkerDied and copy == error and str(copy) == str(error)
    assert (copy.task_id, copy.worker, copy.deaths, copy.workers, copy.exit_status) == (
        ("stage", 3), "w2", 2, ["w1", "w2"], "killed by SIGSEGV")
    assert copy != WorkerDied(("stage", 3), "w2", 2, ["w1", "w2"]) and hash(copy) == hash(error)
    assert isinstance(error, Exception) and not isinstance(error, bndl_like.WorkersLost)
    assert bndl_like.WorkerDied is WorkerDied and "WorkerDied" in bndl_like.__all__


def test_options(monkeypatch):
    monkeypatch.delenv("BNDL_LIKE_EXECUTE_WORKER_DEATHS", raising=False)
    monkeypatch.delenv("BNDL_LIKE_EXECUTE_KEEP_JOBS", raising=False)
    assert config.get("execute.worker_deaths") == 2 and config.get("execute.keep_jobs") == 100
    assert config.get("execute.worker_deaths", 5) == 5 and config.get("execute.keep_jobs", 0) == 0
    monkeypatch.setenv("BNDL_LIKE_EXECUTE_WORKER_DEATHS", "3")
    assert config.get("execute.worker_deaths") == 3
    with pytest.raises(ValueError, match=r"execute.worker_deaths \(argument\): 0: must be >= 1"):
        config.get("execute.worker_deaths", 0)
    with pytest.raises(ValueError, match=r"execute.keep_jobs \(argument\): -1: must be >= 0"):
        config.get("execute.keep_jobs", -1)


def test_a_worker_lost_before_any_start_makes_suspects_counted_at_the_next_death():
    from bndl_like.execute import scheduler as S
    sched = S.Scheduler([S.TaskSpec("pill"), S.TaskSpec("other")], ["w1", "w2"], suspects=True)
    first = sched.start()
    where = {d.task_id: d.worker for d in first if type(d) is S.RunTask}
    victim = where["pill"]
    sched.handle(S.WorkerLost(victim))  # died before reporting a start
    sched.validate_state()
    assert sched.suspect("pill")
    sched.handle(S.WorkerAdded(victim + "b"))
    holder = next((w for w in sched.workers if "pill" in sched.assigned(w)), None)
    assert holder is not None
    out = sched.handle(S.TaskStarted("pill", holder), S.WorkerLost(holder))
    failed = [d for d in out if type(d) is S.JobFailed]
    assert failed and isinstance(failed[0].error, WorkerDied)
    assert failed[0].error.task_id == "pill" and failed[0].error.workers == [victim, holder]
    sched.validate_state()


def test_without_suspects_an_unreported_start_counts_nothing():
    from bndl_like.execute import scheduler as S
    sched = S.Scheduler([S.TaskSpec("t")], ["w1", "w2"])
    holder = next(d.worker for d in sched.start() if type(d) is S.RunTask)
    sched.handle(S.WorkerLost(holder))
    assert not sched.suspect("t") and sched.counts()["worker_deaths"] == 0


def test_a_task_whose_worker_died_runs_next_with_a_confirmed_start():
    # its next death may come before a batched start notice leaves the worker: it must be counted
    from bndl_like.execute import scheduler as S
    sched = S.Scheduler([S.TaskSpec("pill"), S.TaskSpec("other")], ["w1", "w2"], suspects=True)
    where = {d.task_id: d.worker for d in sched.start() if type(d) is S.RunTask}
    victim = where["pill"]
    assert not sched.suspect("pill")
    sched.handle(S.TaskStarted("pill", victim), S.WorkerLost(victim))
    assert sched.suspect("pill") and sched.counts()["worker_deaths"] == 1
    sched.validate_state()
    without = S.Scheduler([S.TaskSpec("pill")], ["w1", "w2"])
    holder = next(d.worker for d in without.start() if type(d) is S.RunTask)
    without.handle(S.TaskStarted("pill", holder), S.WorkerLost(holder))
    assert not without.suspect("pill")


def test_tasks_held_without_a_known_start_are_suspects_when_another_one_started():
    # the worker ran 'first', then 'pill' ended it before its start (and the end of 'first')
    # left: 'first' counts a death, 'pill' is a suspect; its own death then counts both
    from bndl_like.execute import scheduler as S
    sched = S.Scheduler([S.TaskSpec("first"), S.TaskSpec("pill")], ["w1"], prefetch=1,
                        suspects=True)
    run = [d for d in sched.start() if type(d) is S.RunTask]
    assert [(d.task_id, d.worker) for d in run] == [("first", "w1"), ("pill", "w1")]
    sched.handle(S.WorkerAdded("w2"))
    sched.handle(S.TaskStarted("first", "w1"), S.WorkerLost("w1"))
    sched.validate_state()
    assert sched.suspect("first") and sched.suspect("pill")
    assert sched.counts()["worker_deaths"] == 1
    out = sched.handle(S.TaskStarted("first", "w2"), S.TaskSucceeded("first", "w2", 1),
                       S.TaskStarted("pill", "w2"), S.WorkerLost("w2"))
    failed = [d for d in out if type(d) is S.JobFailed]
    assert failed and failed[0].error.task_id == "pill" and failed[0].error.workers == ["w1", "w2"]
    sched.validate_state()
