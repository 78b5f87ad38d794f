"""The scheduler core, driven by events only: no network, no threads, no sleeps."""

from __future__ import annotations

import random
import time
import tracemalloc
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bndl_like.execute.core import (
    CancelJob,
    CancelTask,
    EndJob,
    JobOutcome,
    MarkOutputLost,
    MarkTaskDone,
    RetryTask,
    RunTask,
    Scheduler,
    TakeBack,
    TaskDependenciesFailed,
    TaskFailed,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    TaskTakenBack,
    WorkerAdded,
    WorkerHeld,
    WorkerLost,
    WorkerResumed,
)

T = TaskSpec
JOB_DONE = EndJob(JobOutcome.DONE)


def run(s: Scheduler, *events) -> list:
    """Feed events and check the invariants afterwards."""
    decisions = s.handle(*events)
    s.validate_state()
    return decisions


def finish(s: Scheduler, task, worker, nbytes: int = 0) -> list:
    return run(s, TaskStarted(task, worker), TaskSucceeded(task, worker, nbytes))


def started(s: Scheduler) -> list:
    decisions = s.start()
    s.validate_state()
    return decisions


def snapshot(s: Scheduler, ids) -> tuple:
    return (s.counts(), [s.state(t) for t in ids], {w: s.assigned(w) for w in s.workers}, s.workers)


# -- the basics --------------------------------------------------------------------------------------

def test_diamond():
    s = Scheduler([T("a"), T("b", ("a",)), T("c", ("a",)), T("d", ("b", "c"))], ["w1", "w2"])
    assert started(s) == [RunTask("a", "w1", 1)]
    assert s.state("a") == "assigned" and s.state("d") == "waiting"
    # b and c both prefer w1 (it holds a); b gets it, c goes to the idle w2
    assert finish(s, "a", "w1", 100) == [
        MarkTaskDone("a", "w1"), RunTask("b", "w1", 1), RunTask("c", "w2", 1)]
    assert finish(s, "b", "w1", 10) == [MarkTaskDone("b", "w1")]
    assert s.state("d") == "waiting"
    assert finish(s, "c", "w2", 20) == [MarkTaskDone("c", "w2"), RunTask("d", "w2", 1)]  # w2 holds more bytes
    assert finish(s, "d", "w2") == [MarkTaskDone("d", "w2"), JOB_DONE]
    assert s.over and s.counts()["done"] == 4 and s.counts()["pending"] == 0
    assert s.handle(TaskSucceeded("d", "w2")) == []


def test_empty_job_is_done_at_start():
    s = Scheduler([], ["w1"])
    assert s.start() == [JOB_DONE]
    assert s.over and s.start() == []


def test_priorities_lower_first_ties_in_spec_order():
    s = Scheduler([T("a", priority=3), T("b", priority=1), T("c", priority=2), T("d", priority=1)], ["w1"])
    order = [started(s)[0].task_id]
    while not s.over:
        decisions = finish(s, order[-1], "w1")
        order += [d.task_id for d in decisions if isinstance(d, RunTask)]
    assert order == ["b", "d", "c", "a"]


def test_priorities_may_be_any_comparable_values():
    s = Scheduler([T("a", priority=("z", 0)), T("b", priority=("a", 1))], ["w1"])
    assert started(s) == [RunTask("b", "w1", 1)]


# -- locality ----------------------------------------------------------------------------------------

def test_locality_preferred_worker_gets_the_task():
    specs = [T("a", locality={"w3": 1}), T("b", locality={"w2": 1, "w3": 2}), T("c")]
    s = Scheduler(specs, ["w1", "w2", "w3"])
    # a takes w3; b's best (w3) is busy so it takes w2; c goes to the idle w1
    assert started(s) == [RunTask("a", "w3", 1), RunTask("b", "w2", 1), RunTask("c", "w1", 1)]


def test_free_worker_takes_from_its_locality_queue_before_the_global_queue():
    specs = [T("a", locality={"w2": 1}), T("b", locality={"w2": 1}), T("d"), T("c", locality={"w2": 2})]
    s = Scheduler(specs, ["w1", "w2"])
    assert started(s) == [RunTask("a", "w2", 1), RunTask("b", "w1", 1)]
    # d has the better priority, but w2 takes c from its own locality queue
    assert finish(s, "a", "w2") == [MarkTaskDone("a", "w2"), RunTask("c", "w2", 1)]
    assert finish(s, "b", "w1") == [MarkTaskDone("b", "w1"), RunTask("d", "w1", 1)]


def test_worker_joining_later_gets_the_tasks_that_prefer_it():
    s = Scheduler([T("x"), T("b"), T("a", locality={"w2": 1})], ["w1"])
    assert started(s) == [RunTask("x", "w1", 1)]
    assert run(s, WorkerAdded("w2")) == [RunTask("a", "w2", 1)]  # not b, which has the better priority


def test_forbidden_worker_never_runs_the_task_and_the_job_waits_for_another():
    s = Scheduler([T("a", locality={"w1": -1}), T("b")], ["w1"])
    assert started(s) == [RunTask("b", "w1", 1)]
    assert finish(s, "b", "w1") == [MarkTaskDone("b", "w1")]
    assert s.state("a") == "ready" and not s.over
    assert run(s, WorkerAdded("w2")) == [RunTask("a", "w2", 1)]


@pytest.mark.parametrize("where, sizes, data_locality, expected", [
    ("w1 w2 w3", (10, 1000, 10), True, "w2"),   # most bytes
    ("w3 w3 w1", (5, 5, 10), True, "w3"),       # byte tie: w3 holds two outputs
    ("w1 w2 w3", (10, 1000, 10), False, "w1"),  # no data locality: first free worker
])
def test_data_locality_by_nbytes(where, sizes, data_locality, expected):
    where, sizes = dict(zip("abc", where.split(), strict=True)), dict(zip("abc", sizes, strict=True))
    specs = [T(t, locality={where[t]: 1}, data_locality=False) for t in "abc"]
    specs.append(T("d", ("a", "b", "c"), data_locality=data_locality))
    s = Scheduler(specs, ["w1", "w2", "w3"], concurrency=2)
    started(s)
    decisions = []
    for t in "abc":
        decisions += finish(s, t, where[t], sizes[t])
    assert [d for d in decisions if isinstance(d, RunTask)] == [RunTask("d", expected, 1)]


