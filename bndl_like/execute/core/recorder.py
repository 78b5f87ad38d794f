"""Record what a scheduler was told and what it decided, and replay it into a fresh one.

The scheduler is deterministic: the same specs, workers, options and events give the same
decisions, with the same stimulus ids. A :class:`Recording` is plain data and pickles once
:meth:`Recording.portable` has put a :class:`RecordedError` in place of each exception (a
task's exception may not pickle, and an unpickled copy would not compare equal to the
original); replaying the portable recording gives its decisions back, equal and with equal
stimulus ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from .decisions import Decision, EndJob, RetryTask
from .events import Event, TaskFailed, TaskSpec, WorkerName
from .machine import Scheduler

Step = tuple["tuple[Event, ...] | None", "list[Decision]"]  # None: the start() call


class RecordedError(Exception):
    """Stands in for an exception in a recording: the name of its type and its repr, equal by
    value, shown as the original was."""

    def __init__(self, type_name: str, text: str) -> None:
        super().__init__(type_name, text)
        self.type_name = type_name
        self.text = text

    @classmethod
    def of(cls, error: BaseException) -> RecordedError:
        if isinstance(error, RecordedError):
            return error
        return cls(type(error).__qualname__, repr(error))

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        if type(other) is not RecordedError:
            return NotImplemented
        return (self.type_name, self.text) == (other.type_name, other.text)

    def __hash__(self) -> int:
        return hash((self.type_name, self.text))

    def __reduce__(self) -> tuple[Any, ...]:
        return RecordedError, (self.type_name, self.text)


_T = TypeVar("_T", TaskFailed, RetryTask, EndJob)


def _portable(item: _T) -> _T:
    error = item.error
    if error is None or type(error) is RecordedError:
        return item
    return replace(item, error=RecordedError.of(error))


def _portable_decision(decision: Decision) -> Decision:
    if isinstance(decision, RetryTask):
        return _portable(decision)
    if isinstance(decision, EndJob):
        return _portable(decision)
    return decision


@dataclass
class Recording:
    """Each call to the scheduler in order: the events of a ``handle()`` (None for ``start()``)
    and the decisions it returned."""
    steps: list[Step] = field(default_factory=list)

    def portable(self) -> Recording:
        """A copy with every exception replaced by a :class:`RecordedError`: it pickles."""
        steps: list[Step] = []
        for events, decisions in self.steps:
            if events is not None:
                events = tuple(_portable(e) if type(e) is TaskFailed else e for e in events)
            steps.append((events, [_portable_decision(d) for d in decisions]))
        return Recording(steps)

    def decisions(self) -> list[list[Decision]]:
        return [decisions for _, decisions in self.steps]


class Recorder:
    """Wraps a scheduler: ``start()`` and ``handle()`` go through and are recorded; anything
    else is the scheduler's."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.recording = Recording()

    def start(self) -> list[Decision]:
        decisions = self.scheduler.start()
        self.recording.steps.append((None, list(decisions)))
        return decisions

    def handle(self, *events: Event) -> list[Decision]:
        decisions = self.scheduler.handle(*events)
        self.recording.steps.append((events, list(decisions)))
        return decisions

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scheduler, name)


def replay(specs: Iterable[TaskSpec], workers: Iterable[WorkerName], options: Mapping[str, Any],
           recording: Recording) -> list[list[Decision]]:
    """Feed a recording's events to a fresh ``Scheduler(specs, workers, **options)``; return
    the decisions of each step."""
    scheduler = Scheduler(specs, workers, **options)
    out: list[list[Decision]] = []
    for events, _ in recording.steps:
        out.append(scheduler.start() if events is None else scheduler.handle(*events))
    return out


def first_difference(recorded: Sequence[Sequence[Decision]],
                     replayed: Sequence[Sequence[Decision]]) -> str | None:
    """Where two runs' decisions differ, stimulus ids included (None when they do not)."""
    if len(recorded) != len(replayed):
        return f"{len(recorded)} steps recorded, {len(replayed)} replayed"
    for i, (old, new) in enumerate(zip(recorded, replayed, strict=True)):
        old_ids = [d.stimulus_id for d in old]
        new_ids = [d.stimulus_id for d in new]
        if list(old) != list(new) or old_ids != new_ids:
            return (f"step {i}: recorded {list(old)} (stimuli {old_ids}), "
                    f"replayed {list(new)} (stimuli {new_ids})")
    return None
