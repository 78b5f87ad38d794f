"""execute.record_events: a job's scheduler calls kept on the job, and replayed into a fresh
scheduler with the same decisions, on a real local cluster."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest

from bndl_like import ExecutionContext, FuncTask, Job

from . import helpers

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def ctx():
    with ExecutionContext.local(workers=2) as ctx:
        yield ctx


def diamond(ctx, tmp_path):
    a = FuncTask(ctx, "a", helpers.identity, (1,))
    b = FuncTask(ctx, "b", helpers.add, (a, 10))
    flaky = FuncTask(ctx, "flaky", helpers.fail_on_first_worker, (str(tmp_path), 5))
    d = FuncTask(ctx, "d", helpers.add, (b, flaky))
    return Job(ctx, [a, b, flaky, d], name="diamond")


def test_a_recorded_run_replays_to_the_same_decisions(ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("BNDL_LIKE_EXECUTE_RECORD_EVENTS", "1")
    job = diamond(ctx, tmp_path)
    assert list(ctx.execute(job, attempts=2)) == [1, 11, 5, 16]
    recording = job.recording
    assert recording is not None and recording.job == "diamond"
    assert sorted(s.task_id for s in recording.specs) == ["a", "b", "d", "flaky"]
    assert sorted(recording.workers) == sorted(w.name for w in ctx.workers)
    assert recording.steps >= 4  # a start and at least the events of the tasks
    # the flaky task's failure is in it, and the retry it caused
    failed = [e for events, _ in recording.recording.steps if events for e in events
              if type(e).__name__ == "TaskFailed"]
    assert [e.task_id for e in failed] == ["flaky"]
    assert recording.replay() is None

    # as sent along with a report: pickled, exceptions as stand-ins
    copy = pickle.loads(pickle.dumps(recording.portable()))
    assert copy.replay() is None
    assert "4 tasks" in repr(copy)


def test_a_replay_names_where_it_differs(ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("BNDL_LIKE_EXECUTE_RECORD_EVENTS", "1")
    job = diamond(ctx, tmp_path)
    assert list(ctx.execute(job, attempts=2)) == [1, 11, 5, 16]
    recording = job.recording.portable()
    # another job's options (one attempt: the flaky task's failure ends it) decide otherwise
    changed = replace(recording, options={**recording.options, "attempts": 1})
    difference = changed.replay()
    assert difference is not None and difference.startswith("step ")


def test_nothing_is_recorded_by_default(ctx, tmp_path, monkeypatch):
    monkeypatch.delenv("BNDL_LIKE_EXECUTE_RECORD_EVENTS", raising=False)
    job = diamond(ctx, tmp_path)
    assert list(ctx.execute(job, attempts=2)) == [1, 11, 5, 16]
    assert job.recording is None
