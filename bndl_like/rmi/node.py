"""A node of the cluster: one aiohttp application, its peers, discovery and liveness."""

from __future__ import annotations

import asyncio
import errno
import hmac
import itertools
import logging
import os
import random
import socket
import ssl as ssl_module
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from .. import config
from ..display import peer_html, peer_repr
from . import protocol
from .addresses import Address, advertised_hosts, parse_address, port_holder
from .connection import Connection, takes_peer
from .errors import HandshakeError, NotConnected, RemoteError
from .guard import OnceLog, PreAuthGuard, RateLimitedLog, quiet_accept_errors, raise_open_files_limit
from .protocol import Handshake
from .secrets import local_secret_path, read_secret_file, resolve_secret, status_token
from .tls import tls_contexts

log = logging.getLogger(__name__)

NODE_TYPES = ("driver", "worker", "supervisor")
_node_counter = itertools.count()
PORT_WALK = 100  # tcp://host:port+ walks up at most this far
FORGET_AFTER = 600.0  # a lost peer that was not a seed is redialled this long
REDIAL_MAX = 5.0  # the longest wait between two dials of an address that failed
DISCOVERY_INTERVAL = 0.25  # seconds between two looks at whom to dial, unless woken
# dial errors that waiting does not cure: the other side must change (its secret, its cluster)
FINAL_ERRORS = ("authentication failed", "cluster name mismatch", "protocol version mismatch")
# the reason sent with a planned close of an idle worker-to-worker connection: the other side
# forgets the connection, not the peer (no on_peer_lost)
PART_REASON = "idle connection closed"


# -- forked children ------------------------------------------------------------------------
# A process forked from one running a node (a task's os.fork, multiprocessing's fork) inherits
# its descriptors. A child holding the listening socket keeps the port bound, and one holding a
# connection keeps it open after this process died: the peer sees no EOF and waits for the
# heartbeat timeout. So the child drops its copies at once.
_live_nodes: weakref.WeakSet[Node] = weakref.WeakSet()


def _release_in_child(obj) -> None:
    """Close a forked child's copy of a socket's descriptor, the parent's stays as it is.

    ``detach`` first, so no later close of the object closes whatever reuses the number; never
    ``shutdown``, which would end the connection for the parent too."""
    sock = getattr(obj, "_sock", obj)  # asyncio's TransportSocket wraps the socket
    if not isinstance(sock, socket.socket):
        return
    fd = sock.detach()
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def _release_node_sockets() -> None:
    """``os.register_at_fork(after_in_child=...)``: the child gives up every node's sockets."""
    nodes = list(_live_nodes)
    _live_nodes.clear()  # none of them runs in the child
    for node in nodes:
        try:
            sockets = node._sockets_held()
        except Exception:  # pragma: no cover - best effort, the child must go on
            continue
        for sock in sockets:
            try:
                _release_in_child(sock)
            except Exception:  # pragma: no cover
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_release_node_sockets)


def _is_local(peer: Peer) -> bool:
    """Whether ``peer`` is on this host, judged by the address its connection came from."""
    conn = peer.connection
    if conn is None:
        return False
    host = conn.remote.rsplit(":", 1)[0]
    try:
        return parse_address(f"tcp://{host}:0").is_loopback
    except ValueError:
        return False


class _FrontDoor(asyncio.Protocol):
    """The first protocol of every accepted connection: an RMI upgrade request is read here
    (so the bytes behind it are kept), anything else is handed to aiohttp as it came."""

    RMI_REQUEST = b"GET /rmi "
    MAX_HEAD = 8192

    def __init__(self, node: Node):
        self.node = node
        self.transport = None
        self.data = bytearray()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.node._guard.admit(transport, transport.abort)

    def data_received(self, data: bytes) -> None:
        self.data += data
        prefix = self.RMI_REQUEST
        if not self.data.startswith(prefix[:len(self.data)]):
            self.node._to_http(self.transport, bytes(self.data))
            return
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            if len(self.data) > self.MAX_HEAD:
                self.transport.abort()
            return
        data = bytes(self.data)
        self.data = bytearray()
        self.node._to_rmi(self.transport, data[:end], data[end + 4:])

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        self.node._guard.release(self.transport)


class Peer:
    """A remote node as seen from this one; calls go over its preferred connection."""

    def __init__(self, node: Node, name: str, info: dict):
        self.node = node
        self.name = name
        self.update(info)
        self.connections: list[Connection] = []
        self.connection: Connection | None = None
        self.connected_since: float | None = None
        self.lost_reason: str | None = None
        self.last_used = 0.0  # the node's loop time of the last call either way (or of peer())

    def update(self, info: dict) -> None:
        self.node_type = info.get("node_type", "worker")
        self.addresses = list(info.get("addresses", ()))
        self.hostname = info.get("hostname", "")
        self.pid = info.get("pid")
        self.host = parse_address(self.addresses[0]).host if self.addresses else self.hostname

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.is_closed

    def _connection(self) -> Connection:
        conn = self.connection
        if conn is None or conn.is_closed:
            reason = f": {self.lost_reason}" if self.lost_reason else ""
            raise NotConnected(f"not connected to {self.name}{reason}")
        return conn

    def call(self, service: str, method: str, *args, **kwargs) -> Awaitable:
        """Call ``service.method(*args, **kwargs)`` on the peer; await the result.

        Returns a future (cheaper than a coroutine when many calls are gathered).
        Arguments that cannot be pickled raise SerializationError right here.
        """
        future = self._connection().call(service, method, args, kwargs)
        self.last_used = self.node.loop.time()
        return future

    def notify(self, service: str, method: str, *args, **kwargs) -> None:
        """Send a one-way call; errors on the peer are logged there."""
        self._connection().notify(service, method, args, kwargs)
        self.last_used = self.node.loop.time()

    def notify_plain(self, service: str, method: str, *args) -> None:
        """:meth:`notify` with arguments the caller knows to be plain: see
        :meth:`Connection.notify_plain`."""
        self._connection().notify_plain(service, method, args)
        self.last_used = self.node.loop.time()

    @property
    def idle(self) -> bool:
        """No call in flight either way on any of its connections."""
        return not any(c.pending_calls or c.in_progress for c in self.connections)

    def service(self, name: str) -> ServiceProxy:
        return ServiceProxy(self, name)

    def __repr__(self) -> str:
        return peer_repr(self)

    def _repr_html_(self) -> str:
        return peer_html(self)


