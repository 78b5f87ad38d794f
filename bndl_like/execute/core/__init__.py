"""The pure core of job execution: the :class:`Scheduler` state machine, its events and
decisions, and a recorder to replay it. No I/O, no threads, no clock; imports nothing of
``bndl_like`` outside this package."""

from .decisions import (
    CancelTask,
    Decision,
    EndJob,
    JobOutcome,
    MarkOutputLost,
    MarkTaskDone,
    RetryTask,
    RunTask,
    TakeBack,
)
from .events import (
    CancelJob,
    Event,
    StimulusId,
    TaskAbandoned,
    TaskDependenciesFailed,
    TaskFailed,
    TaskId,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    TaskTakenBack,
    WorkerAdded,
    WorkerHeld,
    WorkerLost,
    WorkerName,
    WorkerResumed,
)
from .machine import Scheduler
from .recorder import RecordedError, Recorder, Recording, first_difference, replay
from .states import TaskState

__all__ = [
    "CancelJob", "CancelTask", "Decision", "EndJob", "Event", "JobOutcome", "MarkOutputLost",
    "MarkTaskDone", "RecordedError", "Recorder", "Recording", "RetryTask", "RunTask", "Scheduler",
    "StimulusId", "TakeBack", "TaskAbandoned", "TaskDependenciesFailed", "TaskFailed", "TaskId", "TaskSpec",
    "TaskStarted", "TaskState", "TaskSucceeded", "TaskTakenBack", "WorkerAdded", "WorkerHeld", "WorkerLost",
    "WorkerName", "WorkerResumed", "first_difference", "replay",
]
