"""The core's stimulus ids, attempts, abandoned tasks, and record/replay."""

from __future__ import annotations

import pickle
import random
from functools import partial

import pytest

from bndl_like.execute.core import (
    EndJob,
    JobOutcome,
    MarkTaskDone,
    RecordedError,
    Recorder,
    Recording,
    RetryTask,
    RunTask,
    Scheduler,
    TaskAbandoned,
    TaskDependenciesFailed,
    TaskFailed,
    TaskSpec,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    TaskTakenBack,
    WorkerAdded,
    WorkerHeld,
    WorkerLost,
    first_difference,
    replay,
)

from .test_scheduler import JOB_DONE, UNIVERSE, Sim, play, run, started

T = TaskSpec
pytestmark = pytest.mark.timeout(30)


# -- stimulus ids ----------------------------------------------------------------------------------------

def test_decisions_name_the_event_that_caused_them():
    s = Scheduler([T("a"), T("b", ("a",))], ["w1"])
    (first,) = started(s)
    assert first == RunTask("a", "w1", 1) and first.stimulus_id == 0  # start() is stimulus 0
    out = run(s, TaskStarted("a", "w1"), TaskSucceeded("a", "w1"))
    assert out == [MarkTaskDone("a", "w1"), RunTask("b", "w1", 1)]
    # events are numbered in the order handled; filling after a batch answers its last event
    assert [d.stimulus_id for d in out] == [2, 2]
    out = run(s, TaskStarted("b", "w1", stimulus_id="msg-7"), TaskSucceeded("b", "w1", stimulus_id="msg-8"))
    assert out == [MarkTaskDone("b", "w1"), JOB_DONE] and [d.stimulus_id for d in out] == ["msg-8", "msg-8"]


def test_stimulus_ids_take_no_part_in_equality_and_events_without_one_are_numbered_in_order():
    assert RunTask("a", "w1", 1, stimulus_id=3) == RunTask("a", "w1", 1, stimulus_id=4)
    s = Scheduler([T("a"), T("b")], ["w1", "w2"], attempts=2)
    started(s)
    out = run(s, WorkerAdded("w3"), TaskFailed("a", "w1", None), WorkerLost("w2", stimulus_id="gone"))
    # a may not run on w1 again; b, back from the lost w2, goes there and a to w3
    assert out == [RetryTask("a", "w1", None), RunTask("b", "w1", 2), RunTask("a", "w3", 2)]
    assert [d.stimulus_id for d in out] == [2, "gone", "gone"]  # the failure was the second event
    assert run(s, WorkerHeld("w9")) == [] and s.handle(TaskStarted("a", "w3")) == []
    out = run(s, TaskSucceeded("a", "w3"))
    assert out == [MarkTaskDone("a", "w3")] and out[0].stimulus_id == 6


# -- attempts ----------------------------------------------------------------------------------------------

def test_an_event_of_an_earlier_attempt_on_the_same_worker_is_ignored_and_counted():
    err = RuntimeError("boom")
    s = Scheduler([T("a")], ["w1"], attempts=2)
    assert started(s) == [RunTask("a", "w1", 1)]
    assert run(s, TaskFailed("a", "w1", err, attempt=1)) == [RetryTask("a", "w1", err), RunTask("a", "w1", 2)]
    assert s.stale_events == 0
    # the first run's late success cannot be told from the second's without its attempt
    for late in (TaskSucceeded("a", "w1", 5, attempt=1), TaskStarted("a", "w1", attempt=1),
                 TaskFailed("a", "w1", err, attempt=1), TaskDependenciesFailed("a", "w1", {}, attempt=1),
                 TaskAbandoned("a", "w1", attempt=1), TaskTakenBack("a", "w1", True, attempt=1)):
        assert run(s, late) == []
        assert s.state("a") == "assigned" and s.counts()["failed_attempts"] == 1
    assert s.stale_events == 6
    assert run(s, TaskStarted("a", "w1", attempt=2)) == [] and s.state("a") == "running"
    assert run(s, TaskSucceeded("a", "w1", attempt=2)) == [MarkTaskDone("a", "w1"), JOB_DONE]
    assert s.stale_events == 6 and s.task_state("a") is TaskState.DONE


