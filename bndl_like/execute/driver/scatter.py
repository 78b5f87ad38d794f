"""The driver's side of scatter: what it scattered, to which workers, and keeping them in step.

``ctx.scatter(obj)`` pushes ``obj`` to every worker's ``scatter`` service (and to workers that
join later) and returns a :class:`~bndl_like.execute.handles.ScatterHandle`;
``scatter_update``/``scatter_update_patch``/``release`` change it everywhere it is held.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from ...rmi import serialize
from ...rmi.errors import RemoteError, SerializationError
from ...rmi.pickle_check import UnpicklableError, unpicklable_error
from ..handles import ScatterError, ScatterHandle
from ..messages import SCATTER_SERVICE
from .remote import unwrap_remote

# -- driver side -------------------------------------------------------------------------------------

def _unwrap(exc: BaseException) -> BaseException:
    return unwrap_remote(exc) if isinstance(exc, RemoteError) else exc


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
                future = peer.call(SCATTER_SERVICE, "put", handle_id, version, obj)
            except Exception:  # pragma: no cover - not connected any more
                continue
            self.holders.setdefault(handle_id, set()).add(peer.name)
            asyncio.ensure_future(future).add_done_callback(_quiet)

    def _on_peer_lost(self, peer) -> None:
        for holders in self.holders.values():
            holders.discard(peer.name)

    async def _each(self, peers: list, method: str, *args) -> list:
        results = await asyncio.gather(*(p.call(SCATTER_SERVICE, method, *args) for p in peers),
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

