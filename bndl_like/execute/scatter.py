"""Scatter: ship an object once to every worker and refer to it by a small handle.

``ctx.scatter(obj)`` pushes ``obj`` to every worker's ``scatter`` service (and to
workers that join later) and returns a :class:`ScatterHandle`. A handle among a
task's arguments (at any depth) or a ``run_function``/``run_each_worker``
argument is unpickled on the worker as the object kept there: its ``__reduce__``
names :func:`_resolve`, which reads this worker's :class:`ScatterService`.

When a worker does not hold the object (it was released, or never sent there),
the handle unpickles as a :class:`_Missing` placeholder and the task (or
function call) fails with :class:`ScatterError` naming the handle before it runs.

``ctx.scatter_update(handle, obj)`` returns once every worker holding the handle
holds the new version, and applies to every task that starts after it returned,
tasks already handed ahead to a worker (queued there) included: a batch of tasks
whose arguments resolved handles keeps its pickle (:func:`load_tasks`), and a task
whose handle was updated (or released) meanwhile is unpickled again as it starts
(:meth:`TaskHandles.updated`). A handle is a context manager: ``with
ctx.scatter(obj) as handle:`` releases it on exit (``async with`` on the async twin).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import weakref
from typing import Any

from ..errors import BndlLikeError
from ..rmi import serialize
from ..rmi.errors import RemoteError, SerializationError
from ..rmi.pickle_check import UnpicklableError, unpicklable_error


class ScatterError(BndlLikeError, LookupError):
    """A scattered object is not on the worker that needs it (e.g. it was released)."""


class ScatterHandle:
    """A reference to an object scattered to the workers: an id and a version.

    ``with ctx.scatter(obj) as handle:`` (``async with await actx.scatter(obj) as
    handle:``) releases the object from every worker when the block ends; after
    ``ctx.close()`` that is a no-op.
    """

    __slots__ = ("id", "version", "_context")

    def __init__(self, handle_id: str, version: int = 1, context=None):
        self.id = handle_id
        self.version = version
        # the ExecutionContext that scattered it, weakly: a handle does not keep a driver alive
        if context is not None and not isinstance(context, weakref.ProxyTypes):
            context = weakref.proxy(context)
        self._context = context

    def __reduce__(self):
        return _resolve, (self.id, self.version)

    def _owner(self):
        """The context that scattered it; None when that context is gone (and with it what it
        scattered)."""
        context = self._context
        if context is None:
            raise RuntimeError(f"{self!r} was not made by ctx.scatter() in this process; "
                               "release it with the context that scattered it")
        try:
            context.release  # noqa: B018  a dead proxy raises ReferenceError
        except ReferenceError:
            return None
        return context

    def __enter__(self) -> ScatterHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        context = self._owner()
        if context is not None:
            context.release(self)

    async def __aenter__(self) -> ScatterHandle:
        return self

    async def __aexit__(self, *exc_info) -> None:
        context = self._owner()
        if context is not None:
            await context.ensure_async().release(self)

    def __eq__(self, other) -> bool:
        return isinstance(other, ScatterHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<ScatterHandle {self.id} v{self.version}>"


class _Missing:
    """What a handle unpickles as where its object is not held."""

    __slots__ = ("id", "version", "where")

    def __init__(self, handle_id: str, version: int, where: str):
        self.id = handle_id
        self.version = version
        self.where = where

    def error(self) -> ScatterError:
        return ScatterError(f"scattered object {self.id} (v{self.version}) is not on {self.where}: "
                            "it was released with ctx.release(), or never sent to this worker")

    def __reduce__(self):
        return _resolve, (self.id, self.version)

    def __repr__(self) -> str:
        return f"<missing scattered object {self.id}>"


# the ScatterService of this process (a worker), read when a handle is unpickled
_service: ScatterService | None = None
# placeholders made since the last check: lets the worker skip the scan of arguments otherwise
_missing_made = 0
# .versions: {handle id: version resolved} while load_tasks unpickles in this thread, else None
_loading = threading.local()


def _resolve(handle_id: str, version: int = 1) -> Any:
    """Unpickle a handle: the object kept by this worker, or a ``_Missing`` placeholder."""
    global _missing_made
    service = _service
    if service is None:  # not a worker (e.g. a handle in a result back on the driver)
        return ScatterHandle(handle_id, version)
    entry = service.store.get(handle_id)
    versions = getattr(_loading, "versions", None)
    if versions is not None:
        versions[handle_id] = None if entry is None else entry[0]
    if entry is not None:
        return entry[1]
    _missing_made += 1
    return _Missing(handle_id, version, service.node.name)


def _held_version(handle_id: str) -> int | None:
    entry = _service.store.get(handle_id) if _service is not None else None
    return None if entry is None else entry[0]


def _load_recording(payload) -> tuple[list, dict]:
    """Unpickle ``payload``; with the versions of the handles it resolved."""
    versions: dict = {}
    _loading.versions = versions
    try:
        return payload.load(), versions
    finally:
        _loading.versions = None


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
            if latest is None or any(_held_version(h) != v for h, v in latest[1].items()):
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
            if _held_version(handle_id) != version:
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


def take_missing_count() -> int:
    """Placeholders made since the last call (read and reset on the worker's loop)."""
    global _missing_made
    count, _missing_made = _missing_made, 0
    return count


class ScatterService:
    """The ``scatter`` service of a worker: handle id -> (version, object)."""

    def __init__(self, node):
        global _service
        self.node = node
        self.store: dict[str, tuple[int, Any]] = {}
        self.puts: dict[str, int] = {}  # handle id -> times its object was received (put)
        self._lock = threading.Lock()
        _service = self

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


# -- driver side -------------------------------------------------------------------------------------

def _unwrap(exc: BaseException) -> BaseException:
    from .executor import _unwrap_remote
    return _unwrap_remote(exc) if isinstance(exc, RemoteError) else exc


class ScatterRegistry:
    """What the driver scattered: handle id -> (version, object), and which workers hold it."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.objects: dict[str, tuple[int, Any]] = {}
        self.holders: dict[str, set[str]] = {}
        ctx._node.on_peer_added.append(self._on_peer_added)
        ctx._node.on_peer_lost.append(self._on_peer_lost)

    # on the driver's loop
    def _on_peer_added(self, peer) -> None:
        if getattr(peer, "node_type", None) != "worker":
            return
        for handle_id, (version, obj) in list(self.objects.items()):
            try:
                # pickled and queued right here: ahead of any task sent to this worker
                future = peer.call("scatter", "put", handle_id, version, obj)
            except Exception:  # pragma: no cover - not connected any more
                continue
            self.holders.setdefault(handle_id, set()).add(peer.name)
            asyncio.ensure_future(future).add_done_callback(_quiet)

    def _on_peer_lost(self, peer) -> None:
        for holders in self.holders.values():
            holders.discard(peer.name)

    async def _each(self, peers: list, method: str, *args) -> list:
        results = await asyncio.gather(*(p.call("scatter", method, *args) for p in peers),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise _unwrap(result)
        return results

    async def _put(self, peers: list, handle_id: str, version: int, obj: Any, what: str) -> None:
        """Send version ``version`` of ``obj`` to ``peers``; an object that does not pickle is a
        one-line UnpicklableError naming the part (checked even with no peer to send to, as
        workers joining later would fail to get it)."""
        try:
            if not peers:
                serialize.dumps(obj)
            await self._each(peers, "put", handle_id, version, obj)
        except SerializationError as exc:
            if getattr(exc, "remote_traceback", None) is not None:
                raise  # raised on a worker
            raise unpicklable_error(f"{what} cannot be sent to the workers", [("obj", obj)],
                                    "scatter something picklable, or create it on each worker "
                                    "(e.g. with run_each_worker)", exc) from None

    async def scatter(self, obj: Any) -> ScatterHandle:
        handle = ScatterHandle(uuid.uuid4().hex, 1, self.ctx)
        self.objects[handle.id] = (handle.version, obj)
        peers = [w for w in self.ctx.workers if w.connected]
        self.holders[handle.id] = {p.name for p in peers}
        try:
            await self._put(peers, handle.id, handle.version, obj, "the object to scatter")
        except UnpicklableError:
            self.objects.pop(handle.id, None)  # nothing was sent: forget it
            self.holders.pop(handle.id, None)
            raise
        return handle

    def _known(self, handle: ScatterHandle) -> None:
        if not isinstance(handle, ScatterHandle):
            raise TypeError(f"a ScatterHandle is needed, not {type(handle).__name__}")
        if handle.id not in self.objects:
            raise ScatterError(f"scattered object {handle.id} is not known here (released?)")

    def _holder_peers(self, handle_id: str) -> list:
        names = self.holders.get(handle_id, set())
        return [w for w in self.ctx.workers if w.name in names and w.connected]

    async def update(self, handle: ScatterHandle, obj: Any) -> ScatterHandle:
        """Returns once every worker holding the handle holds the new version: a task that
        starts afterwards gets it, even one queued on a worker before (see load_tasks)."""
        self._known(handle)
        previous = self.objects[handle.id]
        version = previous[0] + 1
        self.objects[handle.id] = (version, obj)
        handle.version = version
        try:
            await self._put(self._holder_peers(handle.id), handle.id, version, obj, "the new object")
        except UnpicklableError:
            self.objects[handle.id] = previous  # nothing was sent: the old version stays
            handle.version = previous[0]
            raise
        return handle

    async def update_patch(self, handle: ScatterHandle, patch: Any) -> ScatterHandle:
        self._known(handle)
        version, obj = self.objects[handle.id]
        version += 1
        handle.version = version
        peers = self._holder_peers(handle.id)
        await self._each(peers, "update_patch", handle.id, version, patch)
        # the driver's copy follows, so that workers joining later get the patched object
        obj.patch(patch)
        self.objects[handle.id] = (version, obj)
        return handle

    async def release(self, handle: ScatterHandle) -> None:
        if not isinstance(handle, ScatterHandle):
            raise TypeError(f"a ScatterHandle is needed, not {type(handle).__name__}")
        self.objects.pop(handle.id, None)
        peers = self._holder_peers(handle.id)
        self.holders.pop(handle.id, None)
        await self._each(peers, "release", handle.id)


def _quiet(future) -> None:
    if not future.cancelled():
        future.exception()


__all__ = ["ScatterHandle", "ScatterService", "ScatterError", "ScatterRegistry", "TaskHandles",
           "find_missing", "load_tasks"]
