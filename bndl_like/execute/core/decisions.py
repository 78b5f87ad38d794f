"""What the scheduler tells the shell to do: decisions, carried out in the order given.

Every decision names the stimulus that caused it (``stimulus_id``: the event's own or the number
the scheduler gave it; decisions made while filling free slots after a batch of events name the
batch's last event). Stimulus ids do not take part in equality: two decisions are equal when
they ask for the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from typing import Any, TypeVar

from .events import StimulusId, TaskId, WorkerName


@dataclass(frozen=True, slots=True)
class RunTask:
    """Send the task to the worker. ``attempt`` numbers its runs: 1 for the first; retries and
    re-runs after a loss count up, a run taken back before it started does not."""
    task_id: TaskId
    worker: WorkerName
    attempt: int
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TakeBack:
    """Ask the worker to give back a task it was handed and has not started; it answers with
    :class:`~bndl_like.execute.core.events.TaskTakenBack`."""
    task_id: TaskId
    worker: WorkerName
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class CancelTask:
    """Stop the task on the worker: the job ended before it did."""
    task_id: TaskId
    worker: WorkerName
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class MarkTaskDone:
    """Mark the task done: its output on ``worker`` is final (for now: lineage may run it again
    if the output is lost)."""
    task_id: TaskId
    worker: WorkerName
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RetryTask:
    """Mark the task pending again: its run on ``worker`` raised ``error`` and it has attempts
    left (a RunTask for it follows, now or later)."""
    task_id: TaskId
    worker: WorkerName
    error: BaseException | None
    stimulus_id: StimulusId | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class MarkOutputLost:
    """Mark a finished task's output lost: ``worker`` was lost or could not serve it, and the
    task runs again (the shell marks it FailedDependency)."""
    task_id: TaskId
    worker: WorkerName
    stimulus_id: StimulusId | None = field(default=None, compare=False)


class JobOutcome(str, Enum):
    """How a job ended; the values are the job states of the shell."""
    DONE = "done"            # every task succeeded
    FAILED = "failed"        # a task failed for good, or every worker was lost
    CANCELLED = "cancelled"  # CancelJob


@dataclass(frozen=True, slots=True)
class EndJob:
    """End the job; always the last decision (tasks still assigned get a CancelTask first).

    For ``FAILED``: ``task_id`` is the task that failed for good and ``error`` its exception;
    both are None when every worker was lost. When the task failed by killing workers,
    ``error`` is None and ``deaths`` names the workers that died running it, oldest first (the
    shell raises :class:`~bndl_like.execute.errors.WorkerDied` from these facts). ``reason``
    says why in words.
    """
    outcome: JobOutcome
    task_id: TaskId | None = None
    error: BaseException | None = None
    reason: str = ""
    deaths: tuple[WorkerName, ...] = ()
    stimulus_id: StimulusId | None = field(default=None, compare=False)


Decision = RunTask | TakeBack | CancelTask | MarkTaskDone | RetryTask | MarkOutputLost | EndJob

_D = TypeVar("_D")


def fast_constructor(cls: type[_D], names: tuple[str, ...] | None = None) -> Callable[..., _D]:
    """A constructor for a frozen, slotted dataclass that fills the slots directly instead of
    going through the generated ``__init__`` (``object.__setattr__`` per field): same object,
    several times faster. It takes the fields ``names`` (default: every field) positionally and
    gives the others their defaults; ``cls`` is called by keyword when its fields are not what
    this expects (no slots, a ``__post_init__``, a field without a plain default)."""
    all_names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    names = all_names if names is None else names

    def by_keyword(*values: Any) -> _D:
        return cls(**dict(zip(names, values, strict=True)))
    if "__slots__" not in cls.__dict__ or hasattr(cls, "__post_init__") or set(names) - set(all_names):
        return by_keyword
    env: dict[str, Any] = {"new": object.__new__, "cls": cls}
    lines = ["    obj = new(cls)"]
    for f in fields(cls):  # type: ignore[arg-type]
        env[f"set_{f.name}"] = getattr(cls, f.name).__set__
        if f.name in names:
            lines.append(f"    set_{f.name}(obj, {f.name})")
        elif f.default is not MISSING:
            env[f"default_{f.name}"] = f.default
            lines.append(f"    set_{f.name}(obj, default_{f.name})")
        else:  # required, or a default factory
            return by_keyword
    source = f"def make({', '.join(names)}):\n" + "\n".join(lines) + "\n    return obj\n"
    exec(source, env)  # built above from the names of the dataclass's fields only
    return env["make"]  # type: ignore[no-any-return]