def test_data_locality_never_overrides_a_forbidden_worker():
    specs = [T("a", locality={"w1": 1}), T("b", ("a",), locality={"w1": -1})]
    s = Scheduler(specs, ["w1", "w2"])
    assert started(s) == [RunTask("a", "w1", 1)]
    assert finish(s, "a", "w1", 10**9) == [MarkTaskDone("a", "w1"), RunTask("b", "w2", 1)]


# -- slots ---------------------------------------------------------------------------------------------

def test_concurrency_cap_and_prefetch():
    s = Scheduler([T(f"t{i}") for i in range(8)], ["w1", "w2"], concurrency=2, prefetch=1)
    # run slots on every worker first, then the prefetch slots
    assert started(s) == [RunTask(t, w, 1) for t, w in zip(
        ["t0", "t1", "t2", "t3", "t4", "t5"], ["w1", "w1", "w2", "w2", "w1", "w2"], strict=True)]
    assert s.assigned("w1") == ["t0", "t1", "t4"]
    assert run(s, TaskStarted("t0", "w1"), TaskStarted("t1", "w1")) == []
    assert s.state("t0") == "running" and s.state("t4") == "assigned" and s.counts()["running"] == 2
    assert run(s, TaskSucceeded("t0", "w1")) == [MarkTaskDone("t0", "w1"), RunTask("t6", "w1", 1)]
    assert s.counts()["assigned"] == 6


def test_prefetch_slots_fill_after_every_run_slot():
    s = Scheduler([T("a"), T("b")], ["w1", "w2"], concurrency=1, prefetch=3)
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w2", 1)]


def test_no_take_back_of_a_task_the_worker_is_about_to_start():
    s = Scheduler([T("a")], ["w1", "w2"])
    assert started(s) == [RunTask("a", "w1", 1)]  # w2 idle, but a is not waiting behind anything
    assert run(s, WorkerAdded("w3")) == []


# -- take-back -----------------------------------------------------------------------------------------

def prefetched():
    """w1 runs a and has b and c prefetched; w2 joins with nothing ready."""
    s = Scheduler([T("a"), T("b"), T("c")], ["w1"], concurrency=1, prefetch=2)
    assert started(s) == [RunTask(t, "w1", 1) for t in "abc"]
    assert run(s, TaskStarted("a", "w1")) == []
    assert run(s, WorkerAdded("w2")) == [TakeBack("b", "w1")]
    assert run(s, TaskStarted("a", "w1")) == []  # no second TakeBack while one is outstanding
    return s


def test_take_back_ok_runs_the_task_on_the_idle_worker():
    s = prefetched()
    # taking back is not an attempt: b runs with attempt 1
    assert run(s, TaskTakenBack("b", "w1", True)) == [RunTask("b", "w2", 1)]
    assert s.assigned("w1") == ["a", "c"] and s.assigned("w2") == ["b"]
    assert s.counts()["taken_back"] == 1


def test_take_back_refused_changes_nothing_but_the_next_task_is_asked_for():
    s = prefetched()
    assert run(s, TaskTakenBack("b", "w1", False)) == [TakeBack("c", "w1")]
    assert s.state("b") == "running" and s.assigned("w1") == ["a", "b", "c"]
    assert finish(s, "c", "w1") == [MarkTaskDone("c", "w1")]
    assert run(s, TaskTakenBack("c", "w1", True)) == []  # late answer for a finished task


def test_take_back_is_not_an_attempt_but_a_loss_is():
    s = Scheduler([T("a"), T("b")], ["w1"], concurrency=1, prefetch=1)
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w1", 1)]
    assert run(s, WorkerAdded("w2")) == [TakeBack("a", "w1")]
    assert run(s, TaskTakenBack("a", "w1", True)) == [RunTask("a", "w2", 1)]
    assert run(s, WorkerLost("w2")) == [RunTask("a", "w1", 2)]


def test_held_worker_gives_back_prefetched_tasks_and_gets_nothing_until_released():
    s = Scheduler([T(t) for t in "abcdef"], ["w1", "w2"], concurrency=1, prefetch=1)
    assert started(s) == [RunTask(t, w, 1) for t, w in zip("abcd", ["w1", "w2", "w1", "w2"], strict=True)]
    assert run(s, TaskStarted("a", "w1")) == []
    assert run(s, WorkerHeld("w1")) == [TakeBack("c", "w1")]
    assert run(s, TaskTakenBack("c", "w1", True)) == []  # w2 is full, w1 is held
    assert s.state("c") == "ready"
    assert finish(s, "a", "w1") == [MarkTaskDone("a", "w1")]
    assert s.assigned("w1") == []
    assert run(s, WorkerResumed("w1")) == [RunTask("c", "w1", 1), RunTask("e", "w1", 1)]


# -- failures ------------------------------------------------------------------------------------------

def test_retry_forbids_the_failed_worker_then_fails_the_job_after_attempts():
    err = RuntimeError("boom")
    s = Scheduler([T("a")], ["w1", "w2"], attempts=3)
    assert started(s) == [RunTask("a", "w1", 1)]
    assert run(s, TaskFailed("a", "w1", err)) == [RetryTask("a", "w1", err), RunTask("a", "w2", 2)]
    # w1 is forbidden now, so no other worker could take it: retry on w2 again
    assert run(s, TaskFailed("a", "w2", err)) == [RetryTask("a", "w2", err), RunTask("a", "w2", 3)]
    decisions = run(s, TaskFailed("a", "w2", err))
    assert len(decisions) == 1 and decisions[0].outcome is JobOutcome.FAILED
    assert decisions[0].task_id == "a" and decisions[0].error is err
    assert "'a'" in decisions[0].reason and "3" in decisions[0].reason
    assert s.over and s.state("a") == "failed"
    assert s.counts()["failed_attempts"] == 3 and s.counts()["retried"] == 2


