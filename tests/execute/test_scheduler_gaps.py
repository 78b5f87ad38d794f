"""The scheduler's corners that mutation testing found untested (tools/mutate.py): each test
here fails for some small change to bndl_like/execute/scheduler.py that the others let pass."""

from __future__ import annotations

import pytest

from bndl_like.execute.core import (
    EndJob,
    JobOutcome,
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
    WorkerLost,
)

from .test_scheduler import JOB_DONE, run, started

T = TaskSpec
pytestmark = pytest.mark.timeout(10)


# -- take-backs ----------------------------------------------------------------------------------------

def test_a_take_back_refused_before_the_start_report_still_takes_back_the_other_prefetched_tasks():
    s = Scheduler([T("a"), T("b"), T("c")], ["w1"], concurrency=1, prefetch=2)
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w1", 1), RunTask("c", "w1", 1)]
    assert run(s, WorkerAdded("w2")) == [TakeBack("a", "w1")]
    # w1 had started a, but its TaskStarted has not arrived yet: the refusal says so, and b,
    # still only prefetched, is taken back for the idle w2 instead
    assert run(s, TaskTakenBack("a", "w1", ok=False)) == [TakeBack("b", "w1")]
    assert s.state("a") == "running" and s.counts()["running"] == 1
    assert run(s, TaskTakenBack("b", "w1", ok=True)) == [RunTask("b", "w2", 1)]
    # the late start report changes nothing
    assert run(s, TaskStarted("a", "w1")) == []
    assert s.assigned("w1") == ["a", "c"] and s.assigned("w2") == ["b"]


def test_a_refused_take_back_of_a_reported_start_counts_it_once():
    s = Scheduler([T("a"), T("b")], ["w1"], concurrency=1, prefetch=1)
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w1", 1)]
    assert run(s, WorkerAdded("w2")) == [TakeBack("a", "w1")]
    assert run(s, TaskStarted("a", "w1"), TaskTakenBack("a", "w1", ok=False)) == [TakeBack("b", "w1")]
    assert s.counts()["running"] == 1


# -- the end of a job ------------------------------------------------------------------------------------

def test_the_last_success_with_a_worker_loss_in_the_same_call_ends_in_job_done():
    s = Scheduler([T("a"), T("b")], ["w1"])
    assert started(s) == [RunTask("a", "w1", 1)]
    assert run(s, TaskStarted("a", "w1"), TaskSucceeded("a", "w1")) == [MarkTaskDone("a", "w1"),
                                                                         RunTask("b", "w1", 1)]
    # the job is over once b succeeded: the loss of its only worker right after is not its failure
    decisions = run(s, TaskStarted("b", "w1"), TaskSucceeded("b", "w1"), WorkerLost("w1"))
    assert decisions == [MarkTaskDone("b", "w1"), JOB_DONE]
    assert s.over and s.location("b") == "w1"


def test_the_last_success_with_a_failure_in_the_same_call_ends_in_job_done():
    s = Scheduler([T("a"), T("b")], ["w1", "w2"])
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w2", 1)]
    assert run(s, TaskSucceeded("a", "w1")) == [MarkTaskDone("a", "w1")]
    error = RuntimeError("late")
    assert run(s, TaskSucceeded("b", "w2"), TaskFailed("a", "w1", error)) == [
        MarkTaskDone("b", "w2"), JOB_DONE]


# -- locality ----------------------------------------------------------------------------------------

def test_an_explicit_locality_of_zero_is_indifference():
    # not a preference: a goes where a task without locality would (the first free worker)
    s = Scheduler([T("a", locality={"w2": 0}), T("b")], ["w1", "w2"])
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w2", 1)]
    # not a ban: the only worker takes it
    s = Scheduler([T("a", locality={"w2": 0})], ["w2"])
    assert started(s) == [RunTask("a", "w2", 1)]
    # nor is it when the worker joins later
    s = Scheduler([T("a", locality={"w2": 0, "w3": 1}), T("b")], ["w1"])
    assert started(s) == [RunTask("a", "w1", 1)]
    assert run(s, WorkerAdded("w2")) == [RunTask("b", "w2", 1)]


def test_a_tie_between_equally_preferred_free_workers_goes_to_the_first_by_name():
    s = Scheduler([T("a", locality={"w3": 1, "w2": 1})], ["w1", "w2", "w3"])
    assert started(s) == [RunTask("a", "w2", 1)]
    s = Scheduler([T("a", locality={"w3": 2, "w2": 1})], ["w1", "w2", "w3"])
    assert started(s) == [RunTask("a", "w3", 1)]


def test_a_tie_in_data_locality_between_two_holders_goes_to_the_first_by_name():
    s = Scheduler([T("x"), T("a"), T("b"), T("c", ("a", "b"))], ["w1", "w2", "w3"])
    assert started(s) == [RunTask("x", "w1", 1), RunTask("a", "w2", 1), RunTask("b", "w3", 1)]
    assert run(s, TaskSucceeded("b", "w3", 7)) == [MarkTaskDone("b", "w3")]
    # equal bytes on w2 and w3: w2, though w3 became free first
    assert run(s, TaskSucceeded("a", "w2", 7)) == [MarkTaskDone("a", "w2"), RunTask("c", "w2", 1)]


