"""``ctx.jobs``: the jobs a context ran, newest last, with a bounded memory.

A running job is held as it is. Once it ended, ``ctx.jobs`` keeps only a
:class:`JobSummary` (name, state, counts, times, error) and a weak reference to the
Job: as long as the caller holds the Job, ``ctx.jobs`` gives the Job itself; after
that the summary. Only the last ``execute.keep_jobs`` (100) ended jobs are kept, so a
long-running driver neither keeps results nor arguments nor an ever-growing list.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Iterator, Sequence


class JobSummary:
    """What is kept of an ended job nobody refers to any more."""

    __slots__ = ("id", "name", "desc", "state", "started_at", "stopped_at", "retried", "done_count",
                 "failed_count", "error", "counts")

    def __init__(self, job):
        self.id = job.id
        self.name = job.name
        self.desc = job.desc
        self.state = job.state
        self.started_at = job.started_at
        self.stopped_at = job.stopped_at
        self.retried = job.retried
        self.done_count = job.done_count
        self.failed_count = job.failed_count
        self.error = job.error
        self.counts = job.counts

    @property
    def done(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.stopped_at is None:
            return None
        return self.stopped_at - self.started_at

    def __len__(self) -> int:
        return self.counts["total"]

    def __repr__(self) -> str:
        took = "" if self.duration is None else f" in {self.duration:.2f}s"
        error = "" if self.error is None else f": {type(self.error).__name__}: {self.error}"
        return f"<JobSummary {self.name} {self.state}, {len(self)} tasks{took}{error}>"


class _Entry:
    __slots__ = ("job", "ref", "summary")

    def __init__(self, job):
        self.job = job          # while it runs
        self.ref = None         # once it ended
        self.summary = None

    def get(self):
        if self.job is not None:
            return self.job
        job = self.ref()
        return job if job is not None else self.summary


class RecentJobs(Sequence):
    """The jobs run (newest last): running ones, and the last ``keep`` ended ones."""

    def __init__(self, keep: int):
        self.keep = keep
        self._entries: deque[_Entry] = deque()
        self._by_id: dict[int, _Entry] = {}
        self._ended_count = 0
        self.run_count = 0  # every job started, also those no longer kept

    def append(self, job) -> None:
        entry = self._by_id.get(job.id)
        if entry is not None:  # run again: now the newest
            self._remove(entry)
        entry = _Entry(job)
        self._entries.append(entry)
        self._by_id[job.id] = entry
        self.run_count += 1

    def _ended(self, job) -> None:
        """``job`` ended: keep its summary and a weak reference; forget the oldest ended."""
        entry = self._by_id.get(job.id)
        if entry is None or entry.job is not job:
            return
        entry.summary = JobSummary(job)
        entry.ref = weakref.ref(job)
        entry.job = None
        self._ended_count += 1
        while self._ended_count > self.keep:
            oldest = next(e for e in self._entries if e.job is None)
            self._remove(oldest)

    def _remove(self, entry: _Entry) -> None:
        self._entries.remove(entry)
        if entry.job is None:
            self._ended_count -= 1
        job = entry.get()
        if job is not None and self._by_id.get(job.id) is entry:
            del self._by_id[job.id]

    def clear(self) -> None:
        """Forget the ended jobs (running ones stay)."""
        for entry in [e for e in self._entries if e.job is None]:
            self._remove(entry)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [entry.get() for entry in list(self._entries)[index]]
        return self._entries[index].get()

    def __iter__(self) -> Iterator:
        return iter([entry.get() for entry in self._entries])

    def __repr__(self) -> str:
        return repr(list(self))


__all__ = ["JobSummary", "RecentJobs"]