def test_retry_ban_is_lifted_when_the_other_workers_are_lost():
    err = RuntimeError("boom")
    s = Scheduler([T("a"), T("b")], ["w1", "w2"], attempts=3)
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w2", 1)]
    assert run(s, TaskFailed("a", "w1", err)) == [RetryTask("a", "w1", err)]
    assert s.state("a") == "ready"  # w1 is banned for a, w2 is busy
    assert run(s, WorkerLost("w2")) == [RunTask("a", "w1", 2)]


def test_retry_ban_is_lifted_when_only_the_banned_worker_comes_back():
    s = Scheduler([T("a", locality={"w3": -1}), T("b")], ["w1", "w2", "w3"], attempts=3)
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w2", 1)]
    assert run(s, TaskFailed("a", "w1", None)) == [RetryTask("a", "w1", None)]
    assert run(s, WorkerLost("w1")) == []
    assert run(s, WorkerLost("w2")) == [RunTask("b", "w3", 2)]
    assert s.state("a") == "ready"  # only w2 was allowed; it is gone: wait for a worker
    assert run(s, WorkerAdded("w1")) == [RunTask("a", "w1", 2)]


def test_no_ban_when_the_other_workers_are_held():
    s = Scheduler([T("a")], ["w1", "w2"], attempts=2)
    started(s)
    run(s, WorkerHeld("w2"))
    assert run(s, TaskFailed("a", "w1", None)) == [RetryTask("a", "w1", None), RunTask("a", "w1", 2)]


def test_retry_bans_do_not_outlive_a_success():
    specs = [T("a", locality={"w3": -1}), T("b", ("a",), locality={"w2": 1}, data_locality=False)]
    s = Scheduler(specs, ["w1", "w2", "w3"], attempts=3)
    assert started(s) == [RunTask("a", "w1", 1)]
    assert run(s, TaskFailed("a", "w1", None)) == [RetryTask("a", "w1", None), RunTask("a", "w2", 2)]
    assert finish(s, "a", "w2") == [MarkTaskDone("a", "w2"), RunTask("b", "w2", 1)]
    # a's output on w2 is gone; w1 may run it again (w3 may not, w2 is busy)
    assert run(s, TaskDependenciesFailed("b", "w2", {"w2": ["a"]})) == [
        MarkOutputLost("a", "w2"), RunTask("a", "w1", 3)]


def test_failure_that_cannot_be_retried_fails_the_job_at_once():
    s = Scheduler([T("a"), T("b")], ["w1", "w2"], attempts=5)
    started(s)
    decisions = run(s, TaskFailed("a", "w1", TypeError("cannot pickle"), retry=False))
    assert decisions[0] == CancelTask("b", "w2") and decisions[1].outcome is JobOutcome.FAILED
    assert "cannot be retried" in decisions[1].reason and s.over


def test_single_worker_retries_on_the_same_worker():
    err = ValueError("x")
    s = Scheduler([T("a")], ["w1"], attempts=2)
    started(s)
    assert run(s, TaskFailed("a", "w1", err)) == [RetryTask("a", "w1", err), RunTask("a", "w1", 2)]
    assert finish(s, "a", "w1") == [MarkTaskDone("a", "w1"), JOB_DONE]


def test_failed_job_cancels_the_other_assigned_tasks():
    s = Scheduler([T("a"), T("b"), T("c", ("a",))], ["w1", "w2"])
    started(s)
    decisions = run(s, TaskFailed("a", "w1", None))
    assert decisions[0] == CancelTask("b", "w2") and decisions[1].outcome is JobOutcome.FAILED
    assert len(decisions) == 2
    assert [s.state(t) for t in "abc"] == ["failed", "cancelled", "waiting"]


def test_dependencies_failed_chain_is_discovered_in_two_rounds():
    specs = [T("a", locality={"w1": 1}), T("b", ("a",), locality={"w1": 1}),
             T("c", ("b",), locality={"w2": 1}, data_locality=False)]
    s = Scheduler(specs, ["w1", "w2"])
    assert started(s) == [RunTask("a", "w1", 1)]
    assert finish(s, "a", "w1") == [MarkTaskDone("a", "w1"), RunTask("b", "w1", 1)]
    assert finish(s, "b", "w1") == [MarkTaskDone("b", "w1"), RunTask("c", "w2", 1)]
    # w1 cannot serve b: b runs again; a's output is believed fine for now
    assert run(s, TaskDependenciesFailed("c", "w2", {"w1": ["b"]})) == [
        MarkOutputLost("b", "w1"), RunTask("b", "w1", 2)]
    assert s.state("c") == "waiting" and s.state("a") == "done"
    # round two: a is gone too
    assert run(s, TaskDependenciesFailed("b", "w1", {"w1": ["a"]})) == [
        MarkOutputLost("a", "w1"), RunTask("a", "w1", 2)]
    assert finish(s, "a", "w1") == [MarkTaskDone("a", "w1"), RunTask("b", "w1", 3)]
    assert finish(s, "b", "w1") == [MarkTaskDone("b", "w1"), RunTask("c", "w2", 2)]
    assert finish(s, "c", "w2") == [MarkTaskDone("c", "w2"), JOB_DONE]
    assert s.counts()["failed_attempts"] == 0 and s.counts()["dependencies_lost"] == 2