def test_data_locality_of_three_dependencies_weighs_bytes_then_outputs_then_names():
    def place(sizes):
        specs = [T("x"), T("p"), T("q"), T("r"), T("c", ("p", "q", "r"))]
        s = Scheduler(specs, ["w1", "w2", "w3", "w4"])
        assert started(s) == [RunTask("x", "w1", 1), RunTask("p", "w2", 1), RunTask("q", "w3", 1),
                              RunTask("r", "w4", 1)]
        # q's output ends on w3; p's and r's each on their worker
        for task, worker in (("p", "w2"), ("q", "w3"), ("r", "w4")):
            decisions = run(s, TaskSucceeded(task, worker, sizes[task]))
        return [d.worker for d in decisions if isinstance(d, RunTask)]

    assert place({"p": 5, "q": 9, "r": 5}) == ["w3"]   # most bytes
    assert place({"p": 5, "q": 5, "r": 9}) == ["w4"]
    assert place({"p": 5, "q": 5, "r": 5}) == ["w2"]   # a tie: the first by name


def test_data_locality_breaks_a_tie_in_bytes_by_the_number_of_outputs():
    specs = [T("x"), T("p"), T("q"), T("r"), T("c", ("p", "q", "r"))]
    s = Scheduler(specs, ["w1", "w2"], concurrency=2)
    assert started(s) == [RunTask("x", "w1", 1), RunTask("p", "w1", 1), RunTask("q", "w2", 1),
                          RunTask("r", "w2", 1)]
    run(s, TaskSucceeded("p", "w1", 10))
    run(s, TaskSucceeded("q", "w2", 5))
    # 10 bytes on each worker, but two outputs on w2: c goes there, not to w1 (first by name)
    assert run(s, TaskSucceeded("r", "w2", 5)) == [MarkTaskDone("r", "w2"), RunTask("c", "w2", 1)]


# -- what the scheduler tells ------------------------------------------------------------------------

def test_outputs_lists_what_a_worker_holds_by_priority():
    s = Scheduler([T("a", priority=2), T("b", priority=1), T("c", ("a", "b"))], ["w1"], concurrency=2)
    assert started(s) == [RunTask("b", "w1", 1), RunTask("a", "w1", 1)]
    assert s.outputs("w1") == []
    run(s, TaskSucceeded("a", "w1", 3))
    assert s.outputs("w1") == ["a"]
    run(s, TaskSucceeded("b", "w1", 3))
    assert s.outputs("w1") == ["b", "a"]
    assert s.outputs("nobody") == []
    run(s, WorkerAdded("w2"))
    assert s.outputs("w2") == []


# -- what the scheduler refuses ----------------------------------------------------------------------

def test_a_spec_that_is_not_a_task_spec_is_refused_wherever_it_is():
    with pytest.raises(TypeError, match=r"^expected a TaskSpec, got 'b'$"):
        Scheduler([T("a"), "b"])
    with pytest.raises(TypeError, match=r"^expected a TaskSpec, got \('c',\)$"):
        Scheduler([T("a"), T("b"), ("c",)])


def test_a_duplicate_task_id_is_named_wherever_it_is():
    with pytest.raises(ValueError, match=r"^duplicate task id 'b'$"):
        Scheduler([T("a"), T("b"), T("c"), T("b")])
    with pytest.raises(ValueError, match=r"^duplicate task id 'a'$"):
        Scheduler([T("a"), T("b"), T("a", priority=1)])


# -- limits ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attempts, limit", [(1, 10), (2, 10), (3, 15)])
def test_dependency_fetch_failures_end_the_job_after_max_of_10_and_5_per_attempt(attempts, limit):
    s = Scheduler([T("a"), T("b", ("a",))], ["w1"], attempts=attempts)
    assert started(s) == [RunTask("a", "w1", 1)]
    assert run(s, TaskSucceeded("a", "w1")) == [MarkTaskDone("a", "w1"), RunTask("b", "w1", 1)]
    for i in range(limit):  # fetch failures naming no holder lose nothing: b runs again
        assert run(s, TaskDependenciesFailed("b", "w1", {})) == [RunTask("b", "w1", i + 2)]
    decisions = run(s, TaskDependenciesFailed("b", "w1", {}))
    assert decisions == [EndJob(JobOutcome.FAILED, "b", None, f"task 'b' could not fetch its dependencies "
                                                              f"{limit + 1} times (last: none named)")]
    assert s.state("b") == "failed"


def test_attempts_count_failures_not_fetch_failures():
    s = Scheduler([T("a"), T("b", ("a",))], ["w1"], attempts=2)
    started(s)
    run(s, TaskSucceeded("a", "w1"))
    assert run(s, TaskDependenciesFailed("b", "w1", {})) == [RunTask("b", "w1", 2)]
    error = ValueError("x")
    assert run(s, TaskFailed("b", "w1", error)) == [RetryTask("b", "w1", error), RunTask("b", "w1", 3)]
    decisions = run(s, TaskFailed("b", "w1", error))
    assert decisions == [EndJob(JobOutcome.FAILED, "b", error,
                                "task 'b' failed 2 time(s), the maximum (attempts=2): ValueError('x')")]


# -- defaults ------------------------------------------------------------------------------------------

def test_the_default_priority_is_zero():
    # a tie with an explicit 0 keeps the spec order; a negative priority goes first
    s = Scheduler([T("b", priority=0), T("a"), T("c", priority=-1)], ["w1"])
    assert started(s) == [RunTask("c", "w1", 1)]
    assert run(s, TaskSucceeded("c", "w1")) == [MarkTaskDone("c", "w1"), RunTask("b", "w1", 1)]
    s = Scheduler([T("a"), T("b", priority=0)], ["w1"])
    assert started(s) == [RunTask("a", "w1", 1)]


def test_the_default_output_size_is_zero_bytes():
    s = Scheduler([T("a"), T("b"), T("c", ("a", "b"))], ["w1", "w2"])
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w2", 1)]
    run(s, TaskSucceeded("a", "w1"))  # no size given: none, so w2's one byte is more
    assert run(s, TaskSucceeded("b", "w2", 1)) == [MarkTaskDone("b", "w2"), RunTask("c", "w2", 1)]
