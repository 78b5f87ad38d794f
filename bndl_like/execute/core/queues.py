"""The scheduler's ranked queues and what it knows about each worker.

Tasks are known by their index in spec order and queued by rank: their position in
``(priority, spec order)``.
"""

from __future__ import annotations

from collections.abc import Iterable

from sortedcontainers import SortedList

from .events import WorkerName


class RankQueue:
    """Task ranks in priority order and, per live worker, the queued ranks it may not take.

    ``banned[w]`` is always a subset of ``items``, so the first rank ``w`` may take is found
    by bisecting the common prefix of the two sorted lists: O(log² n), however many are banned.
    """

    __slots__ = ("items", "banned")

    def __init__(self, items: Iterable[int] = ()) -> None:
        self.items = SortedList(items)
        self.banned: dict[WorkerName, SortedList] = {}

    def add(self, rank: int, banned: Iterable[WorkerName]) -> None:
        self.items.add(rank)
        for w in banned:
            self.ban(rank, w)

    def ban(self, rank: int, worker: WorkerName) -> None:
        self.banned.setdefault(worker, SortedList()).add(rank)

    def remove(self, rank: int, banned: Iterable[WorkerName]) -> None:
        items = self.items
        if items[0] == rank:  # the usual case: popping the head is much cheaper
            items.pop(0)
        else:
            items.remove(rank)
        for w in banned:
            self.banned[w].remove(rank)

    def first_for(self, worker: WorkerName) -> int | None:
        """The first rank ``worker`` may take, if any."""
        items, banned = self.items, self.banned.get(worker)
        first: int
        if not banned:
            if not items:
                return None
            first = items[0]
            return first
        if len(banned) == len(items):
            return None
        lo, hi = 0, len(banned)  # items[i] == banned[i] holds exactly for i below the answer
        while lo < hi:
            mid = (lo + hi) // 2
            if items[mid] == banned[mid]:
                lo = mid + 1
            else:
                hi = mid
        first = items[lo]
        return first


class WorkerState:
    """What the scheduler knows about one live worker (task indices throughout)."""

    __slots__ = ("name", "held", "assigned", "started", "unstarted", "stealable", "stealing", "local",
                 "outputs")

    def __init__(self, name: WorkerName) -> None:
        self.name = name
        self.held = False
        self.assigned: set[int] = set()   # given (RunTask), not finished / taken back / lost
        self.started = 0                  # how many of those reported TaskStarted
        self.unstarted: set[int] = set()  # assigned, not started, no TakeBack outstanding
        self.stealable: set[int] = set()  # the part of ``unstarted`` in the take-back queue
        self.stealing: set[int] = set()   # tasks other workers were asked to give back for this one
        self.local = SortedList()         # locality keys of the ready tasks that prefer this worker
        self.outputs: set[int] = set()    # tasks whose output lives here
