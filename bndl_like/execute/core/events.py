"""What the shell tells the scheduler: the job's tasks (:class:`TaskSpec`) and events.

Events are plain, frozen data. Each may carry a ``stimulus_id`` (any hashable value the shell
chooses); the scheduler numbers those that come without one, and every decision names the
stimulus that caused it. Task events may carry the ``attempt`` of the run they report (the
``attempt`` of its :class:`~bndl_like.execute.core.decisions.RunTask`): an event for a run that is
not the task's current one is ignored. ``attempt=None`` means "the current run".
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TaskId = Hashable
WorkerName = str
StimulusId = Hashable


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task as the scheduler sees it.

    ``priority``: lower runs first (ties: the order the specs were given); any values that
    compare with each other. ``locality``: worker name -> int; -1 forbidden, 0 indifferent (may
    be omitted), 1+ preferred, higher wins. Workers not named are indifferent.
    ``data_locality``: when true, the task also prefers the workers holding most bytes of its
    dependencies' outputs (added to the static locality; never overrides -1).
    """
    task_id: TaskId
    dependencies: Sequence[TaskId] = ()
    priority: Any = 0
    locality: Mapping[WorkerName, int] | None = None
    data_locality: bool = True


# -- the cluster ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WorkerAdded:
    worker: WorkerName
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """The worker is gone, with what ran there and the outputs it held."""
    worker: WorkerName
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class WorkerHeld:
    """No new tasks go to the worker; what runs there finishes, what it has not started is
    taken back."""
    worker: WorkerName
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class WorkerResumed:
    """A held worker takes new tasks again."""
    worker: WorkerName
    stimulus_id: StimulusId | None = field(default=None, compare=False)


# -- one run of a task ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TaskStarted:
    """The worker started running a task it was given (it can no longer be taken back)."""
    task_id: TaskId
    worker: WorkerName
    attempt: int | None = None
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TaskSucceeded:
    task_id: TaskId
    worker: WorkerName
    nbytes: int = 0  # size of the output kept on the worker
    attempt: int | None = None
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """The task raised ``error``. Counts an attempt. ``retry=False``: it would fail the same way
    on every attempt (e.g. it cannot be sent), so the job fails at once."""
    task_id: TaskId
    worker: WorkerName
    error: BaseException | None = None
    retry: bool = True
    attempt: int | None = None
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TaskDependenciesFailed:
    """The task could not fetch dependency outputs: ``failures`` maps the worker that should
    have held them to the dependency task ids. Does not count an attempt."""
    task_id: TaskId
    worker: WorkerName
    failures: Mapping[WorkerName, Sequence[TaskId]] = field(default_factory=dict)
    attempt: int | None = None
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TaskAbandoned:
    """The worker gave the task up by itself (it is stopping, say): run it again, elsewhere if
    possible. Counts no attempt and no failure."""
    task_id: TaskId
    worker: WorkerName
    attempt: int | None = None
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TaskTakenBack:
    """Answer to :class:`~bndl_like.execute.core.decisions.TakeBack`: ``ok`` when the worker had
    not started the task and gave it back."""
    task_id: TaskId
    worker: WorkerName
    ok: bool
    attempt: int | None = None
    stimulus_id: StimulusId | None = field(default=None, compare=False)


# -- the job ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CancelJob:
    """Cancel the job: every task assigned somewhere is cancelled, then the job ends."""
    stimulus_id: StimulusId | None = field(default=None, compare=False)


TaskEvent = TaskStarted | TaskSucceeded | TaskFailed | TaskDependenciesFailed | TaskAbandoned | TaskTakenBack
WorkerEvent = WorkerAdded | WorkerLost | WorkerHeld | WorkerResumed
Event = TaskEvent | WorkerEvent | CancelJob
TASK_EVENTS: frozenset[type] = frozenset((TaskStarted, TaskSucceeded, TaskFailed, TaskDependenciesFailed,
                                          TaskAbandoned, TaskTakenBack))