def test_dependencies_failed_for_an_output_that_is_elsewhere_just_runs_again():
    specs = [T("a", locality={"w1": 1}), T("b", ("a",), locality={"w2": 1}, data_locality=False)]
    s = Scheduler(specs, ["w1", "w2", "w3"])
    started(s)
    finish(s, "a", "w1")
    assert s.assigned("w2") == ["b"]
    assert run(s, WorkerLost("w1")) == [MarkOutputLost("a", "w1"), RunTask("a", "w3", 2)]
    assert finish(s, "a", "w3") == [MarkTaskDone("a", "w3")]
    assert run(s, TaskDependenciesFailed("b", "w2", {"w1": ["a"]})) == [RunTask("b", "w2", 2)]


def test_dependencies_failed_too_often_fails_the_job():
    specs = [T("a", locality={"w1": 1}), T("b", ("a",), locality={"w2": 1}, data_locality=False)]
    s = Scheduler(specs, ["w1", "w2"])
    started(s)
    assert finish(s, "a", "w1") == [MarkTaskDone("a", "w1"), RunTask("b", "w2", 1)]
    for attempt in range(2, 12):  # the holder named is not where a's output is: nothing is lost
        (decision,) = run(s, TaskDependenciesFailed("b", "w2", {"w9": ["a"]}))
        assert decision == RunTask("b", "w2", attempt)
    (decision,) = run(s, TaskDependenciesFailed("b", "w2", {"w9": ["a"]}))
    assert decision.outcome is JobOutcome.FAILED and decision.task_id == "b"
    assert "could not fetch" in decision.reason and "['a']" in decision.reason and "w9" in decision.reason
    assert s.counts()["failed_attempts"] == 0


# -- worker loss -----------------------------------------------------------------------------------------

def test_worker_lost_reruns_needed_outputs_and_requeues_its_tasks():
    specs = [T("a", locality={"w1": 1}), T("b", locality={"w2": 1}), T("c", ("a", "b")), T("d", ("c",))]
    s = Scheduler(specs, ["w1", "w2"])
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w2", 1)]
    finish(s, "a", "w1", 10)
    assert finish(s, "b", "w2", 1) == [MarkTaskDone("b", "w2"), RunTask("c", "w1", 1)]
    assert run(s, WorkerLost("w1")) == [MarkOutputLost("a", "w1"), RunTask("a", "w2", 2)]
    assert s.state("c") == "waiting" and s.workers == ["w2"]
    assert finish(s, "a", "w2") == [MarkTaskDone("a", "w2"), RunTask("c", "w2", 2)]
    assert finish(s, "c", "w2") == [MarkTaskDone("c", "w2"), RunTask("d", "w2", 1)]
    assert finish(s, "d", "w2") == [MarkTaskDone("d", "w2"), JOB_DONE]


def test_worker_lost_outputs_no_longer_needed_are_not_rerun():
    specs = [T("a", locality={"w1": 1}), T("b", ("a",)), T("c", locality={"w2": 1})]
    s = Scheduler(specs, ["w1", "w2"])
    assert started(s) == [RunTask("a", "w1", 1), RunTask("c", "w2", 1)]
    assert finish(s, "a", "w1") == [MarkTaskDone("a", "w1"), RunTask("b", "w1", 1)]
    assert finish(s, "b", "w1") == [MarkTaskDone("b", "w1")]
    assert run(s, WorkerLost("w1")) == []
    assert s.state("a") == "lost" and s.state("b") == "lost" and s.location("a") is None
    assert finish(s, "c", "w2") == [MarkTaskDone("c", "w2"), JOB_DONE]


def test_worker_lost_ready_dependents_wait_again():
    specs = [T("x", locality={"w2": 1}), T("a", locality={"w1": 1}), T("b1", ("a",)), T("b2", ("a",))]
    s = Scheduler(specs, ["w1", "w2"])
    assert started(s) == [RunTask("x", "w2", 1), RunTask("a", "w1", 1)]
    assert finish(s, "a", "w1") == [MarkTaskDone("a", "w1"), RunTask("b1", "w1", 1)]
    assert s.state("b2") == "ready"
    assert run(s, WorkerLost("w1")) == [MarkOutputLost("a", "w1")]
    assert s.state("b1") == "waiting" and s.state("b2") == "waiting" and s.state("a") == "ready"
    assert finish(s, "x", "w2") == [MarkTaskDone("x", "w2"), RunTask("a", "w2", 2)]


def test_tasks_naming_the_same_dependencies_share_one_group_through_losses():
    # a shuffle: c1..c3 all name (p1, p2) -- one group; p2's output is lost twice
    specs = [T("p1", locality={"w1": 1}), T("p2", locality={"w2": 1}),
             *(T(f"c{i}", ("p1", "p2")) for i in (1, 2, 3)), T("x", locality={"w3": 1})]
    s = Scheduler(specs, ["w1", "w2", "w3"], concurrency=1)
    assert started(s) == [RunTask("p1", "w1", 1), RunTask("p2", "w2", 1), RunTask("x", "w3", 1)]
    finish(s, "p1", "w1", 5)
    assert [s.state(c) for c in ("c1", "c2", "c3")] == ["waiting"] * 3
    # all three become ready at once, and prefer the worker holding more input bytes (w2)
    assert finish(s, "p2", "w2", 50) == [MarkTaskDone("p2", "w2"), RunTask("c1", "w2", 1),
                                         RunTask("c2", "w1", 1)]
    finish(s, "c1", "w2")
    assert s.state("c3") == "assigned"  # (c3 followed c1 on w2)
    assert run(s, TaskStarted("c3", "w2")) == []
    # w1 holds p1's output and runs c2: lost; p1 re-runs once for the group, c2 waits again
    assert run(s, WorkerLost("w1")) == [MarkOutputLost("p1", "w1")]  # (w2 and w3 are busy)
    assert s.state("c2") == "waiting" and s.state("p1") == "ready"
    # a failed fetch by c3 of p2 from w2 is checked against the group's dependencies
    with pytest.raises(ValueError, match="not a dependency"):
        s.handle(TaskDependenciesFailed("c3", "w2", {"w2": ["x"]}))
    assert run(s, TaskDependenciesFailed("c3", "w2", {"w2": ["p2"]})) == [
        MarkOutputLost("p2", "w2"), RunTask("p2", "w2", 2)]
    assert s.state("c3") == "waiting" and s.state("c1") == "done"
    # p2 back on w2, which then takes p1: the group waits for both
    assert finish(s, "p2", "w2", 50) == [MarkTaskDone("p2", "w2"), RunTask("p1", "w2", 2)]
    assert s.state("c2") == "waiting" and s.state("c3") == "waiting"
    # p1 back: both tasks of the group left are ready at once (c2 on w2, c3 queued behind it)
    assert finish(s, "p1", "w2", 5) == [MarkTaskDone("p1", "w2"), RunTask("c2", "w2", 2)]
    assert s.state("c3") == "ready"
    for _ in range(10):
        if s.over:
            break
        for w in s.workers:
            for t in s.assigned(w):
                finish(s, t, w)
    assert s.over and s.counts()["done"] == 6


