"""The scheduler under its former names: :mod:`bndl_like.execute.core` is the scheduler now.

``bndl_like.execute.scheduler.Scheduler`` is the core's Scheduler ending a job with the
decisions the execution shell has used so far (:class:`JobDone`, :class:`JobFailed` with a
:class:`~bndl_like.execute.errors.WorkerDied` built from the core's facts, :class:`JobCancelled`)
instead of :class:`~bndl_like.execute.core.EndJob`; the other names are the core's, some under
their former names (``TaskDone`` is ``MarkTaskDone``, ``TaskRetry`` is ``RetryTask``,
``DependencyLost`` is ``MarkOutputLost``, ``WorkerReleased`` is ``WorkerResumed``).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import core
from .core import (
    CancelJob,
    CancelTask,
    Decision,
    EndJob,
    Event,
    JobOutcome,
    MarkOutputLost,
    MarkTaskDone,
    RetryTask,
    RunTask,
    TakeBack,
    TaskAbandoned,
    TaskDependenciesFailed,
    TaskFailed,
    TaskId,
    TaskSpec,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    TaskTakenBack,
    WorkerAdded,
    WorkerHeld,
    WorkerLost,
    WorkerName,
    WorkerResumed,
)
from .errors import WorkerDied

TaskDone = MarkTaskDone
TaskRetry = RetryTask
DependencyLost = MarkOutputLost
WorkerReleased = WorkerResumed

__all__ = [
    "CancelJob", "CancelTask", "DependencyLost", "JobCancelled", "JobDone", "JobFailed", "RunTask",
    "Scheduler", "TakeBack", "TaskAbandoned", "TaskDependenciesFailed", "TaskDone", "TaskFailed", "TaskId",
    "TaskRetry",
    "TaskSpec", "TaskStarted", "TaskState", "TaskSucceeded", "TaskTakenBack", "WorkerAdded", "WorkerHeld",
    "WorkerLost", "WorkerName", "WorkerReleased", "WorkerResumed", "legacy_end", "worker_died",
]


@dataclass(frozen=True, slots=True)
class JobDone:
    pass


@dataclass(frozen=True, slots=True)
class JobFailed:
    """A task failed for good (``task_id``, ``error``: its exception or a WorkerDied), or every
    worker was lost (both None)."""
    task_id: TaskId | None
    error: BaseException | None
    reason: str


@dataclass(frozen=True, slots=True)
class JobCancelled:
    pass


def worker_died(decision: EndJob) -> WorkerDied:
    """The WorkerDied for an EndJob of a task that died with ``decision.deaths`` workers."""
    deaths = decision.deaths
    return WorkerDied(decision.task_id, deaths[-1], len(deaths), list(deaths))


def legacy_end(decision: EndJob) -> JobDone | JobFailed | JobCancelled:
    """The former decision for an EndJob."""
    if decision.outcome is JobOutcome.DONE:
        return JobDone()
    if decision.outcome is JobOutcome.CANCELLED:
        return JobCancelled()
    error = worker_died(decision) if decision.deaths else decision.error
    return JobFailed(decision.task_id, error, decision.reason)


class Scheduler(core.Scheduler):
    """:class:`bndl_like.execute.core.Scheduler` ending a job with JobDone, JobFailed or
    JobCancelled."""

    def start(self) -> list:
        return _legacy(super().start())

    def handle(self, *events: Event) -> list:
        return _legacy(super().handle(*events))

    @property
    def done(self) -> bool:
        """True once the job is over (JobDone, JobFailed or JobCancelled was emitted)."""
        return self._over


def _legacy(decisions: list[Decision]) -> list:
    if decisions and type(decisions[-1]) is EndJob:  # the end of a job is its last decision
        decisions[-1] = legacy_end(decisions[-1])  # type: ignore[call-overload]
    return decisions
