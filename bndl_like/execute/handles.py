"""Scattered objects as they travel: the handle a driver hands out and what it unpickles as.

A :class:`ScatterHandle` among a task's arguments is unpickled on a worker as the object kept
there (its ``__reduce__`` names :func:`_resolve`, which reads the store the worker's scatter
service registers with :func:`set_store`), or, where the object is not held, as a
:class:`_Missing` placeholder, which fails the task with :class:`ScatterError` before it runs.
Shared by the driver (which makes handles) and the worker (which resolves them).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from ..errors import BndlLikeError


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


# the scatter service of this process (a worker: it registers with set_service), read when a handle
# is unpickled; it has .store ({handle id: (version, object)}) and .node (its name says where)
_service: Any = None
# placeholders made since the last check: lets the worker skip the scan of arguments otherwise
_missing_made = 0
# .versions: {handle id: version resolved} while a worker unpickles task specs in this thread, else None
_loading = threading.local()


def set_service(service: Any) -> None:
    """Make ``service`` the store handles unpickled in this process resolve against."""
    global _service
    _service = service


def held_version(handle_id: str) -> int | None:
    """The version of the object this process holds for ``handle_id``, None if none."""
    entry = _service.store.get(handle_id) if _service is not None else None
    return None if entry is None else entry[0]


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


def take_missing_count() -> int:
    """Placeholders made since the last call (read and reset on the worker's loop)."""
    global _missing_made
    count, _missing_made = _missing_made, 0
    return count


__all__ = ["ScatterError", "ScatterHandle", "held_version", "set_service", "take_missing_count"]
