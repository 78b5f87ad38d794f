"""The worker's side of scatter: the ``scatter`` service that keeps scattered objects, and the
re-reading of queued tasks whose handles changed.

``ctx.scatter_update(handle, obj)`` returns once every worker holding the handle holds the new
version, and applies to every task that starts after it returned, tasks already handed ahead to
a worker (queued there) included: a batch of tasks whose arguments resolved handles keeps its
pickle (:func:`load_tasks`), and a task whose handle was updated (or released) meanwhile is
unpickled again as it starts (:meth:`TaskHandles.updated`).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .. import handles
from ..handles import ScatterError, _Missing, held_version


def _load_recording(payload) -> tuple[list, dict]:
    """Unpickle ``payload``; with the versions of the handles it resolved."""
    versions: dict = {}
    handles._loading.versions = versions
    try:
        return payload.load(), versions
    finally:
        handles._loading.versions = None


class _TaskBatch:
    """A batch of task specs that resolved handles: its pickle, kept to unpickle it again
    when a handle changed before one of its tasks started (once per change, for all)."""

    __slots__ = ("payload", "_lock", "_latest")

    def __init__(self, payload):
        self.payload = payload
        self._lock = threading.Lock()
        self._latest: tuple[list, dict] | None = None  # (specs, versions) of the last reload

    def reload(self) -> tuple[list, dict]:
        with self._lock:
            latest = self._latest
            if latest is None or any(held_version(h) != v for h, v in latest[1].items()):
                latest = self._latest = _load_recording(self.payload)
            return latest


class TaskHandles:
    """The handles a queued task's arguments were resolved with, and their versions."""

    __slots__ = ("batch", "index", "versions", "outputs")

    def __init__(self, batch: _TaskBatch, index: int, versions: dict):
        self.batch = batch
        self.index = index
        self.versions = versions
        self.outputs: dict | None = None  # the dependency outputs put in its arguments, if any

    def updated(self) -> tuple | None:
        """The task's spec unpickled again, when a handle it holds was updated or released
        since it was unpickled (else None): called as the task starts, in its thread.
        Raises SerializationError."""
        for handle_id, version in self.versions.items():
            if held_version(handle_id) != version:
                break
        else:
            return None
        specs, self.versions = self.batch.reload()
        return specs[self.index]


def load_tasks(specs) -> tuple[list, list[TaskHandles] | None]:
    """Unpickle a batch of task specs (a Payload); with, when they resolved handles, the
    :class:`TaskHandles` of each task, to check as it starts. Raises SerializationError."""
    tasks, versions = _load_recording(specs)
    if not versions:
        return tasks, None
    batch = _TaskBatch(specs)
    return tasks, [TaskHandles(batch, i, versions) for i in range(len(tasks))]


def find_missing(value, depth: int = 0) -> _Missing | None:
    """The first placeholder in ``value`` (lists, tuples, dicts, partials), if any."""
    if depth > 50:
        return None
    cls = type(value)
    if cls is _Missing:
        return value
    if cls is list or cls is tuple:
        for v in value:
            found = find_missing(v, depth + 1)
            if found is not None:
                return found
    elif cls is dict:
        for v in value.values():
            found = find_missing(v, depth + 1)
            if found is not None:
                return found
    else:
        args = getattr(value, "args", None)
        keywords = getattr(value, "keywords", None)
        if type(args) is tuple and type(keywords) is dict:  # functools.partial
            return find_missing(args, depth + 1) or find_missing(keywords, depth + 1)
    return None




class ScatterService:
    """The ``scatter`` service of a worker: handle id -> (version, object)."""

    def __init__(self, node):
        self.node = node
        self.store: dict[str, tuple[int, Any]] = {}
        self.puts: dict[str, int] = {}  # handle id -> times its object was received (put)
        self._lock = threading.Lock()
        handles.set_service(self)

    def put(self, handle_id: str, version: int, obj: Any) -> None:
        with self._lock:
            self.store[handle_id] = (version, obj)
            self.puts[handle_id] = self.puts.get(handle_id, 0) + 1

    def get(self, handle_id: str) -> Any:
        entry = self.store.get(handle_id)
        if entry is None:
            raise ScatterError(f"scattered object {handle_id} is not on {self.node.name}")
        return entry[1]

    async def update_patch(self, handle_id: str, version: int, patch: Any) -> None:
        entry = self.store.get(handle_id)
        if entry is None:
            raise ScatterError(f"scattered object {handle_id} is not on {self.node.name}")
        # in a thread: a patch may take a while, the loop stays free
        await asyncio.get_running_loop().run_in_executor(None, entry[1].patch, patch)
        with self._lock:
            self.store[handle_id] = (version, entry[1])

    def release(self, handle_id: str) -> bool:
        with self._lock:
            return self.store.pop(handle_id, None) is not None

    def held(self) -> dict:
        """``{handle id: version}`` of the objects kept here."""
        return {key: version for key, (version, _) in self.store.items()}

    def put_count(self, handle_id: str) -> int:
        return self.puts.get(handle_id, 0)



__all__ = ["ScatterService", "TaskHandles", "find_missing", "load_tasks"]
