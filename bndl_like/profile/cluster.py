"""What CPU and memory profiling share on the driver: a profiling session on every worker
(also those that join while it runs), and collecting its data from them.

All bookkeeping happens on the context's event loop thread; the public methods of the
subclasses block on it, each wait bounded.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from typing import Any

from ..rmi import NotConnected
from .report import LOST, missing_notes

log = logging.getLogger(__name__)
_STDOUT_AT_IMPORT = sys.stdout


def output(file):
    """``file``, or the current ``sys.stdout`` when given the one of import time."""
    return sys.stdout if file is _STDOUT_AT_IMPORT or file is None else file


class ClusterProfiler:
    """A profiler run on every worker of an ExecutionContext under one session id."""

    kind = ""  # the prefix of the service's methods: "cpu" or "memory"
    call_timeout = 60.0  # seconds a worker may take to answer

    def __init__(self, ctx):
        self._ctx = ctx
        self._session: str | None = None
        self._args: tuple = ()
        self._running = False
        self._include_driver = False
        self._workers: set[str] = set()  # profiled in this session
        self._missing: dict[str, str] = {}  # worker -> why its data is missing

    @property
    def running(self) -> bool:
        """Whether the profiler is on."""
        return self._running

    @property
    def missing(self) -> dict[str, str]:
        """Profiled workers whose data is missing (as of the last start, stop or collection),
        with the reason: ``"was lost"``, a timeout, an error."""
        return dict(self._missing)

    def missing_notes(self) -> list[str]:
        """One line per worker whose data is missing."""
        return missing_notes(self._missing)

    # -- driver process -------------------------------------------------------------------------

    def _start_driver(self) -> None:
        raise NotImplementedError

    def _stop_driver(self) -> None:
        raise NotImplementedError

    def _driver_data(self) -> Any:
        raise NotImplementedError

    @property
    def _driver_name(self) -> str | None:
        return self._ctx.node.name if self._include_driver else None

    # -- start and stop -----------------------------------------------------------------------

    def _start(self, args: tuple, include_driver: bool) -> None:
        if self._running:
            raise RuntimeError(f"{self.kind} profiling is running already; stop() it first")
        if not self._ctx.node.running:
            raise RuntimeError("the ExecutionContext is closed")
        self._session = uuid.uuid4().hex
        self._args = args
        self._include_driver = bool(include_driver)
        self._workers = set()
        self._missing = {}
        self._running = True
        try:
            if self._include_driver:
                self._start_driver()
            self._ctx._portal.run(self._start_workers, self.call_timeout + 5)
        except BaseException:
            self.stop()  # undoes what was done
            raise

    async def _start_workers(self) -> None:
        node = self._ctx.node
        node.on_peer_added.append(self._peer_added)
        node.on_peer_lost.append(self._peer_lost)
        await asyncio.gather(*(self._start_worker(peer) for peer in self._ctx.workers))

    def _peer_added(self, peer):
        if self._running and peer.node_type == "worker":
            return self._start_worker(peer)  # a coroutine: the node runs it
        return None

    def _peer_lost(self, peer) -> None:
        if peer.name in self._workers:
            self._missing[peer.name] = LOST

    async def _start_worker(self, peer) -> None:
        self._workers.add(peer.name)
        self._missing.pop(peer.name, None)
        await self._call(peer.name, "start", self._session, *self._args)

    def stop(self) -> None:
        """Stop the profiler on every worker (and the driver); the data stays to be read. Idempotent."""
        if not self._running:
            return
        try:
            if self._ctx.node.running:
                self._ctx._portal.run(self._stop_workers, self.call_timeout + 5)
        finally:
            self._running = False
            if self._include_driver:
                self._stop_driver()

    async def _stop_workers(self) -> None:
        node = self._ctx.node
        for listeners, listener in ((node.on_peer_added, self._peer_added),
                                    (node.on_peer_lost, self._peer_lost)):
            if listener in listeners:
                listeners.remove(listener)
        self._running = False
        await asyncio.gather(*(self._call(name, "stop", self._session) for name in sorted(self._workers)))

    def __enter__(self):
        if not self._running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):
        """Start profiling (each subclass has its options)."""
        raise NotImplementedError

    # -- collecting -----------------------------------------------------------------------------

    def _collect(self, method: str) -> dict[str, Any]:
        """``{node name: data}`` from every profiled worker that answers, and the driver."""
        if self._session is None:
            return {}
        results: dict[str, Any] = {}
        if self._ctx.node.running:
            results = self._ctx._portal.run(lambda: self._gather(method), self.call_timeout + 5)
        else:
            self._missing.update({name: "the ExecutionContext is closed" for name in self._workers})
        if self._include_driver:
            results[self._ctx.node.name] = self._driver_data()
        return results

    async def _gather(self, method: str) -> dict[str, Any]:
        names = sorted(self._workers)
        found = await asyncio.gather(*(self._call(name, method, self._session) for name in names))
        results = {}
        for name, data in zip(names, found, strict=True):
            if data is None:
                self._missing.setdefault(name, "it has no data of this profile; another driver "
                                               "may have restarted profiling there")
            else:
                self._missing.pop(name, None)
                results[name] = data
        return results

    async def _call(self, name: str, method: str, *args) -> Any:
        """Call ``profiling.<kind>_<method>`` on a worker; None (and a reason noted) on failure."""
        peer = self._ctx.node.peers.get(name)
        if peer is None:
            self._missing[name] = LOST
            return None
        try:
            return await asyncio.wait_for(peer.call("profiling", f"{self.kind}_{method}", *args),
                                          self.call_timeout)
        except NotConnected:
            self._missing[name] = LOST
        except asyncio.TimeoutError:
            self._missing[name] = f"no answer within {self.call_timeout:.0f}s"
        except Exception as exc:
            first_line = (str(exc).splitlines() or [""])[0]
            self._missing[name] = f"{method} failed: {type(exc).__name__}: {first_line}"
            log.warning("%s profiling: %s on %s failed", self.kind, method, name, exc_info=True)
        return None