def test_dependents_running_elsewhere_are_left_alone():
    specs = [T("a", locality={"w1": 1}), T("b", ("a",), locality={"w2": 5})]
    s = Scheduler(specs, ["w1", "w2", "w3"])
    started(s)
    assert finish(s, "a", "w1") == [MarkTaskDone("a", "w1"), RunTask("b", "w2", 1)]
    assert run(s, TaskStarted("b", "w2")) == []
    assert run(s, WorkerLost("w1")) == [MarkOutputLost("a", "w1"), RunTask("a", "w3", 2)]
    assert s.state("b") == "running"
    # b had fetched a already: the re-run of a is no longer needed
    assert run(s, TaskSucceeded("b", "w2")) == [MarkTaskDone("b", "w2"), CancelTask("a", "w3"), JOB_DONE]
    assert s.state("a") == "lost" and s.state("b") == "done"


def test_late_events_for_tasks_run_elsewhere_are_ignored():
    s = Scheduler([T("a"), T("b", ("a",))], ["w1", "w2"])
    started(s)
    assert run(s, WorkerLost("w1")) == [RunTask("a", "w2", 2)]
    before = snapshot(s, "ab")
    for late in (TaskSucceeded("a", "w1", 5), TaskFailed("a", "w1", None), TaskStarted("a", "w1"),
                 TaskDependenciesFailed("a", "w1", {}), TaskTakenBack("a", "w1", True),
                 WorkerLost("nobody"), WorkerHeld("nobody"), WorkerResumed("nobody")):
        assert run(s, late) == []
        assert snapshot(s, "ab") == before
    assert run(s, WorkerAdded("w1")) == []
    assert run(s, TaskSucceeded("a", "w1")) == []
    assert s.state("a") == "assigned" and s.assigned("w2") == ["a"]


def test_workers_joining_mid_job_get_work():
    s = Scheduler([T(t) for t in "abcd"], ["w1"])
    assert started(s) == [RunTask("a", "w1", 1)]
    assert run(s, WorkerAdded("w2")) == [RunTask("b", "w2", 1)]
    assert run(s, WorkerAdded("w2")) == []  # already there
    assert run(s, WorkerLost("w2")) == []   # b waits: w1 is busy
    assert s.state("b") == "ready"
    assert run(s, WorkerAdded("w2")) == [RunTask("b", "w2", 2)]


def test_job_fails_when_every_worker_is_lost():
    s = Scheduler([T("a"), T("b")], ["w1", "w2"])
    started(s)
    assert run(s, WorkerLost("w1")) == []
    (decision,) = run(s, WorkerLost("w2"))
    assert decision.task_id is None and decision.error is None
    assert "every worker was lost" in decision.reason
    assert s.over and s.handle(WorkerAdded("w3")) == []


def test_cancel_job():
    s = Scheduler([T("a"), T("b"), T("c")], ["w1", "w2"])
    started(s)
    assert run(s, CancelJob()) == [CancelTask("a", "w1"), CancelTask("b", "w2"), EndJob(JobOutcome.CANCELLED)]
    assert s.over and [s.state(t) for t in "abc"] == ["cancelled", "cancelled", "ready"]
    assert s.handle(TaskSucceeded("a", "w1"), CancelJob()) == []