def test_an_event_for_another_worker_is_stale_too_and_one_without_attempt_means_the_current_run():
    s = Scheduler([T("a")], ["w1", "w2"])
    started(s)
    assert run(s, TaskSucceeded("a", "w2")) == [] and s.stale_events == 1
    assert run(s, TaskStarted("a", "w1")) == [] and run(s, TaskStarted("a", "w1")) == []
    assert s.stale_events == 1  # a repeated start of the current run is not stale
    assert run(s, TaskSucceeded("a", "w1", attempt=None)) == [MarkTaskDone("a", "w1"), JOB_DONE]


# -- a worker gives a task up ----------------------------------------------------------------------------

def test_an_abandoned_task_runs_again_without_counting_an_attempt():
    s = Scheduler([T("a"), T("b")], ["w1", "w2"], attempts=1)
    assert started(s) == [RunTask("a", "w1", 1), RunTask("b", "w2", 1)]
    assert run(s, TaskStarted("a", "w1")) == []
    # more often than a task may fail to fetch its dependencies: no limit, no failure
    for attempt in range(2, 15):
        assert run(s, TaskAbandoned("a", "w1", attempt=attempt - 1)) == [RunTask("a", "w1", attempt)]
        assert s.state("a") == "assigned"
    counts = s.counts()
    assert counts["abandoned"] == 13 and counts["failed_attempts"] == 0 and counts["retried"] == 0
    assert run(s, TaskStarted("a", "w1"), WorkerHeld("w1")) == []  # started: nothing to take back
    assert run(s, TaskAbandoned("a", "w1")) == []  # w1 is held, w2 busy: a waits
    assert s.task_state("a") is TaskState.READY and s.assigned("w1") == []
    assert run(s, TaskSucceeded("b", "w2")) == [MarkTaskDone("b", "w2"), RunTask("a", "w2", 15)]


def test_an_abandoned_task_waits_again_for_lost_dependencies_and_lets_a_thief_take_its_slot():
    specs = [T("a", locality={"w1": 1}), T("b", ("a",), locality={"w1": 1})]
    s = Scheduler(specs, ["w1", "w2"])
    started(s)
    assert run(s, TaskStarted("a", "w1"), TaskSucceeded("a", "w1")) == [
        MarkTaskDone("a", "w1"), RunTask("b", "w1", 1)]
    assert run(s, TaskAbandoned("b", "w1")) == [RunTask("b", "w1", 2)]
    assert s.counts()["dependencies_lost"] == 0 and s.state("a") == "done"


# -- record and replay ------------------------------------------------------------------------------------

def random_job(rng: random.Random) -> tuple[list, list, int, int]:
    """A job as tests.execute.test_scheduler.jobs draws them, from a seeded generator."""
    n = rng.randrange(5, 30)
    specs = []
    for i in range(n):
        deps = tuple(f"t{j}" for j in rng.sample(range(i), min(i, rng.randrange(4))))
        locality = None
        if rng.random() < 0.3:
            locality = {w: rng.choice([-1, 1, 2]) for w in rng.sample(UNIVERSE, rng.randrange(1, 4))}
        specs.append(T(f"t{i}", deps, rng.randrange(4) if rng.random() < 0.5 else i, locality,
                       rng.random() < 0.7))
    rng.shuffle(specs)
    workers = rng.sample(UNIVERSE, rng.randrange(2, len(UNIVERSE) + 1))
    return specs, workers, rng.randrange(1, 3), rng.randrange(3)


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not picklable")