class ServiceProxy:
    """``peer.service('tasks').run(...)`` is ``peer.call('tasks', 'run', ...)``."""

    def __init__(self, peer: Peer, name: str):
        self._peer = peer
        self._name = name

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args, **kwargs):
            return self._peer.call(self._name, method, *args, **kwargs)
        call.__name__ = method
        return call


class _RmiService:
    """The node's own service: gossip, addresses, planned closes and introspection."""

    def __init__(self, node: Node):
        self.node = node

    @takes_peer
    def gossip(self, peer: Peer, entries: list) -> None:
        self.node._learn(entries)

    @takes_peer
    def address_of(self, peer: Peer, name: str) -> dict | None:
        """How the caller may dial node ``name`` (``{"name", "node_type", "addresses"}``), or
        None when this node knows no address of it."""
        return self.node._address_entry(name, peer)

    @takes_peer
    def part(self, peer: Peer) -> bool:
        """The caller asks to close its idle connection: True when this node agrees (it
        then makes no more calls over it, and the caller closes it)."""
        return self.node._agree_to_part(peer)

    def ping(self) -> str:
        return self.node.name

    def status(self) -> dict:
        return self.node.status()


class Node:
    """One process of the cluster: server, peers, discovery, heartbeats.

    ``listen`` is ``tcp://host:port`` (port 0: any free port; a taken port
    walks up to the next free one). ``seeds`` are addresses to join. Nodes
    authenticate each other with HMAC over ``secret`` before anything else.
    """

    def __init__(self, name: str | None = None, node_type: str = "worker", *,
                 listen: str | None = None, seeds: Iterable[str] | None = None,
                 secret: str | bytes | None = None, cluster: str | None = None,
                 ssl_context: ssl_module.SSLContext | None = None,
                 client_ssl_context: ssl_module.SSLContext | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, tls_ca: str | None = None,
                 heartbeat_interval: float | None = None, heartbeat_timeout: float | None = None,
                 connect_timeout: float | None = None, max_message_size: int | None = None,
                 mesh: str | None = None, max_peer_connections: int | None = None,
                 idle_peer_timeout: float | None = None):
        if node_type not in NODE_TYPES:
            raise ValueError(f"node_type must be one of {NODE_TYPES}, not {node_type!r}")
        self.node_type = node_type
        self.name = name or f"{socket.gethostname()}.{os.getpid()}.{next(_node_counter)}"
        self.listen = parse_address(config.get("listen", listen))
        self.seeds = [parse_address(s) for s in (config.get("seeds", seeds) or [])]
        walking = [str(s) for s in self.seeds if s.walk]
        if walking:
            raise ValueError(f"a seed is one address: drop the '+' of {', '.join(walking)}")
        local_only = self.listen.is_loopback and all(s.is_loopback for s in self.seeds)
        self.secret = resolve_secret(secret, local_ok=local_only)
        self.cluster = config.get("cluster", cluster)
        if ssl_context is None and client_ssl_context is None:
            tls = [config.get(n, v) for n, v in (("tls_cert", tls_cert), ("tls_key", tls_key),
                                                  ("tls_ca", tls_ca))]
            if any(tls):
                ssl_context, client_ssl_context = tls_contexts(*tls)
        elif tls_cert or tls_key or tls_ca:
            raise ValueError("pass either tls_cert/tls_key/tls_ca or ssl_context, not both")
        self.ssl_context = ssl_context
        self.client_ssl_context = client_ssl_context
        if ssl_context is not None and client_ssl_context is None:
            raise ValueError("with ssl_context, also pass client_ssl_context for dialling peers")
        self.heartbeat_interval = config.get("heartbeat_interval", heartbeat_interval)
        self.heartbeat_timeout = config.get("heartbeat_timeout", heartbeat_timeout)
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(f"heartbeat_timeout ({self.heartbeat_timeout}) must be larger "
                             f"than heartbeat_interval ({self.heartbeat_interval})")
        self.connect_timeout = config.get("connect_timeout", connect_timeout)
        self.max_message_size = config.get("max_message_size", max_message_size)
        self.mesh = config.get("mesh", mesh)
        self.max_peer_connections = config.get("max_peer_connections", max_peer_connections)
        self.idle_peer_timeout = config.get("idle_peer_timeout", idle_peer_timeout)
        # a worker of an on-demand mesh dials its seeds and the drivers by itself, another
        # worker only when asked for it (peer()), and closes such connections when idle
        self.on_demand = self.mesh == "on_demand" and node_type == "worker"

        self.addresses: list[str] = []
        self.services: dict[str, Any] = {"_rmi": _RmiService(self)}
        self.peers: dict[str, Peer] = {}          # connected peers by name
        self._known: dict[str, Peer] = {}         # every peer ever seen, by name
        self._learned: dict[str, dict] = {}       # gossiped peers not (yet) connected
        self._learned_at: dict[str, float] = {}
        self._connections: set[Connection] = set()
        self._dialing: dict[str, asyncio.Task] = {}  # address -> dial task
        self._next_dial: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._dial_errors: dict[str, str] = {}    # address -> why its last dial failed
        self._address_names: dict[str, str] = {}  # address dialled -> the node that answered
        self._parting: dict[str, asyncio.Task] = {}  # peer name -> our request to close
        # connections of a planned close, no longer any peer's: the loop time from which
        # this node closes each once it is idle (at once on the side that asked)
        self._detached: dict[Connection, float] = {}
        # a dial that keeps failing is logged once, then counted (see OnceLog)
        self.dial_log = OnceLog(log)
        self.redial_max = REDIAL_MAX
        self.discovery_interval = DISCOVERY_INTERVAL
        self.discovery_rounds = 0  # looks at whom to dial so far
        self._self_addresses: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._wake: asyncio.Future | None = None
        self.on_peer_added: list[Callable[[Peer], Any]] = []
        self.on_peer_lost: list[Callable[[Peer], Any]] = []
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._guard: PreAuthGuard | None = None
        self._handler_transports: dict = {}  # aiohttp's handlers of unauthenticated connections
        # refusals and protocol errors: one log line per source address and interval
        self.refusals = RateLimitedLog(log)
        self._sock: socket.socket | None = None
        self.started_at: float | None = None
        self.running = False
        self._stopping = False

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.node_type} {self.addresses}>"

    # -- services ----------------------------------------------------------------------

    def add_service(self, name: str, service: Any) -> None:
        self.services[name] = service

    def resolve(self, service: str, method: str) -> Callable:
        try:
            obj = self.services[service]
        except KeyError:
            raise LookupError(f"node {self.name} has no service {service!r}") from None
        if method.startswith("_"):
            raise AttributeError(f"method {method!r} of service {service!r} is private")
        fn = getattr(obj, method, None)
        if not callable(fn):
            raise AttributeError(f"service {service!r} on node {self.name} has no method {method!r}")
        return fn

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.running:
            return
        self.loop = asyncio.get_running_loop()
        self._wake: asyncio.Future = self.loop.create_future()
        raised = raise_open_files_limit()
        if raised:
            log.debug("raised the open files limit from %d to %d", *raised)
        quiet_accept_errors()
        self._guard = PreAuthGuard(self.loop, self.connect_timeout, notices=self.refusals)
        app = web.Application(client_max_size=1 << 16)
        app.router.add_get("/status", self._handle_status)
        # an HTTP connection that sends no (complete) request is closed after connect_timeout
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.25,
                                     keepalive_timeout=self.connect_timeout, max_line_size=4096,
                                     max_field_size=4096)
        await self._runner.setup()
        self._guard_http(self._runner.server)
        self._sock = self._bind()
        _live_nodes.add(self)
        try:
            self._server = await self.loop.create_server(lambda: _FrontDoor(self), sock=self._sock,
                                                         ssl=self.ssl_context, backlog=512)
        except BaseException:
            _live_nodes.discard(self)
            self._sock.close()
            self._sock = None
            await self._runner.cleanup()
            raise
        port = self._sock.getsockname()[1]
        self.addresses = [str(Address(h, port)) for h in advertised_hosts(self.listen.host)]
        self.started_at = time.time()
        self.running = True
        self._spawn(self._discovery_loop(), "discovery")
        self._spawn(self._heartbeat_loop(), "heartbeat")
        if self.on_demand:
            self._spawn(self._peer_sweep_loop(), "peer sweep")
        log.info("%s (%s) listening on %s", self.name, self.node_type, ", ".join(self.addresses))

    def _sockets_held(self) -> list:
        """The listening socket and those of every connection in any state (before the
        upgrade, HTTP, RMI, closing), for a forked child to release."""
        transports = [conn.transport for conn in list(self._connections)]
        transports += list(self._handler_transports.values())
        if self._guard is not None:
            transports += list(self._guard._entries)
        # a connection closed but not yet flushed is only in its loop's registry (asyncio's
        # selector loops keep one, by descriptor)
        registry = getattr(getattr(self, "loop", None), "_transports", None)
        if registry is not None:
            transports += list(registry.values())
        found = [self._sock]
        for transport in transports:
            if transport is not None:
                found.append(transport.get_extra_info("socket"))
        return found

    def _guard_http(self, server: web.Server) -> None:
        """An HTTP connection handed to aiohttp counts against the pre-authentication caps
        until it closes (aiohttp's Server tells when its handlers' connections go)."""
        lost = server.connection_lost

        def connection_lost(handler, exc=None) -> None:
            lost(handler, exc)
            transport = self._handler_transports.pop(handler, None)
            if transport is not None:
                self._guard.release(transport)

        server.connection_lost = connection_lost

    def _to_http(self, transport, data: bytes) -> None:
        """Hand a connection that is not an RMI upgrade to aiohttp, with what it sent so far."""
        if self._runner is None or self._runner.server is None:
            transport.abort()
            return
        handler = self._runner.server()
        self._handler_transports[handler] = transport
        self._guard.hand_over(transport, transport.abort)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if data:
            handler.data_received(data)

    def _to_rmi(self, transport, head: bytes, rest: bytes) -> None:
        """Take over a connection that asked for the RMI upgrade (``head``: its request)."""
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get("upgrade", "").lower() != protocol.UPGRADE_TOKEN or self._stopping:
            status = "503 Service Unavailable" if self._stopping else "426 Upgrade Required"
            transport.write(f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                            .encode())
            transport.close()
            return
        peername = transport.get_extra_info("peername") or ("?", 0)
        conn = Connection(self, "server", self._handshake("server"),
                          remote=f"{peername[0]}:{peername[1]}")
        conn.handshake.check_peer = lambda info: self._check_peer(conn, info)
        self._connections.add(conn)
        # the guard closes it unless the handshake completes within connect_timeout
        self._guard.hand_over(transport, lambda: conn.close("handshake timed out", notify=False,
                                                            abort=True))
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if rest:
            conn.receive_early(rest)  # the client's HELLO comes right behind its request

    def _bind(self) -> socket.socket:
        """Bind the listen address: its port exactly, or with ``port+`` the next free one."""
        host, port, walk = self.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        last_error: OSError | None = None
        ports = range(port, min(port + PORT_WALK, 65536)) if walk else [port]
        for candidate in ports:
            sock = socket.socket(family, socket.SOCK_STREAM)
            # a restart may bind a port whose old connections linger in TIME_WAIT; on Linux
            # this never lets two sockets listen on one port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, candidate))
                sock.listen(512)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            sock.setblocking(False)
            if walk and candidate != port:
                log.info("%s: port %d is taken, listening on port %d", self.name, port, candidate)
            return sock
        if walk:
            raise OSError(last_error.errno if last_error else None,
                          f"cannot listen on {self.listen}: no free port in "
                          f"{port}..{port + PORT_WALK - 1} ({last_error})")
        holder = port_holder(port) if last_error and last_error.errno == errno.EADDRINUSE else None
        raise OSError(last_error.errno, f"cannot listen on {self.listen}: {last_error.strerror}"
                      + (f" (held by {holder})" if holder else "")
                      + f"; choose another port, or write tcp://{host}:{port}+ to take the next free one")

    async def stop(self) -> None:
        """Close every connection, the server and every background task. Idempotent."""
        if self._stopping or not self.running:
            return
        self._stopping = True
        started = self.loop.time()
        for task in [*self._tasks, *self._dialing.values()]:
            task.cancel()
        for conn in list(self._connections):
            conn.close(f"node {self.name} stopped")
        pending = [*self._tasks, *self._dialing.values()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for conn in list(self._connections):
            await conn.wait_tasks()
        tasks_done = self.loop.time()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._guard is not None:
            self._guard.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.loop.time() - started > 1.0:
            log.warning("%s: stopping took %.1fs (background tasks %.1fs, server %.1fs)", self.name,
                        self.loop.time() - started, tasks_done - started, self.loop.time() - tasks_done)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        _live_nodes.discard(self)
        self.running = False
        log.info("%s stopped", self.name)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = self.loop.create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: background task %s failed", self.name, task.get_name(),
                      exc_info=task.exception())

    # -- server side -------------------------------------------------------------------------

    async def _handle_status(self, request: web.Request) -> web.Response:
        """The node's status for a bearer of the status token; the protocol version to anyone."""
        expected = f"Bearer {status_token(self.secret)}"
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(errors="replace"), expected.encode()):
            return web.json_response(self.status())
        return web.json_response({"protocol": protocol.PROTOCOL_VERSION})

    def _handshake(self, role: str) -> Handshake:
        info = {"name": self.name, "node_type": self.node_type, "addresses": self.addresses,
                "hostname": socket.gethostname(), "pid": os.getpid()}
        return Handshake(role, self.secret, self.cluster, info)

    # -- client side ---------------------------------------------------------------------------

    async def peer(self, name: str) -> Peer:
        """The peer called ``name``, dialled if not connected now: at the addresses this node
        knows of it, else at those a connected driver knows.

        On an on-demand mesh a worker asks its drivers first: they are connected to every live
        node, so one they are not connected to (lost, e.g. a frozen process that accepts
        connections but never answers) fails at once instead of after a dial's timeout. A dial
        the other side dropped (e.g. its cap on connections still in their handshake, when many
        dial it at once) is tried again after a random wait; all within ``connect_timeout``
        (``heartbeat_timeout`` if shorter: no longer than a connected peer may be silent)."""
        peer = self.peers.get(name)
        if peer is not None:
            peer.last_used = self.loop.time()
            return peer
        deadline = self.loop.time() + min(self.connect_timeout, self.heartbeat_timeout)
        known = self._known.get(name)
        addresses = list(known.addresses if known else self._learned.get(name, {}).get("addresses", []))
        errors: list[str] = []
        asked = False
        delay = 0.05
        while True:
            if not asked and (self.on_demand or not addresses):
                asked = True
                addresses = await self._addresses_from_drivers(name, addresses, deadline)
            retry = False
            for address in addresses:
                found, transient = await self._dial_named(name, address, errors, deadline)
                if found is not None:
                    found.last_used = self.loop.time()
                    return found
                retry = retry or transient
            if not asked:  # this node's addresses of it failed: perhaps it has others now
                asked = True
                before = set(addresses)
                addresses = await self._addresses_from_drivers(name, addresses, deadline)
                if set(addresses) != before:
                    continue
            if not retry or self.loop.time() + delay > deadline:
                break
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)
        raise NotConnected(f"{name} is not connected and cannot be reached"
                           + (f": {'; '.join(errors[-3:])}" if errors else " (no known address)"))

    async def _addresses_from_drivers(self, name: str, addresses: list[str], deadline: float) -> list[str]:
        """The addresses of ``name`` the drivers know, then ``addresses``; raises NotConnected
        when the drivers that answered are none of them connected to it."""
        entry, connected = await self._ask_for_address(name, deadline)
        if connected is False:
            raise NotConnected(f"{name} is not connected and cannot be reached: no driver is "
                               "connected to it (lost, or not joined yet)")
        if entry is None:
            return addresses
        return [*entry["addresses"], *(a for a in addresses if a not in entry["addresses"])]

    async def _dial_named(self, name: str, address: str, errors: list[str],
                          deadline: float) -> tuple[Peer | None, bool]:
        """Dial ``address`` for node ``name``: the peer if connected now, and whether a failure
        may pass (the connection was dropped or refused for now, not the secret or the name)."""
        transient = False
        try:
            await asyncio.wait_for(self.connect(address), max(deadline - self.loop.time(), 0.001))
        except NotConnected as exc:
            errors.append(str(exc))
            transient = True
        except HandshakeError as exc:
            errors.append(str(exc))
        except asyncio.TimeoutError:
            errors.append(f"no answer from {address} in time")
        peer = self.peers.get(name)  # also when it dialled us meanwhile
        return peer, transient and peer is None

    async def _ask_for_address(self, name: str, deadline: float) -> tuple[dict | None, bool | None]:
        """Node ``name``'s entry as the connected drivers (and other non-workers) know it, and
        whether one is connected to it (None: none answered)."""
        found: dict | None = None
        connected = None
        for peer in [p for p in self.peers.values() if p.node_type != "worker"]:
            try:
                entry = await asyncio.wait_for(peer.call("_rmi", "address_of", name),
                                               max(deadline - self.loop.time(), 0.001))
            except (NotConnected, RemoteError, asyncio.TimeoutError) as exc:
                log.debug("%s: %s could not tell the address of %s: %r", self.name, peer.name,
                          name, exc)
                continue
            if not (isinstance(entry, dict) and entry.get("name") == name
                    and isinstance(entry.get("addresses"), list)):
                connected = connected or False  # it does not know of it
                continue
            if entry.get("connected", True):
                return entry, True
            found, connected = found or entry, False
        return found, connected

    def _address_entry(self, name: str, to: Peer) -> dict | None:
        """What ``to`` may dial of node ``name`` as far as this node knows, and whether this
        node is connected to it now (``"connected"``)."""
        peer = self.peers.get(name) or self._known.get(name)
        if peer is not None:
            # no address ``to`` may dial: the node dials out itself (it listens on loopback)
            entry = self._entry(peer, to) or {"name": name, "node_type": peer.node_type,
                                              "addresses": []}
        elif name in self._learned:
            entry = self._entry_for(self._learned[name], to)
            if entry is None:
                return None
        else:
            return None
        entry["connected"] = name in self.peers
        return entry

    async def connect(self, address: str) -> Peer:
        """Connect to the node at ``address`` (once, even when called concurrently)."""
        addr = str(parse_address(address))
        if not self.running or self._stopping:
            raise NotConnected(f"node {self.name} is not running")
        task = self._dialing.get(addr)
        if task is None:
            task = self.loop.create_task(self._dial(addr), name=f"{self.name}:dial {addr}")
            self._dialing[addr] = task
            task.add_done_callback(lambda t, a=addr: self._dial_done(a, t))
        return await asyncio.shield(task)

    def _dial_done(self, addr: str, task: asyncio.Task) -> None:
        self._dialing.pop(addr, None)
        if not task.cancelled():
            task.exception()  # retrieved by the callers of connect()

    async def _dial(self, addr: str) -> Peer:
        host, port, _ = parse_address(addr)
        conn = Connection(self, "client", self._handshake("client"), remote=f"{host}:{port}")
        conn.handshake.check_peer = lambda info: self._check_peer(conn, info, addr)
        self._connections.add(conn)
        async def open_and_handshake():
            await self.loop.create_connection(
                lambda: conn, host, port, ssl=self.client_ssl_context,
                server_hostname=host if self.client_ssl_context else None)
            await conn.established
        try:
            await asyncio.wait_for(open_and_handshake(), self.connect_timeout)
        except (OSError, asyncio.TimeoutError, HandshakeError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) and not isinstance(
                    exc, ConnectionError):
                reason = f"no handshake within {self.connect_timeout}s"
            if not conn.is_closed:
                conn.close(reason, notify=False, abort=True)
            self._connections.discard(conn)
            if isinstance(exc, HandshakeError):
                if exc.reason.endswith("is this node itself"):
                    self._self_addresses.add(addr)
                raise
            raise NotConnected(f"cannot connect to {addr}: {reason}") from exc
        except BaseException:
            conn.close("dial cancelled", notify=False, abort=True)
            self._connections.discard(conn)
            raise
        self._dial_errors.pop(addr, None)
        self.dial_log.forget(addr)
        return conn.peer

    # -- connection events ----------------------------------------------------------------------

    def _check_peer(self, conn: Connection, info: dict, dialled: str | None = None) -> None:
        """Refuse an authenticated peer that is this node itself or already connected (a
        crossing dial); raises HandshakeError.

        ``dialled``: the address this node dialled. A node is the same node whatever address
        reached it (``localhost`` or ``127.0.0.1``, a seed or a gossiped address): the address
        is remembered as that node's, so discovery does not dial it again while it is connected.
        """
        name = info["name"]
        if dialled is not None and name != self.name:
            self._address_names.pop(dialled, None)
            self._address_names[dialled] = name
            if len(self._address_names) > 4096:  # bounded, however many nodes come and go
                del self._address_names[next(iter(self._address_names))]
        if name == self.name:
            raise HandshakeError(f"{conn.remote} is this node itself")
        if conn.role != "client":
            self._proven(conn)
            return
        for other in self._connections:
            if other is not conn and other.role == "client" and other.peer_name == name \
                    and not other.is_closed and other not in self._detached:
                raise HandshakeError(f"already connected or connecting to {name}")
        peer = self.peers.get(name)
        if peer is not None and any(c.role == "client" for c in peer.connections):
            raise HandshakeError(f"already connected to {name}")

    def _proven(self, conn: Connection) -> None:
        """A client proved the secret: it stops counting against the caps on connections not
        authenticated yet, which would otherwise make room by closing it while its side, done
        already, sends its first calls (many workers dialling one at once). It still has to
        finish the handshake within connect_timeout."""
        if self._guard is None or conn.transport is None:
            return
        self._guard.release(conn.transport)

        def overdue() -> None:
            if not conn.is_closed and not conn.established.done():
                conn.close("handshake timed out", notify=False, abort=True)
        self.loop.call_later(self.connect_timeout, overdue)

    def _on_established(self, conn: Connection) -> None:
        if conn.transport is not None:
            self._guard.release(conn.transport)  # no longer counts against the pre-auth caps
        info = conn.handshake.peer_info
        name = info["name"]
        if self._stopping:
            conn.close("node stopping")
            return
        peer = self._known.get(name)
        if peer is None:
            peer = self._known[name] = Peer(self, name, info)
        else:
            peer.update(info)
        conn.peer = peer
        self._learned.pop(name, None)
        for addr in peer.addresses:
            self._backoff.pop(addr, None)
            self._dial_errors.pop(addr, None)
            self.dial_log.forget(addr)
        if conn.role == "server":
            # the peer dialled again: it gave up on its older connections to us
            for old in [c for c in peer.connections if c.role == "server"]:
                old.close("replaced by a newer connection from the peer")
        peer.connections.append(conn)
        self._choose_connection(peer)
        new = name not in self.peers
        if new:
            self.peers[name] = peer
            peer.connected_since = time.time()
            peer.last_used = self.loop.time()
            log.log(logging.DEBUG if self._is_on_demand(peer) else logging.INFO,
                    "%s: connected to %s (%s) at %s", self.name, name, peer.node_type,
                    ", ".join(peer.addresses))
            self._gossip_about(peer, conn)
            self._fire(self.on_peer_added, peer)
            if self._is_on_demand(peer):
                self._sweep_peers()  # over max_peer_connections: the least recently used goes

    def _choose_connection(self, peer: Peer) -> None:
        live = [c for c in peer.connections if not c.is_closed]
        if not live:
            peer.connection = None
            return
        best = min(live, key=lambda c: c.preference_key)
        peer.connection = best
        if len(live) > 1:
            for conn in live:
                if conn is not best:
                    conn.send_retire()
                    self._maybe_close_retired(conn)

    def _on_retired(self, conn: Connection) -> None:
        if conn.peer is not None:
            self._choose_connection(conn.peer)
        self._maybe_close_retired(conn)

    def _on_call_done(self, conn: Connection) -> None:
        """A call that ``conn`` served, or one it made, ended."""
        peer = conn.peer
        if peer is not None:
            peer.last_used = self.loop.time()
        if conn.retired_remote and conn.retired_local:
            self._maybe_close_retired(conn)
        if self._detached and conn in self._detached:
            self._close_detached(conn)

    def _maybe_close_retired(self, conn: Connection) -> None:
        peer = conn.peer
        if (conn.retired_local and conn.retired_remote and not conn.pending_calls
                and not conn.in_progress and peer is not None and peer.connection is not conn):
            conn.close("duplicate connection retired", notify=False)

    def _on_closed(self, conn: Connection) -> None:
        self._connections.discard(conn)
        self._detached.pop(conn, None)
        if self._guard is not None and conn.transport is not None:
            self._guard.release(conn.transport)
        peer = conn.peer
        if peer is None or conn not in peer.connections:
            return
        peer.connections.remove(conn)
        self._choose_connection(peer)
        if peer.connection is None and self.peers.get(peer.name) is peer:
            del self.peers[peer.name]
            peer.connected_since = None
            peer.lost_reason = conn.close_reason
            if conn.goodbye_reason == PART_REASON:
                # the peer closed an idle connection it had asked to close (and we agreed,
                # but our answer came late): it is not lost
                log.debug("%s: %s closed its idle connection", self.name, peer.name)
            elif not self._stopping:
                log.log(logging.INFO if conn.said_goodbye else logging.WARNING,
                        "%s: lost %s: %s", self.name, peer.name, conn.close_reason)
                if not conn.said_goodbye:  # a peer that stopped on purpose is not redialled
                    self._learned[peer.name] = {"name": peer.name, "node_type": peer.node_type,
                                                "addresses": peer.addresses}
                    self._learned_at[peer.name] = self.loop.time()
                self._fire(self.on_peer_lost, peer)
                self._wake_discovery()

    def _fire(self, listeners: list, peer: Peer) -> None:
        for listener in list(listeners):
            try:
                result = listener(peer)
                if asyncio.iscoroutine(result):
                    self._spawn(result, f"listener {getattr(listener, '__name__', listener)}")
            except Exception:
                log.exception("%s: peer listener %r failed", self.name, listener)

    # -- discovery --------------------------------------------------------------------------------

    def _gossip_about(self, new: Peer, conn: Connection) -> None:
        """Tell the new peer whom it should know of, and those who should know of it.

        Full mesh: everyone about everyone. On demand, only what keeps every driver knowing
        every node and every node knowing the drivers: a driver hears of all; a worker hears of
        the drivers, and of nothing from a worker it dialled itself (drivers knew of that one).
        """
        peers = [p for p in self.peers.values() if p is not new and p.connected]
        if self.mesh == "full" or new.node_type != "worker":
            mutual = peers
        elif self.node_type != "worker" or conn.role == "server":
            # a driver's new worker, or a worker that dialled us (a seed, perhaps): it may not
            # know the drivers, nor they it
            mutual = [p for p in peers if p.node_type != "worker"]
        else:
            mutual = []
        known = [e for p in mutual if (e := self._entry(p, new))]
        if self.node_type == "worker" and new.node_type != "worker" and self.mesh != "full":
            # the workers this one was told of and is not connected to (e.g. its siblings)
            known += [e for n, entry in self._learned.items() if entry.get("node_type") == "worker"
                      and n != new.name and (e := self._entry_for(entry, new))]
        try:
            if known:
                new.notify("_rmi", "gossip", known)
        except NotConnected:
            pass
        for peer in mutual:
            entry = self._entry(new, peer)
            if entry:
                try:
                    peer.notify("_rmi", "gossip", [entry])
                except NotConnected:
                    pass

    @staticmethod
    def _entry(about: Peer, to: Peer) -> dict | None:
        """What ``to`` may dial of ``about``: loopback addresses only if ``to`` is local."""
        return Node._entry_for({"name": about.name, "node_type": about.node_type,
                                "addresses": about.addresses}, to)

    @staticmethod
    def _entry_for(entry: dict, to: Peer) -> dict | None:
        """``entry`` with only the addresses ``to`` may dial; None when none is left."""
        addresses = list(entry.get("addresses", ()))
        if not _is_local(to):
            addresses = [a for a in addresses if not parse_address(a).is_loopback]
        if not addresses:
            return None  # the node dials out itself (e.g. a driver listening on loopback)
        return {"name": entry["name"], "node_type": entry.get("node_type", "worker"),
                "addresses": addresses}

    def _learn(self, entries: list) -> list[dict]:
        """Remember (and on a full mesh, or for a driver, dial) these nodes; the entries of
        those not heard of before."""
        now = self.loop.time()
        fresh = []
        for entry in entries:
            name = entry.get("name")
            if not name or name == self.name or name in self.peers:
                continue
            if name not in self._learned:
                self._learned_at[name] = now
                if name not in self._known:
                    fresh.append(entry)
            self._learned[name] = entry
        self._wake_discovery()
        return fresh

    def learn(self, entries: list[dict]) -> None:
        """Dial these nodes (``{"name", "node_type", "addresses"}`` each) as if a peer had told
        of them; call on the node's loop. A worker of an on-demand mesh dials only the drivers
        among them, and tells its drivers of the others (so they dial them)."""
        fresh = self._learn(entries)
        if not self.on_demand:
            return
        drivers = [p for p in self.peers.values() if p.node_type != "worker" and p.connected]
        for driver in drivers:
            told = [e for entry in fresh if (e := self._entry_for(entry, driver))]
            if told:
                try:
                    driver.notify("_rmi", "gossip", told)
                except NotConnected:
                    pass

    def _is_on_demand(self, peer: Peer) -> bool:
        """Whether this node's connection to ``peer`` is one made on demand (worker to worker)."""
        return self.on_demand and peer.node_type == "worker"

    def _seed_wanted(self, addr: str) -> bool:
        """Whether discovery dials seed ``addr``: on demand, a seed that is a worker only while
        no driver is connected (it is the way to find one)."""
        if not self.on_demand:
            return True
        known = self._known.get(self._address_names.get(addr, ""))
        if known is None or known.node_type != "worker":
            return True
        return not any(p.node_type != "worker" for p in self.peers.values())

    def _wake_discovery(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _own_address(self, addr: str) -> bool:
        return addr in self.addresses or addr in self._self_addresses

    def _connected_address(self, addr: str) -> bool:
        """Whether a connected peer has ``addr``, as its own or as an address it answered at."""
        if self._address_names.get(addr) in self.peers:
            return True
        return any(addr in peer.addresses for peer in self.peers.values())

    def _taken_by_another(self, name: str, addr: str) -> bool:
        """Whether another node, connected now, answered at ``addr`` since ``name`` was seen
        there: ``name`` is gone (a worker restarted on the same port under a new name)."""
        other = self._address_names.get(addr)
        return other is not None and other != name and other in self.peers

    async def _discovery_loop(self) -> None:
        """Dial seeds and gossiped peers that are not connected, with back-off."""
        while not self._stopping:
            if self._wake.done():  # a wake-up from now on ends the next wait early
                self._wake = self.loop.create_future()
            now = self.loop.time()
            targets = []
            for seed in self.seeds:
                addr = str(seed)
                if not self._own_address(addr) and not self._connected_address(addr) \
                        and self._seed_wanted(addr):
                    targets.append(addr)
            for name, entry in list(self._learned.items()):
                if name in self.peers:
                    self._learned.pop(name, None)
                    continue
                learned_at = self._learned_at.get(name, now)
                first = entry.get("addresses", ())[:1]
                if now - learned_at > FORGET_AFTER or (first and self._taken_by_another(name, first[0])):
                    self._learned.pop(name, None)  # gone: only seeds are tried
                    continue
                if self.on_demand and entry.get("node_type", "worker") == "worker":
                    continue  # in the address book, dialled when asked for (peer())
                # between workers the smaller name dials first and the other waits a little,
                # which avoids most crossing dials; a driver never waits
                if name < self.name and self.node_type != "driver" and now - learned_at < 0.5:
                    continue
                for addr in entry.get("addresses", ())[:1]:
                    targets.append(addr)
            for addr in targets:
                if addr in self._dialing or self._next_dial.get(addr, 0) > now:
                    continue
                self._dial_in_background(addr)
            # not wait_for(event.wait()): on 3.10/3.11 it can swallow the cancel of stop()
            # when the wake-up comes at the same moment (CPython gh-86296)
            self.discovery_rounds += 1
            await asyncio.wait((self._wake,), timeout=self.discovery_interval)

    def _dial_in_background(self, addr: str) -> None:
        async def dial():
            try:
                await self.connect(addr)
            except (NotConnected, HandshakeError, OSError) as exc:
                backoff = min(self._backoff.get(addr, 0.1) * 2, self.redial_max)
                self._backoff[addr] = backoff
                self._next_dial[addr] = self.loop.time() + backoff
                if isinstance(exc, HandshakeError) and exc.reason.startswith("already connected"):
                    # the node at addr is connected through another address: not a failure,
                    # and discovery no longer dials addr (see _check_peer)
                    log.debug("%s: %s is %s", self.name, addr, exc.reason)
                    return
                reason = self._describe_dial_error(addr, exc)
                self._dial_errors[addr] = reason
                is_seed = any(addr == str(seed) for seed in self.seeds)
                if is_seed or isinstance(exc, HandshakeError):
                    # one line per kind: "refused" or "reset" while a peer restarts is one
                    kind = next((f for f in FINAL_ERRORS if f in reason), "unreachable")
                    self.dial_log.log(addr, "%s: cannot reach %s %s: %s", self.name,
                                      "seed" if is_seed else "peer at", addr, reason, kind=kind)
                else:  # a lost peer's address: expected to fail until it is back
                    log.debug("%s: cannot connect to %s: %s", self.name, addr, reason)
        self._spawn(dial(), f"discover {addr}")

    def _describe_dial_error(self, addr: str, exc: BaseException) -> str:
        """Why dialling ``addr`` failed, in words a newcomer can act on."""
        cause = exc.__cause__ if isinstance(exc, NotConnected) else exc
        if isinstance(exc, HandshakeError):
            reason = exc.reason
            if "secrets of the two nodes differ" in reason or "could not prove the secret" in reason:
                if self._uses_local_secret():
                    return ("authentication failed: no secret given, so this node used the local "
                            f"secret of this user ({local_secret_path()}), which {addr} does not "
                            "share; give the cluster's secret (secret=..., BNDL_LIKE_SECRET or "
                            "--secret-file)")
                return "authentication failed: the secrets of the two nodes differ (a wrong secret)"
            if "cluster name mismatch" in reason:
                return f"another cluster: {reason}"  # "refused by the peer: ..." if it saw it first
            return reason
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused: nothing listens on that port"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host: {cause.strerror or cause}"
        if isinstance(cause, (asyncio.TimeoutError, TimeoutError)) and not isinstance(
                cause, ConnectionError):
            return f"timed out: no handshake within {self.connect_timeout}s"
        text = str(exc) or type(exc).__name__
        host, port, _ = parse_address(addr)
        for prefix in (f"cannot connect to {addr}: ", f"not connected to {host}:{port}: "):
            text = text[len(prefix):] if text.startswith(prefix) else text
        return text

    def _uses_local_secret(self) -> bool:
        """Whether this node's secret is the per-user local secret (none was given)."""
        path = local_secret_path()
        try:
            return os.path.exists(path) and hmac.compare_digest(read_secret_file(path), self.secret)
        except ValueError:
            return False

    def seed_errors(self) -> dict[str, str]:
        """The seeds not connected now, each with why its last dial failed."""
        errors = {}
        for seed in self.seeds:
            addr = str(seed)
            if self._own_address(addr) or self._connected_address(addr) or not self._seed_wanted(addr):
                continue
            errors[addr] = self._dial_errors.get(addr) or (
                "still dialling" if addr in self._dialing else "not dialled yet")
        return errors

    def seeds_final(self) -> bool:
        """Whether every seed is unreachable for a reason waiting does not cure (a wrong
        secret, another cluster): a caller waiting for peers can give up at once."""
        errors = self.seed_errors()
        return bool(self.seeds) and len(errors) == len(self.seeds) and all(
            any(final in reason for final in FINAL_ERRORS) for reason in errors.values())

    def unreachable_report(self, limit: int = 10) -> str:
        """Each seed not connected, and each peer heard of but not reached, with its error
        ("" when there is none), on one line."""
        parts = [f"seed {addr}: {reason}" for addr, reason in self.seed_errors().items()]
        for name, entry in list(self._learned.items()):
            first = entry.get("addresses", ())[:1]
            if first and first[0] in self._dial_errors and first[0] not in self.seed_errors():
                parts.append(f"{entry.get('node_type', 'node')} {name} at {first[0]}: "
                             f"{self._dial_errors[first[0]]}")
        if len(parts) > limit:
            parts[limit:] = [f"and {len(parts) - limit} more"]
        return "; ".join(parts)

    # -- liveness ------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.heartbeat_interval
        while not self._stopping:
            await asyncio.sleep(min(interval, self.heartbeat_timeout / 4))
            now = self.loop.time()
            for conn in list(self._connections):
                if conn.is_closed or not conn.established.done():
                    continue
                silent = now - conn.last_received
                if silent > self.heartbeat_timeout:
                    log.warning("%s: nothing from %s for %.1fs, declaring it lost", self.name,
                                conn.peer_name, silent)
                    conn.close(f"no heartbeat for {silent:.1f}s (heartbeat_timeout="
                               f"{self.heartbeat_timeout}s)", abort=True)
                elif now - conn.last_sent >= interval:
                    try:
                        conn.send_ping()
                    except NotConnected:
                        pass

    # -- on-demand connections -----------------------------------------------------------------
    # A worker of an on-demand mesh keeps at most max_peer_connections connections to other
    # workers and closes one idle for idle_peer_timeout. A close is agreed first, so neither
    # side takes it for a lost peer: the one that wants it asks (_rmi.part); the other agrees
    # when no call is in flight, and from then on calls that peer over a new connection; the
    # asker then closes the old one once its own calls on it (sent meanwhile) are answered.

    async def _peer_sweep_loop(self) -> None:
        interval = min(1.0, self.idle_peer_timeout / 4)
        while not self._stopping:
            await asyncio.sleep(interval)
            self._sweep_peers()

    def _sweep_peers(self) -> None:
        """Close the idle worker connections that are too many or unused for too long."""
        now = self.loop.time()
        for conn in list(self._detached):
            self._close_detached(conn)
        workers = [p for p in self.peers.values()
                   if self._is_on_demand(p) and p.name not in self._parting]
        idle = []
        for peer in workers:
            if peer.idle:
                idle.append(peer)
            else:
                peer.last_used = now
        idle.sort(key=lambda p: p.last_used)
        stale = [p for p in idle if now - p.last_used >= self.idle_peer_timeout]
        excess = len(workers) - len(stale) - self.max_peer_connections
        for peer in stale + idle[len(stale):len(stale) + max(excess, 0)]:
            self._start_part(peer)

    def _start_part(self, peer: Peer) -> None:
        if peer.name in self._parting or self._stopping:
            return
        conns = [c for c in peer.connections if not c.is_closed]
        self._parting[peer.name] = self._spawn(self._part(peer, conns), f"close idle {peer.name}")

    async def _part(self, peer: Peer, conns: list[Connection]) -> None:
        """Ask ``peer`` to agree to the close of ``conns``; close them if it does."""
        try:
            agreed = await asyncio.wait_for(peer.call("_rmi", "part"), self.connect_timeout)
        except (NotConnected, RemoteError, asyncio.TimeoutError) as exc:
            log.debug("%s: %s did not agree to close: %r", self.name, peer.name, exc)
            agreed = False
        finally:
            if self._parting.get(peer.name) is asyncio.current_task():
                del self._parting[peer.name]
        if agreed is not True:
            return
        log.debug("%s: closing the idle connection to %s", self.name, peer.name)
        # a connection that came up meanwhile stays (the peer agreed to close the others)
        now = self.loop.time()
        self._detach(peer, [c for c in conns if c in peer.connections], now)
        for conn in conns:
            if conn in self._detached:  # also when we agreed to the peer's own request first
                self._detached[conn] = now
                self._close_detached(conn)

    def _agree_to_part(self, peer: Peer) -> bool:
        """Whether this node lets ``peer`` close the connections between them (it then calls
        ``peer`` over a new one, and closes these itself only if ``peer`` does not)."""
        if not self._is_on_demand(peer) or self.peers.get(peer.name) is not peer:
            return False
        own_request = 1 if peer.name in self._parting else 0  # both asked at once: both agree
        if sum(c.pending_calls for c in peer.connections) > own_request or \
                sum(c.in_progress for c in peer.connections) > 1:  # 1: this very request
            return False
        grace = self.heartbeat_timeout  # the asker closes long before, unless it died meanwhile
        self._detach(peer, list(peer.connections), self.loop.time() + grace)
        return True

    def _detach(self, peer: Peer, conns: list[Connection], close_from: float) -> None:
        """Take ``conns`` from ``peer``: calls to it go over a new connection, and these
        close once idle (from ``close_from`` on) without it being lost."""
        for conn in conns:
            peer.connections.remove(conn)
            if not conn.is_closed:
                self._detached[conn] = close_from
        self._choose_connection(peer)
        if peer.connection is None and self.peers.get(peer.name) is peer:
            del self.peers[peer.name]
            peer.connected_since = None
            peer.lost_reason = PART_REASON
        for conn in conns:
            self._close_detached(conn)

    def _close_detached(self, conn: Connection) -> None:
        close_from = self._detached.get(conn)
        if close_from is None or conn.is_closed:
            self._detached.pop(conn, None)
        elif self.loop.time() >= close_from and not conn.pending_calls and not conn.in_progress:
            conn.close(PART_REASON)

    # -- waiting and status -------------------------------------------------------------------

    def status(self) -> dict:
        return {
            "name": self.name,
            "node_type": self.node_type,
            "cluster": self.cluster,
            "addresses": self.addresses,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "uptime": time.time() - self.started_at if self.started_at else 0.0,
            "protocol": protocol.PROTOCOL_VERSION,
            "mesh": self.mesh,
            "peers": [
                {"name": p.name, "node_type": p.node_type, "addresses": p.addresses,
                 "connected_for": time.time() - (p.connected_since or time.time()),
                 "calls_in_flight": p.connection.pending_calls if p.connection else 0}
                for p in self.peers.values()],
        }