# -- programming errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("specs, kwargs, message", [
    ([T("a"), T("a")], {}, "duplicate task id 'a'"),
    ([T("a", ("zz",))], {}, "task 'a' depends on unknown task 'zz'"),
    ([T("a", ("a",))], {}, "cycle.*'a' -> 'a'"),
    ([T("a"), T("b", ("a",))], {"concurrency": 0}, "concurrency must be an int >= 1, got 0"),
    ([T("a")], {"prefetch": -1}, "prefetch must be an int >= 0, got -1"),
    ([T("a")], {"attempts": 0}, "attempts must be an int >= 1, got 0"),
    ([T("a", priority=1), T("b", priority="x")], {}, "mutually comparable"),
])
def test_construction_errors(specs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scheduler(specs, ["w1"], **kwargs)


def test_cycle_error_names_the_tasks_in_the_cycle():
    specs = [T("x"), T("a", ("b", "x")), T("b", ("c",)), T("c", ("a",)), T("d", ("a",))]
    with pytest.raises(ValueError, match="cycle") as info:
        Scheduler(specs)
    message = str(info.value)
    assert all(repr(t) in message for t in "abc") and "'x'" not in message and "'d'" not in message


def test_events_for_unknown_tasks_raise_and_change_nothing():
    s = Scheduler([T("a"), T("b", ("a",))], ["w1"])
    started(s)
    before = snapshot(s, "ab")
    with pytest.raises(ValueError, match="unknown task id 'zz'"):
        s.handle(TaskSucceeded("a", "w1"), TaskSucceeded("zz", "w1"))
    with pytest.raises(ValueError, match="not a dependency"):
        s.handle(TaskDependenciesFailed("a", "w1", {"w1": ["b"]}))
    with pytest.raises(TypeError):
        s.handle("a")
    assert snapshot(s, "ab") == before
    s.validate_state()


# -- the property test: random DAGs, random interleavings ---------------------------------------------

UNIVERSE = ["w0", "w1", "w2", "w3"]


class Sim:
    """Plays the shell and the workers: applies the decisions, checks each against the rules and
    answers with the events a real cluster could send."""

    def __init__(self, specs, workers, *, concurrency=1, prefetch=0, attempts=1, check=True,
                 factory=Scheduler):
        self.specs = {spec.task_id: spec for spec in specs}
        self.cap, self.concurrency, self.check = concurrency + prefetch, concurrency, check
        self.s = factory(specs, workers, concurrency=concurrency, prefetch=prefetch, attempts=attempts)
        self.live, self.held = set(workers), set()
        self.on: dict = {}           # task -> worker, as the decisions say
        self.started: set = set()
        self.store = {w: set() for w in workers}  # outputs each live worker keeps
        self.avail: dict = {}        # task -> holder of its output (scheduler's view, from decisions)
        self.fetch: dict = {}        # task -> {dependency: holder} when it was sent
        self.takebacks: dict = {}    # task -> worker asked to give it back
        self.attempt: dict = {}
        self.taken_back: set = set()
        self.history: set = set()    # (task, worker) pairs ever assigned
        self.succeeded: set = set()
        self.failures: dict = {}
        self.outcome = None
        self.steps = 0
        self.apply(self.s.start())

    # the shell: apply decisions
    def apply(self, decisions) -> None:
        for d in decisions:
            assert self.outcome is None, f"decision after the end of the job: {d}"
            if isinstance(d, RunTask):
                t, w = d.task_id, d.worker
                assert t not in self.on, f"{t} assigned to {w} while on {self.on.get(t)}"
                assert w in self.live and w not in self.held, f"{t} sent to unavailable {w}"
                assert (self.specs[t].locality or {}).get(w, 0) >= 0, f"{t} sent to forbidden {w}"
                assert all(dep in self.avail for dep in self.specs[t].dependencies), f"{t} ran too early"
                previous = self.attempt.get(t, 0)
                assert d.attempt == (previous if t in self.taken_back else previous + 1), d
                self.taken_back.discard(t)
                self.attempt[t] = d.attempt
                self.on[t] = w
                assert sum(x == w for x in self.on.values()) <= self.cap, f"{w} over its slots"
                self.fetch[t] = {dep: self.avail[dep] for dep in self.specs[t].dependencies}
                self.history.add((t, w))
            elif isinstance(d, TakeBack):
                assert self.on.get(d.task_id) == d.worker and d.task_id not in self.takebacks, d
                self.takebacks[d.task_id] = d.worker
            elif isinstance(d, CancelTask):
                assert self.on.get(d.task_id) == d.worker, d
                self._leave(d.task_id)
            elif isinstance(d, MarkTaskDone):
                self.avail[d.task_id] = d.worker
                self.store[d.worker].add(d.task_id)
                self.succeeded.add(d.task_id)
            elif isinstance(d, MarkOutputLost):
                assert self.avail.get(d.task_id, d.worker) == d.worker, d
                self.avail.pop(d.task_id, None)
                self.store.get(d.worker, set()).discard(d.task_id)
            elif isinstance(d, EndJob):
                assert d.outcome is not JobOutcome.DONE or self.succeeded == set(self.specs), \
                    "the job is done before every task succeeded"
                self.outcome = d.outcome.value
            else:
                assert isinstance(d, RetryTask), d
        if self.outcome:
            assert not self.on, "tasks left running after the end of the job"

    def _leave(self, t) -> None:
        del self.on[t]
        self.started.discard(t)
        self.takebacks.pop(t, None)

    def send(self, *events) -> list:
        self.steps += 1
        decisions = self.s.handle(*events)
        self.apply(decisions)
        if self.check:
            self.s.validate_state()
            assert self.s.over == (self.outcome is not None)
            if not self.outcome:
                assert self.s.workers == sorted(self.live)
                for w in self.live:
                    assert sorted(self.s.assigned(w)) == sorted(t for t, x in self.on.items() if x == w)
                for t, w in self.avail.items():
                    assert self.s.location(t) == w
        return decisions

    # the workers: events
    def startable(self) -> list:
        busy = {w: 0 for w in self.live}
        for t in self.started:
            busy[self.on[t]] += 1
        return [t for t, w in self.on.items() if t not in self.started and busy[w] < self.concurrency]

    def start(self, t) -> None:
        self.started.add(t)
        self.send(TaskStarted(t, self.on[t]))

    def finish(self, t, rng=None, fail=False, spurious=False) -> None:
        w = self.on[t]
        missing: dict = {}
        for dep, holder in self.fetch[t].items():
            if dep not in self.store.get(holder, ()):
                missing.setdefault(holder, []).append(dep)
        if not missing and spurious and self.fetch[t]:
            dep = rng.choice(sorted(self.fetch[t]))
            missing = {self.fetch[t][dep]: [dep]}
        self._leave(t)
        if missing:
            self.send(TaskDependenciesFailed(t, w, missing))
        elif fail:
            self.failures[t] = self.failures.get(t, 0) + 1
            self.send(TaskFailed(t, w, RuntimeError(t)))
        else:
            decisions = self.send(TaskSucceeded(t, w, rng.randrange(100) if rng else 1))
            assert MarkTaskDone(t, w) in decisions

    def answer(self, t) -> None:
        w = self.takebacks.pop(t)
        ok = t not in self.started
        if ok:
            self._leave(t)
            self.taken_back.add(t)
        self.send(TaskTakenBack(t, w, ok))

    def lose(self, w) -> None:
        self.live.discard(w)
        self.held.discard(w)
        self.store.pop(w)
        self.avail = {t: x for t, x in self.avail.items() if x != w}
        for t in [t for t, x in self.on.items() if x == w]:
            self._leave(t)
        self.send(WorkerLost(w))

    def add(self, w) -> None:
        self.live.add(w)
        self.store[w] = set()
        self.send(WorkerAdded(w))

    def stale(self, rng) -> None:
        """A late event for a task that is no longer on that worker: ignored, nothing changes."""
        pairs = sorted((t, w) for t, w in self.history if self.on.get(t) != w)
        if not pairs:
            return
        t, w = rng.choice(pairs)
        event = rng.choice([TaskSucceeded(t, w, 1), TaskFailed(t, w, None), TaskStarted(t, w),
                            TaskDependenciesFailed(t, w, {}), TaskTakenBack(t, w, rng.random() < 0.5)])
        before = snapshot(self.s, self.specs)
        assert self.send(event) == []
        assert snapshot(self.s, self.specs) == before

    def step_drain(self) -> bool:
        """Let the cluster work without trouble; False when nothing can happen."""
        if self.takebacks:
            self.answer(next(iter(self.takebacks)))
        elif startable := self.startable():
            self.start(startable[0])
        elif self.started:
            self.finish(next(iter(self.started)))
        else:
            return False
        return True

    def drain(self, max_steps: int) -> None:
        for w in sorted(self.held):
            self.held.discard(w)
            self.send(WorkerResumed(w))
        for w in UNIVERSE:
            if w not in self.live and not self.outcome:
                self.add(w)
        for _ in range(max_steps):
            if self.outcome or not self.step_drain():
                break
        assert self.outcome, f"the job did not end: {self.s.counts()}"


@st.composite
def jobs(draw):
    n = draw(st.integers(1, 30))
    rng = random.Random(draw(st.integers(0, 2**32)))
    specs = []
    for i in range(n):
        deps = tuple(f"t{j}" for j in rng.sample(range(i), min(i, rng.randrange(4))))
        if specs and rng.random() < 0.3:  # the same dependencies as an earlier task (a group)
            deps = rng.choice(specs).dependencies
        locality = None
        if rng.random() < 0.3:
            named = rng.sample(UNIVERSE, rng.randrange(1, 4))  # never forbids all four
            locality = {w: rng.choice([-1, 1, 2]) for w in named}
        specs.append(T(f"t{i}", deps, rng.randrange(4) if rng.random() < 0.5 else i, locality,
                       rng.random() < 0.7))
    rng.shuffle(specs)  # spec order need not be topological
    workers = rng.sample(UNIVERSE, rng.randrange(1, len(UNIVERSE) + 1))
    return specs, workers, draw(st.integers(1, 3)), draw(st.integers(0, 2))


def play(sim: Sim, rng: random.Random, steps: int, *, attempts: int, must_finish: bool) -> None:
    """Random trouble for ``steps`` steps, then a quiet cluster until the job ends."""
    losses = spurious = 0
    for _ in range(steps):
        if sim.outcome:
            break
        action = rng.choices(["start", "finish", "answer", "lose", "add", "hold", "release", "stale",
                              "cancel"], [6, 8, 3, 1, 1, 1, 1, 1, 0 if must_finish else 0.2])[0]
        if action == "start" and (startable := sim.startable()):
            sim.start(rng.choice(startable))
        elif action == "finish" and sim.started:
            t = rng.choice(sorted(sim.started))
            fail = rng.random() < 0.15 and (not must_finish or sim.failures.get(t, 0) < attempts - 1)
            spur = not fail and spurious < 3 and rng.random() < 0.1
            spurious += spur
            sim.finish(t, rng, fail=fail, spurious=spur)
        elif action == "answer" and sim.takebacks:
            sim.answer(rng.choice(sorted(sim.takebacks)))
        elif action == "lose" and losses < 4 and (len(sim.live) > 1 or not must_finish):
            losses += 1
            sim.lose(rng.choice(sorted(sim.live)))
        elif action == "add" and (absent := sorted(set(UNIVERSE) - sim.live)):
            sim.add(rng.choice(absent))
        elif action == "hold" and (free := sorted(sim.live - sim.held)):
            w = rng.choice(free)
            sim.held.add(w)
            sim.send(WorkerHeld(w))
        elif action == "release" and sim.held:
            w = rng.choice(sorted(sim.held))
            sim.held.discard(w)
            sim.send(WorkerResumed(w))
        elif action == "stale":
            sim.stale(rng)
        elif action == "cancel":
            sim.send(CancelJob())
    if not sim.outcome:
        sim.drain(max_steps=40 * len(sim.specs) + 200)
    assert sim.s.over and sim.s.handle(TaskSucceeded(next(iter(sim.specs)), "w0")) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs(), st.integers(0, 2**32), st.integers(0, 400))
