"""Event hooks: user callbacks on task, worker and job events, run off the event loop.

``ctx.add_hook(event, fn)`` and ``job.add_hook(event, fn)`` register ``fn``; the driver's
loop only queues the calls, which one daemon thread per context runs in order. A hook that
raises is logged and otherwise ignored.

Events and the argument the hook gets:

- ``task_started`` (Task): the task was sent to a worker (again for a retry, a re-run, or
  after it was taken back from a worker that had not started it);
- ``task_done`` (Task): it succeeded;
- ``task_failed`` (Task): it failed for good (its attempts used up; the job fails);
- ``task_retried`` (Task): an attempt failed, it will run again;
- ``task_cancelled`` (Task): the job ended before the task did;
- ``worker_joined`` / ``worker_lost`` (worker name);
- ``job_done`` (Job): the job succeeded; ``job_failed`` (Job): it failed or was cancelled
  (``job.state`` says which).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

EVENTS = ("task_started", "task_done", "task_failed", "task_cancelled", "task_retried",
          "worker_joined", "worker_lost", "job_done", "job_failed")
_EVENT_SET = frozenset(EVENTS)


class Hooks:
    """The hooks registered on a context or a job: event name -> functions."""

    __slots__ = ("fns",)

    def __init__(self) -> None:
        self.fns: dict[str, list[Callable]] = {}

    def add(self, event: str, fn: Callable) -> None:
        """Register ``fn(arg)`` for ``event``; ValueError for an unknown event."""
        if event not in _EVENT_SET:
            raise ValueError(f"unknown hook event {event!r}; known events: {', '.join(EVENTS)}")
        if not callable(fn):
            raise TypeError(f"a hook must be callable, not {type(fn).__name__}")
        self.fns.setdefault(event, []).append(fn)

    def get(self, event: str) -> list[Callable]:
        return self.fns.get(event) or []


class HookRunner:
    """A single daemon thread with a queue that runs hook calls in order; started on first use."""

    def __init__(self, name: str = "bndl-like-hooks"):
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def fire(self, event: str, arg: Any, *registries: Hooks | None) -> None:
        """Queue the calls of ``event``'s hooks in ``registries`` (cheap when there are none)."""
        fns: list[Callable] = []
        for hooks in registries:
            if hooks is not None and hooks.fns:
                fns += hooks.get(event)
        if fns and not self._closed:
            self._ensure_thread()
            self._queue.put((event, fns, arg))

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
                    self._thread.start()

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            event, fns, arg = item
            _call_all(event, fns, arg)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the hooks queued so far ran; False on timeout."""
        if self._thread is None or threading.current_thread() is self._thread:
            return True
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def close(self, timeout: float = 5) -> None:
        """Run what is queued (at most ``timeout`` s), then stop the thread. Idempotent."""
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            if threading.current_thread() is not thread:
                thread.join(timeout)


def _call_all(event: str, fns: Iterable[Callable], arg: Any) -> None:
    for fn in fns:
        try:
            fn(arg)
        except Exception:
            log.exception("hook %r for event %s raised", getattr(fn, "__name__", fn), event)


__all__ = ["EVENTS", "Hooks", "HookRunner"]
