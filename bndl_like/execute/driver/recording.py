"""A job's run as its scheduler saw it, kept when ``execute.record_events`` is on.

``job.recording`` holds what the scheduler was built with (the task specs, the workers, its
options) and every call made to it with the decisions it returned. The scheduler is a pure state
machine, so feeding the same events to a fresh one gives the same decisions, stimulus ids
included: :meth:`JobRecording.replay` does that and names the first difference. A recording
pickles once :meth:`JobRecording.portable` has put stand-ins in place of the tasks' exceptions
(send it along with a bug report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core import Recording, TaskSpec, first_difference, replay


@dataclass
class JobRecording:
    job: str                    # the job's name
    specs: list[TaskSpec]
    workers: list[str]          # the workers the job started with (others come as events)
    options: dict[str, Any]     # the scheduler's keyword options
    recording: Recording = field(default_factory=Recording)

    @property
    def steps(self) -> int:
        return len(self.recording.steps)

    def portable(self) -> JobRecording:
        """A copy that pickles (exceptions replaced by stand-ins equal by type name and repr)."""
        return JobRecording(self.job, list(self.specs), list(self.workers), dict(self.options),
                            self.recording.portable())

    def replay(self) -> str | None:
        """Feed the recorded events to a fresh scheduler: None when it decides exactly as
        recorded, else where it first differs."""
        replayed = replay(self.specs, self.workers, self.options, self.recording)
        return first_difference(self.recording.decisions(), replayed)

    def __repr__(self) -> str:
        return (f"<JobRecording of {self.job}: {len(self.specs)} tasks, {len(self.workers)} workers, "
                f"{self.steps} scheduler calls>")


__all__ = ["JobRecording"]