def test_a_recorded_random_run_replays_to_the_same_decisions_and_stimulus_ids():
    seen: set = set()
    for seed in range(12):
        rng = random.Random(seed)
        specs, workers, concurrency, prefetch = random_job(rng)
        options = {"concurrency": concurrency, "prefetch": prefetch, "attempts": 3, "worker_deaths": 3}
        factory = partial(lambda *args, **kwargs: Recorder(Scheduler(*args, **kwargs)), worker_deaths=3)
        sim = Sim(specs, workers, concurrency=concurrency, prefetch=prefetch, attempts=3, factory=factory)
        play(sim, rng, 300, attempts=3, must_finish=False)
        recording = sim.s.recording
        for events, decisions in recording.steps:
            seen.update(type(e).__name__ for e in events or ())
            seen.update(type(d).__name__ for d in decisions)
        # the portable recording pickles (a task's exception need not), and replays the same
        portable = pickle.loads(pickle.dumps(recording.portable()))
        assert first_difference(portable.decisions(), replay(specs, workers, options, portable)) is None
        # start(), every event the simulation sent, and play()'s last word after the end
        assert len(portable.steps) == len(recording.steps) == sim.steps + 2
        # the original, exceptions and all, replays the same too
        assert first_difference(recording.decisions(), replay(specs, workers, options, recording)) is None
    assert {"TaskFailed", "WorkerLost", "WorkerHeld", "TaskTakenBack", "TaskDependenciesFailed", "CancelJob",
            "RetryTask", "MarkOutputLost", "TakeBack", "EndJob"} <= seen, seen


def test_replay_finds_a_different_decision_and_a_different_stimulus_id():
    specs, workers = [T("a"), T("b")], ["w1", "w2"]
    rec = Recorder(Scheduler(specs, workers))
    rec.start()
    rec.handle(TaskStarted("a", "w1"), TaskSucceeded("a", "w1"))
    assert rec.over is False and rec.workers == workers  # the rest is the scheduler's
    recording = rec.recording
    assert first_difference(recording.decisions(), replay(specs, workers, {}, recording)) is None
    assert "step 0" in first_difference(recording.decisions(), replay(specs, ["w2"], {}, recording))
    assert "2 steps recorded, 1 replayed" == first_difference(recording.decisions(),
                                                              replay(specs, workers, {}, Recording(
                                                                  recording.steps[:1])))
    # the same decisions, answering other stimuli
    events = (TaskStarted("a", "w1"), TaskSucceeded("a", "w1", stimulus_id=9))
    renumbered = Recording([recording.steps[0], (events, recording.steps[1][1])])
    difference = first_difference(recording.decisions(), replay(specs, workers, {}, renumbered))
    assert difference is not None and "step 1" in difference and "[2]" in difference and "[9]" in difference


def test_recorded_errors_stand_in_for_exceptions_by_value():
    error = Unpicklable("x")
    with pytest.raises(TypeError):
        pickle.dumps(error)
    stand_in = RecordedError.of(error)
    assert RecordedError.of(stand_in) is stand_in
    assert repr(stand_in) == "Unpicklable('x')" and stand_in.type_name == "Unpicklable"
    copy = pickle.loads(pickle.dumps(stand_in))
    assert copy == stand_in and hash(copy) == hash(stand_in) and copy != RecordedError("Unpicklable", "other")
    assert copy != RecordedError("Other", "Unpicklable('x')") and stand_in != error and stand_in is not None
    s = Scheduler([T("a")], ["w1"], attempts=2)
    rec = Recorder(s)
    rec.start()
    rec.handle(TaskFailed("a", "w1", error))
    rec.handle(TaskFailed("a", "w1", error, retry=False))
    portable = rec.recording.portable()
    ((_, first), (events, retry), (_, end)) = portable.steps
    assert events[0].error == stand_in and retry[0] == RetryTask("a", "w1", stand_in)
    assert end[0] == EndJob(JobOutcome.FAILED, "a", stand_in,
                            "task 'a' failed 2 time(s), it cannot be retried: Unpicklable('x')")
    assert end[0].reason == rec.recording.steps[2][1][0].reason  # shown as the original
    assert portable.portable() == portable and pickle.loads(pickle.dumps(portable)) == portable


def test_a_recorder_can_stand_in_for_the_scheduler_of_a_simulation():
    factory = partial(lambda *a, **k: Recorder(Scheduler(*a, **k)))
    sim = Sim([T("a"), T("b", ("a",))], ["w1"], factory=factory)
    sim.drain(20)
    assert sim.outcome == "done" and [e is None for e, _ in sim.s.recording.steps][:1] == [True]
