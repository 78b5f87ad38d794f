"""Corners of the core that mutation testing (tools/mutate.py) found untested: each test here fails
for some small change to bndl_like/execute/core/ that the other tests let pass."""

from __future__ import annotations

import pytest

from bndl_like.execute.core import (
    MarkTaskDone,
    RunTask,
    Scheduler,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    WorkerLost,
)

from .test_scheduler import JOB_DONE, run, started

T = TaskSpec
pytestmark = pytest.mark.timeout(10)


def test_suspect_is_false_when_suspects_are_not_tracked():
    s = Scheduler([T("a"), T("b")], ["w1", "w2"])
    started(s)
    run(s, TaskStarted("a", "w1"), WorkerLost("w1"))
    assert s.suspect("a") is False and s.suspect("b") is False
    tracked = Scheduler([T("a")], ["w1", "w2"], suspects=True)
    started(tracked)
    assert tracked.suspect("a") is False
    run(tracked, TaskStarted("a", "w1"), WorkerLost("w1"))
    assert tracked.suspect("a") is True


@pytest.mark.parametrize("nbytes, kept", [(None, 0), (7.9, 7), (-5, 0), (0, 0), (True, 1)])
def test_output_sizes_that_are_not_positive_ints_are_made_so(nbytes, kept):
    specs = [T("a", locality={"w1": 1}), T("b", locality={"w2": 1}), T("c", ("a", "b"))]
    s = Scheduler(specs, ["w1", "w2"], concurrency=2)
    started(s)
    assert run(s, TaskSucceeded("a", "w1", nbytes)) == [MarkTaskDone("a", "w1")]
    assert s._nbytes[s._index["a"]] == kept
    # one byte on w2: c goes to w1 when a's output is as large (a tie goes to the first name)
    expected = "w1" if kept >= 1 else "w2"
    assert run(s, TaskSucceeded("b", "w2", 1)) == [MarkTaskDone("b", "w2"), RunTask("c", expected, 1)]
    assert run(s, TaskSucceeded("c", expected)) == [MarkTaskDone("c", expected), JOB_DONE]


def test_tasks_preferring_several_workers_equally_fill_idle_run_slots_before_prefetching():
    # eight tasks preferring two workers alike (a host's workers), a third forbidden: each worker
    # gets a task to run before either is handed one ahead, and they alternate after that
    specs = [T(i, locality={"w1": 1, "w2": 1, "w3": -1}) for i in range(8)]
    s = Scheduler(specs, ["w1", "w2", "w3"], concurrency=1, prefetch=16)
    placed = [(d.task_id, d.worker) for d in s.start() if type(d) is RunTask]
    assert placed[:2] == [(0, "w1"), (1, "w2")]
    assert sorted(w for _, w in placed) == ["w1"] * 4 + ["w2"] * 4
    # a stronger preference still wins over an idle run slot
    s = Scheduler([T("a", locality={"w1": 1}), T("b", locality={"w1": 2, "w2": 1})], ["w1", "w2"],
                  concurrency=1, prefetch=4)
    assert {(d.task_id, d.worker) for d in s.start() if type(d) is RunTask} == {("a", "w1"), ("b", "w1")}


def test_outputs_lost_and_run_again_are_counted():
    specs = [T("a", locality={"w1": 1}), T("c", locality={"w2": 1}), T("b", ("a", "c"))]
    s = Scheduler(specs, ["w1", "w2"], concurrency=1)
    started(s)
    run(s, TaskStarted("a", "w1"), TaskSucceeded("a", "w1"))
    assert s.counts()["dependencies_lost"] == 0
    decisions = run(s, WorkerLost("w1"))  # a's output is gone and b (waiting for c) needs it
    assert [type(d).__name__ for d in decisions if type(d).__name__ == "MarkOutputLost"] == ["MarkOutputLost"]
    assert s.counts()["dependencies_lost"] == 1


def test_the_holder_of_a_tasks_input_weighs_as_much_as_a_worker_it_prefers():
    # b prefers one worker by its locality, its input is on the other: equal weight, so the tie
    # (both idle) goes by name, whichever holds the input
    for holder, preferred in (("w2", "w1"), ("w1", "w2")):
        specs = [T("a", locality={holder: 1}), T("b", ("a",), locality={preferred: 1})]
        s = Scheduler(specs, ["w1", "w2"], concurrency=1)
        started(s)
        decisions = run(s, TaskStarted("a", holder), TaskSucceeded("a", holder, 100))
        assert [(d.task_id, d.worker) for d in decisions if type(d) is RunTask] == [("b", "w1")]
    # holding its input where it also prefers to run adds up: there it goes
    s = Scheduler([T("a", locality={"w2": 1}), T("b", ("a",), locality={"w1": 1, "w2": 1})], ["w1", "w2"])
    started(s)
    decisions = run(s, TaskStarted("a", "w2"), TaskSucceeded("a", "w2", 100))
    assert [(d.task_id, d.worker) for d in decisions if type(d) is RunTask] == [("b", "w2")]
