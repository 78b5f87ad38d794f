"""The states of a task in the scheduler."""

from __future__ import annotations

from enum import IntEnum


class TaskState(IntEnum):
    """Where a task stands. One word, one meaning:

    - ``WAITING``: some dependency output is not available yet;
    - ``READY``: it can run, and waits for a worker;
    - ``ASSIGNED``: handed to a worker (started or not);
    - ``DONE``: it succeeded and its output is available on a worker;
    - ``LOST``: it succeeded, its output is gone and no task needs it now;
    - ``FAILED``: it failed for good, which ended the job;
    - ``CANCELLED``: the job ended before it succeeded.
    """
    WAITING = 0
    READY = 1
    ASSIGNED = 2
    DONE = 3
    LOST = 4
    FAILED = 5
    CANCELLED = 6


# the same values as plain ints, for the hot path (an IntEnum member costs more as a list index)
WAITING, READY, ASSIGNED, DONE, LOST, FAILED, CANCELLED = (int(s) for s in TaskState)
STATE_NAMES: tuple[str, ...] = tuple(s.name.lower() for s in TaskState)
MUST_RUN = (WAITING, READY, ASSIGNED)
