"""The core stands alone: it imports only the standard library, sortedcontainers and itself,
at the top of its modules; execute/scheduler.py keeps the former names working on top of it."""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

import bndl_like.execute.core as core
from bndl_like.execute import scheduler as S
from bndl_like.execute.errors import WorkerDied

CORE = pathlib.Path(core.__file__).parent
pytestmark = pytest.mark.timeout(10)


def imports(tree: ast.Module):
    """(node, inside a function) for every import of a module."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, in_function or nested)
    yield from walk(tree, False)


def test_the_core_imports_nothing_of_the_project_outside_itself_and_only_at_module_level():
    modules = sorted(CORE.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "machine.py", "checks.py", "events.py",
                                         "decisions.py", "queues.py", "recorder.py"}
    allowed = set(sys.stdlib_module_names) | {"sortedcontainers"}
    for path in modules:
        for node, in_function in imports(ast.parse(path.read_text())):
            assert not in_function, f"{path.name}:{node.lineno}: an import inside a function"
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{path.name}:{node.lineno}: imports from outside the core"
                continue
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name}:{node.lineno}: imports {name}"


def test_modules_stay_small_enough_to_read_in_one_sitting():
    for path in CORE.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 520, path.name


# -- the former names --------------------------------------------------------------------------------------

def test_former_names_are_the_core_classes():
    assert S.TaskDone is core.MarkTaskDone and S.TaskRetry is core.RetryTask
    assert S.DependencyLost is core.MarkOutputLost and S.WorkerReleased is core.WorkerResumed
    assert S.RunTask is core.RunTask and S.TaskSpec is core.TaskSpec and S.TaskAbandoned is core.TaskAbandoned
    assert issubclass(S.Scheduler, core.Scheduler)


def test_the_former_scheduler_ends_jobs_with_the_former_decisions():
    s = S.Scheduler([S.TaskSpec("a")], ["w1"])
    assert s.start() == [S.RunTask("a", "w1", 1)] and not s.done
    assert s.handle(S.TaskSucceeded("a", "w1")) == [S.TaskDone("a", "w1"), S.JobDone()] and s.done
    s = S.Scheduler([S.TaskSpec("a")], [])
    assert s.start() == [] and s.handle(S.CancelJob()) == [S.JobCancelled()]
    s = S.Scheduler([], ["w1"])
    assert s.start() == [S.JobDone()]
    s = S.Scheduler([S.TaskSpec("a")], ["w1"])
    s.start()
    error = ValueError("x")
    assert s.handle(S.TaskFailed("a", "w1", error)) == [
        S.JobFailed("a", error, "task 'a' failed 1 time(s), the maximum (attempts=1): ValueError('x')")]
    s = S.Scheduler([S.TaskSpec("a")], ["w1"])
    s.start()
    (end,) = s.handle(S.WorkerLost("w1"))
    assert type(end) is S.JobFailed and end.task_id is None and end.error is None
    assert "every worker was lost" in end.reason


def test_a_task_that_killed_its_workers_ends_the_former_way_with_worker_died():
    s = S.Scheduler([S.TaskSpec("pill")], ["w1", "w2"], worker_deaths=2)
    s.start()
    s.handle(S.TaskStarted("pill", "w1"), S.WorkerLost("w1"))
    (end,) = s.handle(S.TaskStarted("pill", "w2"), S.WorkerLost("w2"))
    assert type(end) is S.JobFailed and end.error == WorkerDied("pill", "w2", 2, ["w1", "w2"])
    core_end = core.EndJob(core.JobOutcome.FAILED, "pill", None, end.reason, ("w1", "w2"))
    assert S.legacy_end(core_end) == end and S.worker_died(core_end) == end.error
    assert S.legacy_end(core.EndJob(core.JobOutcome.DONE)) == S.JobDone()
