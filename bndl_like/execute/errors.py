"""Exceptions of the execute layer."""

from __future__ import annotations


class TaskCancelled(BaseException):
    """Raised inside a task's thread when the task is cancelled.

    A ``BaseException`` so that a task's ``except Exception`` does not swallow it.
    """


class TaskTimeout(TimeoutError):
    """A task ran longer than its ``timeout=``; it was interrupted and failed."""


class DependenciesFailed(Exception):
    """A task could not get the outputs of some dependencies.

    ``failures`` maps the worker that should have held them to the task ids.
    """

    def __init__(self, failures: dict):
        self.failures = {worker: list(ids) for worker, ids in failures.items()}
        detail = "; ".join(f"{w}: {ids}" for w, ids in self.failures.items())
        super().__init__(f"dependency outputs could not be fetched ({detail})")

    def __reduce__(self):
        return DependenciesFailed, (self.failures,)


class FailedDependency(Exception):
    """The output of a finished task was lost with ``worker_failed``; it runs again."""

    def __init__(self, worker_failed: str | None = None):
        self.worker_failed = worker_failed
        super().__init__(f"output lost with worker {worker_failed}")

    def __reduce__(self):
        return FailedDependency, (self.worker_failed,)


class JobCancelled(Exception):
    """The job was cancelled before it finished."""


class WorkersLost(Exception):
    """Every worker the job could use was lost."""