def test_random_jobs_finish_when_failures_are_bounded(job, seed, steps):
    specs, workers, concurrency, prefetch = job
    # play() loses at most 4 workers: with worker_deaths=5 no task dies too often (see test_scheduler_deaths)
    sim = Sim(specs, workers, concurrency=concurrency, prefetch=prefetch, attempts=4,
              factory=partial(Scheduler, worker_deaths=5))
    play(sim, random.Random(seed), steps, attempts=4, must_finish=True)
    assert sim.outcome == "done"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs(), st.integers(0, 2**32), st.integers(0, 400), st.integers(1, 3))
def test_random_jobs_always_end(job, seed, steps, attempts):
    specs, workers, concurrency, prefetch = job
    sim = Sim(specs, workers, concurrency=concurrency, prefetch=prefetch, attempts=attempts)
    play(sim, random.Random(seed), steps, attempts=attempts, must_finish=False)
    assert sim.outcome in ("done", "failed", "cancelled")


# -- the take-back queue is kept only while a worker sits idle ---------------------------------------------

class Lockstep:
    """Two schedulers fed the same events: one keeps its take-back queue once built, the other drops
    it at every fill that finds no idle worker (and rebuilds it when one is). They must agree."""

    def __init__(self, *args, **kwargs):
        self.keeps, self.drops = Scheduler(*args, **kwargs), Scheduler(*args, **kwargs)
        self.keeps._STEAL_PATIENCE, self.drops._STEAL_PATIENCE = 10**9, -(10**9)

    def start(self) -> list:
        decisions = self.keeps.start()
        assert self.drops.start() == decisions
        return decisions

    def handle(self, *events) -> list:
        decisions = self.keeps.handle(*events)
        assert self.drops.handle(*events) == decisions, events
        self.drops.validate_state()
        return decisions

    def __getattr__(self, name):
        return getattr(self.keeps, name)


