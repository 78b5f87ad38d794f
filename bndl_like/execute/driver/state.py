"""What the driver knows, in one declared place: its node, its loop, the running jobs, the held
workers, the hooks; and a signal, on the loop, for whoever waits for any of it to change.

Owned by the :class:`~bndl_like.execute.driver.context.ExecutionContext`; read and changed on
the driver's loop only (through its :class:`~bndl_like.execute.driver.portal.Portal`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..hooks import HookRunner, Hooks
from .recent import RecentJobs

if TYPE_CHECKING:
    from ...rmi import Node
    from .portal import Portal
    from .run import JobRun


class Changes:
    """A level-free signal on the loop: :meth:`wait` returns at the next :meth:`notify`.

    A waiter checks its condition, then awaits :meth:`wait`; as both happen in one turn of the
    loop and :meth:`notify` is called on the loop too, no change is missed in between."""

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    def notify(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None = None) -> bool:
        """Until the next change (True), or ``timeout`` s (False)."""
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._waiter), timeout)
        except asyncio.TimeoutError:
            return False
        return True


class RunTable:
    """The running jobs' shells by job id. A run ending (taken out) is a change, and resolves
    what waits for that run to end."""

    def __init__(self, changes: Changes):
        self._runs: dict[int, JobRun] = {}
        self._ended: dict[int, asyncio.Future[None]] = {}
        self._changes = changes

    def __setitem__(self, job_id: int, run: JobRun) -> None:
        self._runs[job_id] = run
        self._changes.notify()

    def __getitem__(self, job_id: int) -> JobRun:
        return self._runs[job_id]

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._runs

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[int]:
        return iter(self._runs)

    def get(self, job_id: int, default: Any = None) -> Any:
        return self._runs.get(job_id, default)

    def values(self) -> list[JobRun]:
        return list(self._runs.values())

    def pop(self, job_id: int, default: Any = None) -> Any:
        run = self._runs.pop(job_id, default)
        ended = self._ended.pop(job_id, None)
        if ended is not None and not ended.done():
            ended.set_result(None)
        self._changes.notify()
        return run

    async def wait_ended(self, job_id: int) -> None:
        """Until the run of ``job_id`` is taken out (at once when it is not in)."""
        if job_id not in self._runs:
            return
        ended = self._ended.get(job_id)
        if ended is None:
            ended = self._ended[job_id] = asyncio.get_running_loop().create_future()
        await asyncio.shield(ended)


class DriverState:
    """The driver's state, declared: what a job's shell and the context's parts may read."""

    def __init__(self, portal: Portal, hook_runner: HookRunner, node: Node, keep_jobs: int):
        self.portal = portal
        self.loop = portal.loop
        self.hook_runner = hook_runner
        self.hooks = Hooks()                   # the context's hooks (a job has its own too)
        self.changes = Changes()               # jobs, task events, workers joining or leaving
        self.runs = RunTable(self.changes)     # running jobs' shells by job id
        self.held: set[str] = set()            # held worker names
        self.worker_pids: dict[str, int] = {}  # worker name -> pid, for exit statuses
        self.node = node
        # running jobs, and the last keep_jobs ended ones (their summaries once dropped)
        self.jobs = RecentJobs(keep_jobs)

        # how a worker ended ("killed by SIGKILL", "exited with code 3") when this driver started
        # it (a local cluster), else None; blocks up to a timeout: never called on the loop
        self.exit_status: Callable[[str, float], str | None] = lambda worker, timeout: None


__all__ = ["Changes", "DriverState", "RunTable"]