def test_take_back_queue_is_dropped_while_nobody_idles_and_rebuilt_for_an_idle_worker():
    specs = [T("root")] + [T(i, ("root",), data_locality=False) for i in range(30)]
    s = Lockstep(specs, ["w1", "w2"], concurrency=1, prefetch=2)
    s.drops._STEAL_PATIENCE = Scheduler._STEAL_PATIENCE  # the default for this one
    assert s.start() == [RunTask("root", "w1", 1)]
    assert s.drops._stealing_on  # w2 sits idle
    decisions = s.handle(TaskStarted("root", "w1"), TaskSucceeded("root", "w1"))
    assert decisions == [MarkTaskDone("root", "w1")] + [RunTask(i, w, 1) for i, w in
                                                     zip(range(6), ["w1", "w2", "w1", "w1", "w2", "w2"],
                                                         strict=True)]
    assert s.handle(TaskStarted(1, "w2")) == []  # w2 runs 1 and never finishes; w1 does the rest
    dropped = taken_back = False
    while not taken_back:
        (t, *_) = s.assigned("w1")
        decisions = s.handle(TaskStarted(t, "w1"), TaskSucceeded(t, "w1"))
        dropped = dropped or not s.drops._stealing_on
        taken_back = TakeBack(4, "w2") in decisions
    assert dropped and s.keeps._stealing_on
    assert s.assigned("w1") == [] and s.drops._stealing_on  # w1 idle: the queue is back
    assert s.handle(TaskTakenBack(4, "w2", True)) == [RunTask(4, "w1", 1)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs(), st.integers(0, 2**32), st.integers(0, 400), st.integers(1, 3))
def test_dropping_the_take_back_queue_changes_no_decision(job, seed, steps, attempts):
    specs, workers, concurrency, prefetch = job
    sim = Sim(specs, workers, concurrency=concurrency, prefetch=prefetch, attempts=attempts, factory=Lockstep)
    play(sim, random.Random(seed), steps, attempts=attempts, must_finish=False)


# -- scale ------------------------------------------------------------------------------------------------

def layered(n_wide: int, layers: int, width: int) -> list:
    """A wide layer of independent tasks, then layers of tasks that each need two of the layer before."""
    rng = random.Random(7)
    specs = [T(i, priority=i) for i in range(n_wide)]
    below = range(n_wide)
    for _ in range(layers):
        start = len(specs)
        specs += [T(start + i, tuple(rng.sample(below, 2)), priority=start + i) for i in range(width)]
        below = range(start, start + width)
    return specs


def drain_fast(specs: list, workers: list, **options) -> tuple[int, float]:
    """Run a job to its end with the least shell there is (every run succeeds at once); return
    the number of decisions and the CPU time the scheduler took for them."""
    s = Scheduler(specs, workers, **options)
    clock = time.process_time
    began = clock()
    pending = s.start()
    n = len(pending)
    while pending:
        runs = [d for d in pending if type(d) is RunTask]
        pending = []
        for d in runs:
            out = s.handle(TaskStarted(d.task_id, d.worker), TaskSucceeded(d.task_id, d.worker, 10))
            n += len(out)
            pending += out
    spent = clock() - began
    assert s.over and s.counts()["done"] == len(specs)
    return n, spent


def test_scale_10k_tasks_on_4_workers():
    specs = layered(7_000, 3, 1_000)
    assert len(specs) == 10_000
    sim = Sim(specs, ["w0", "w1", "w2", "w3"], concurrency=2, prefetch=2, check=False)
    while not sim.outcome:
        assert sim.step_drain(), "stuck"
    assert sim.outcome == "done" and len(sim.succeeded) == 10_000
    sim.s.validate_state()


def test_cost_per_decision_grows_like_log_n_not_n():
    """Eight times the tasks: a decision costs about as much (O(log n)); were it O(n), 8x. In CPU
    time, measured again (up to three times) when another process's load skewed it."""
    def per_decision(n_wide: int) -> float:
        n, spent = drain_fast(layered(n_wide, 2, n_wide // 4), ["w0", "w1", "w2", "w3"], concurrency=2,
                              prefetch=2)
        return spent / n

    ratios = []
    for _ in range(3):
        ratios.append(per_decision(16_000) / per_decision(2_000))
        if ratios[-1] < 3:
            break
    assert min(ratios) < 3, ratios


def test_memory_does_not_grow_with_tasks_times_workers():
    """Memory after the same steps with 2 and with 200 workers, for two job sizes: going from 2 to 200
    workers may add a fixed amount (the workers), not an amount that grows with the tasks."""
    def footprint(specs: list, n_workers: int) -> int:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            sim = Sim(specs, [f"w{i:03d}" for i in range(n_workers)], prefetch=1, check=False)
            for _ in range(400):
                sim.step_drain()
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()

    small, large = layered(500, 2, 250), layered(2_000, 2, 1_000)
    extra_small = footprint(small, 200) - footprint(small, 2)
    extra_large = footprint(large, 200) - footprint(large, 2)
    # tasks x workers would add 8 bytes per (task, worker) at least: 3000 x 198 x 8 more for the large job
    assert extra_large - extra_small < (len(large) - len(small)) * 198 * 8 / 10, (extra_small, extra_large)
