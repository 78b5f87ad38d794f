"""One peer connection: the asyncio shell around the protocol core.

After an HTTP upgrade on the node's aiohttp server (or, on the dialling side,
after reading the ``101 Switching Protocols`` answer) the socket is driven by
:class:`Connection`, an ``asyncio.BufferedProtocol``: bytes are received
straight into the frame decoder's buffers, small outgoing frames are corked
and written once per loop iteration, large buffers are written as they are.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections import deque

from . import protocol, serialize
from .errors import (
    HandshakeError,
    MessageTooLarge,
    NotConnected,
    ProtocolError,
    RemoteError,
    SerializationError,
)
from .pickle_check import unpicklable_result
from .protocol import Frame, FrameDecoder, Handshake
from .serialize import Payload

log = logging.getLogger(__name__)


def set_nodelay(transport) -> None:
    """Send small frames at once (no Nagle delay waiting for the peer's delayed ACK, ~40 ms).

    asyncio sets TCP_NODELAY only on sockets whose ``proto`` is IPPROTO_TCP, which a socket
    accepted from a listener made with ``socket.socket()`` (proto 0) is not."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # already closed
            pass

# message tuples, the first item says which
REQUEST, RESPONSE, FAILURE, NOTICE = 0, 1, 2, 3

# refusals that are part of normal operation: two nodes dialling each other at once, a node
# reaching itself through a gossiped address
BENIGN_REFUSALS = ("already connected", "is this node itself")
# the receive buffer of an authenticated connection (an unauthenticated one has a small one)
RECEIVE_BUFFER = 1 << 18
CORK_LIMIT = 1 << 16
# frames larger than this are streamed out in steps of STREAM_STEP as the socket drains
STREAM_MIN = 1 << 20
STREAM_STEP = 1 << 20


def takes_peer(fn):
    """Mark a service method to receive the calling :class:`Peer` as first argument."""
    fn._rmi_takes_peer = True
    return fn


class Connection(asyncio.BufferedProtocol):
    def __init__(self, node, role: str, handshake: Handshake, remote: str = "?"):
        self.node = node
        self.role = role
        self.handshake = handshake
        self.remote = remote  # the address of the other end, for messages
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        # until the peer proved the secret: handshake frames only, small, no out-of-band parts
        self.decoder = FrameDecoder(protocol.HANDSHAKE_MAX_MESSAGE, protocol.HANDSHAKE_BUFFER,
                                    kinds=protocol.HANDSHAKE_KINDS, max_parts=0)
        self.decoder.one_frame = True
        self._awaiting_upgrade = role == "client"
        self._http = bytearray()
        self._http_view = memoryview(bytearray(4096)) if role == "client" else None
        self.established: asyncio.Future = self.loop.create_future()
        self.established.add_done_callback(_consume)
        self.closed: asyncio.Future = self.loop.create_future()
        self.is_closed = False
        self.close_reason: str | None = None
        self.peer = None  # the Peer once established
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self.in_progress = 0
        self._tasks: set[asyncio.Task] = set()
        self._out: list = []
        self._streaming = False
        self._backlog: deque = deque()
        self._flush_handle = None
        self._paused = False
        self._drain_waiters: list[asyncio.Future] = []
        now = self.loop.time()
        self.last_received = now
        self.last_sent = now
        self.retired_local = False
        self.said_goodbye = False  # the peer closed on purpose (a CLOSE frame), e.g. it stopped
        self.goodbye_reason: str | None = None  # the reason its CLOSE frame gave
        self.retired_remote = False
        self.max_message_size = node.max_message_size

    # -- identity ----------------------------------------------------------------

    @property
    def peer_name(self) -> str | None:
        return self.handshake.peer_name

    @property
    def client_name(self) -> str:
        return self.node.name if self.role == "client" else self.peer_name

    @property
    def preference_key(self) -> tuple:
        """Among connections to one peer both ends keep the one with the smallest key."""
        client_nonce = self.handshake.nonce if self.role == "client" else self.handshake.peer_nonce
        return (self.client_name, client_nonce)

    @property
    def source(self) -> str:
        """The host of the other end: what refusals are counted by."""
        return self.remote.rsplit(":", 1)[0]

    @property
    def pending_calls(self) -> int:
        return len(self._pending)

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else ("up" if self.established.done() else "handshake")
        return f"<Connection {self.role} {self.node.name}<->{self.peer_name or self.remote} {state}>"

    # -- asyncio protocol --------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        set_nodelay(transport)
        if self.role == "client":
            # the HELLO goes right behind the upgrade request: the server keeps those bytes
            host = self.remote
            transport.write(
                f"GET /rmi HTTP/1.1\r\nHost: {host}\r\nUpgrade: {protocol.UPGRADE_TOKEN}\r\n"
                f"Connection: Upgrade\r\nContent-Length: 0\r\n\r\n".encode()
                + b"".join(self.handshake.start()))
        else:
            transport.write(
                f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol.UPGRADE_TOKEN}\r\n"
                f"Connection: Upgrade\r\n\r\n".encode() + b"".join(self.handshake.start()))

    def receive_early(self, data: bytes) -> None:
        """Bytes the peer sent behind its upgrade request, before this protocol took over."""
        data = memoryview(data)
        while data and not self.is_closed:
            buf = self.get_buffer(-1)
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            data = data[n:]
            self.buffer_updated(n)

    def get_buffer(self, sizehint: int):
        if self._awaiting_upgrade:
            return self._http_view
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self.is_closed:
            return
        self.last_received = self.loop.time()
        try:
            if self._awaiting_upgrade:
                self._on_upgrade_bytes(nbytes)
                return
            self._on_frames(self.decoder.buffer_updated(nbytes))
        except ProtocolError as exc:
            self.node.refusals.log(self.source, "%s: closing connection %s %s: %s",
                                   self.node.name,
                                   "to" if self.role == "client" else "from", self._who(), exc)
            # a CLOSE would be sealed with the keys of a stream that can no longer be trusted
            self.close(f"protocol error: {exc}", notify=False, abort=True)
        except HandshakeError as exc:
            self._handshake_failed(exc)

    def _on_frames(self, frames: list) -> None:
        while frames:
            one_at_a_time = self.decoder.one_frame
            for frame in frames:
                if self.is_closed:
                    return
                self._on_frame(frame)
            if not one_at_a_time:
                break
            # in the handshake frames are parsed one by one, under the limits of the moment
            frames = self.decoder.buffer_updated(0)

    def eof_received(self):
        return False  # close the transport

    def connection_lost(self, exc) -> None:
        if not self.is_closed:
            if exc is None:
                reason = "closed by the peer"
            else:
                reason = f"connection lost: {exc}"
            self.close(reason, notify=False)
        self.transport = None
        self._wake_drainers()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainers()

    def _wake_drainers(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()


    # -- handshake ----------------------------------------------------------------------

    def _on_upgrade_bytes(self, nbytes: int) -> None:
        self._http += self._http_view[:nbytes]
        end = self._http.find(b"\r\n\r\n")
        if end < 0:
            if len(self._http) > 16384:
                raise ProtocolError("no HTTP upgrade answer in the first 16 KiB")
            return
        status = bytes(self._http[:self._http.find(b"\r\n")])
        if not status.startswith(b"HTTP/1.1 101"):
            answer = status.decode(errors="replace")
            if status.startswith(b"HTTP/1.1 503"):  # what a node says while it stops
                self.close(f"{self.remote} is stopping (answered {answer!r})", notify=False)
            else:
                self.close(f"{self.remote} is not a bndl-like node or refused the upgrade "
                           f"(answered {answer!r})", notify=False)
            return
        rest = bytes(self._http[end + 4:])
        self._awaiting_upgrade = False
        self._http = self._http_view = None
        if rest:
            self._on_frames(self.decoder.feed(rest))

    def _handshake_failed(self, exc: HandshakeError) -> None:
        if exc.reject and self.transport is not None:
            self._write(exc.reject)
            self._flush()
        direction = "to" if self.role == "client" else "from"
        # a dial of this node's own fails to its caller, and discovery logs it once (Node.dial_log)
        if self.role == "client" or any(benign in exc.reason for benign in BENIGN_REFUSALS):
            log.debug("%s: refused connection %s %s: %s", self.node.name, direction, self._who(), exc.reason)
        else:
            # one line per source and kind of refusal and interval, however many connections fail
            kind = exc.reason.split(":", 1)[0][:60]
            self.node.refusals.log(f"{self.source} {kind}", "%s: refused connection %s %s: %s",
                                   self.node.name, direction, self._who(), exc.reason)
        if not self.established.done():
            self.established.set_exception(exc)
        self.close(exc.reason, notify=False)

    def _on_handshake_frame(self, frame: Frame) -> None:
        handshake = self.handshake
        out = handshake.receive(frame)
        if out:
            self._write(out)
        if handshake.opener is not None and self.decoder.opener is None:
            # the peer proved the secret: from its next frame on every frame is sealed, and
            # only now may it send large frames and out-of-band parts
            decoder = self.decoder
            decoder.seal(handshake.opener)
            decoder.max_message_size = self.max_message_size
            decoder.kinds = frozenset(protocol.KIND_NAMES)
            decoder.max_parts = protocol.MAX_PARTS
            decoder.resize(RECEIVE_BUFFER)
        if handshake.done:
            self.decoder.one_frame = False
            self.node._on_established(self)
            if not self.established.done():
                self.established.set_result(self)

    # -- frames and messages ---------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        kind = frame.kind
        if kind == protocol.MESSAGE and self.handshake.done:
            try:
                msg = serialize.loads(frame.main, frame.parts)
            except SerializationError as exc:
                self._on_undecodable(frame, exc)
                return
            self._on_message(msg)
        elif kind == protocol.PING:
            pass
        elif kind == protocol.CLOSE:
            reason = protocol.clean_text(bytes(frame.main).decode(errors="replace"), 300) \
                or "no reason given"
            self.said_goodbye, self.goodbye_reason = True, reason
            self.close(f"closed by the peer: {reason}", notify=False)
        elif kind == protocol.RETIRE and self.handshake.done:
            self.retired_remote = True
            self.node._on_retired(self)
        elif not self.handshake.done:
            self._on_handshake_frame(frame)
        else:
            raise ProtocolError(f"unexpected {protocol.KIND_NAMES.get(kind, kind)} frame")

    def _on_undecodable(self, frame: Frame, exc: Exception) -> None:
        # we can't know which call it answered unless the header survived: fail nothing
        # silently, but keep the connection (the peer is authenticated and alive)
        log.error("%s: could not unpickle a message from %s: %s", self.node.name, self._who(), exc)

    def _on_message(self, msg) -> None:
        kind = _envelope_kind(msg)
        if kind == RESPONSE:
            pending = self._pending.pop(msg[1], None)
            if pending is not None and not pending[0].done():
                if msg[2].nbytes >= serialize.LOAD_IN_THREAD:
                    task = self.loop.create_task(self._load_response(pending, msg[2]))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    self._set_response(pending, msg[2].load)
            self.node._on_call_done(self)
        elif kind == FAILURE:
            pending = self._pending.pop(msg[1], None)
            if pending is not None and not pending[0].done():
                pending[0].set_exception(self._remote_error(msg[2]))
            self.node._on_call_done(self)
        else:
            self._handle_request(msg[1], msg[2], msg[3], msg[4])

    def _set_response(self, pending: tuple, load) -> None:
        future, service, method = pending
        try:
            result = load()
        except SerializationError as exc:
            result, error = None, SerializationError(
                f"the result of {_what(service, method)} from {self._who()} cannot be "
                f"unpickled on {self.node.node_type} {self.node.name}: {exc}")
        else:
            error = None
        if not future.done():
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    async def _load_response(self, pending: tuple, payload: Payload) -> None:
        """Unpickle a large response in a thread: the loop keeps serving meanwhile."""
        try:
            result = await asyncio.to_thread(payload.load)
        except SerializationError as exc:
            error = exc

            def load():
                raise error
        else:
            def load():
                return result
        self._set_response(pending, load)

    def _handle_request(self, request_id, service, method, payload) -> None:
        self.in_progress += 1
        try:
            try:
                if type(payload) is tuple:  # plain arguments, in the envelope (notify_plain)
                    args, kwargs = payload, {}
                else:
                    args, kwargs = payload.load()
            except SerializationError as exc:
                raise SerializationError(
                    f"the arguments of {_what(service, method)} from {self._who()} cannot be "
                    f"unpickled on {self.node.node_type} {self.node.name}: {exc}") from None
            if type(args) is not tuple or type(kwargs) is not dict:
                raise TypeError(f"malformed call of {service}.{method}: arguments of types "
                                f"{type(args).__name__} and {type(kwargs).__name__}")
            try:
                fn = self.node.resolve(service, method)
            except (LookupError, AttributeError) as exc:
                if request_id is not None:
                    raise  # (the caller is told)
                # a notice for what this node does not offer: one line, nobody to answer
                log.warning("%s: notice %s.%s from %s ignored: %s", self.node.name, service, method,
                            self._who(), exc)
                result = None
            else:
                if getattr(fn, "_rmi_takes_peer", False):
                    args = (self.peer, *args)
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    task = self.loop.create_task(self._finish_async(request_id, result, service, method))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    return
        except Exception as exc:
            self._respond_failure(request_id, exc, service, method)
        else:
            self._respond(request_id, result, service, method)
        self.in_progress -= 1
        self.node._on_call_done(self)

    async def _finish_async(self, request_id, awaitable, service, method) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if self.is_closed:
                return
            self._respond_failure(request_id, NotConnected("call cancelled on the remote node"),
                                  service, method)
        except Exception as exc:
            self._respond_failure(request_id, exc, service, method)
        else:
            self._respond(request_id, result, service, method)
        finally:
            self.in_progress -= 1
            self.node._on_call_done(self)

    def _respond(self, request_id, result, service, method) -> None:
        if request_id is None or self.is_closed:
            return
        try:
            self._send_message((RESPONSE, request_id, Payload.dump(result)))
        except SerializationError as exc:
            what = f"the result of {_what(service, method)}"
            self._respond_failure(request_id, unpicklable_result(f"{what} cannot be sent back", result, exc),
                                  service, method)
        except MessageTooLarge as exc:
            self._respond_failure(request_id, exc, service, method)

    def _respond_failure(self, request_id, exc: BaseException, service, method) -> None:
        if request_id is None:
            log.error("%s: notice %s.%s from %s failed", self.node.name, service, method,
                      self._who(), exc_info=exc)
            return
        if self.is_closed:
            return
        info = serialize.dump_exception(exc)
        try:
            self._send_message((FAILURE, request_id, info))
        except (SerializationError, MessageTooLarge):
            self._send_message((FAILURE, request_id, (None, *info[1:4], None)))

    def _remote_error(self, info) -> RemoteError:
        payload, exc_type, text, tb_text, frames = info
        error = RemoteError(f"{exc_type}: {text}", exc_type, tb_text, self.peer_name)
        cause = serialize.load_exception(payload, frames)
        if cause is not None:
            error.__cause__ = cause
        return error

    # -- sending ------------------------------------------------------------------------------

    def _send_message(self, msg) -> None:
        data, buffers = serialize.dump_envelope(msg)
        size = len(data) + sum(b.nbytes for b in buffers)
        if size > self.max_message_size:
            raise MessageTooLarge(f"message of {size} bytes exceeds the maximum message size "
                                  f"of {self.max_message_size} bytes (rmi max_message_size)")
        self._send_frame(protocol.MESSAGE, data, buffers, size)

    def _send_frame(self, kind: int, main: bytes = b"", parts=(), size: int = 0) -> None:
        """Seal (once the handshake is through) and write one frame."""
        if self.transport is None:
            raise NotConnected(self._lost_message())
        sealer = self.handshake.sealer
        if sealer is None:
            self._write(protocol.encode(kind, main, parts))
        elif size <= STREAM_MIN:
            self._write(sealer.seal(kind, main, parts))
        else:
            self._write(sealer.seal_stream(kind, main, parts, STREAM_STEP))

    def _write(self, chunks) -> None:
        """Write a frame: a list of chunks, or an iterator of pieces to stream as the socket drains."""
        if self.transport is None:
            raise NotConnected(self._lost_message())
        self.last_sent = self.loop.time()
        if self._streaming:
            self._backlog.append(chunks)  # behind the large frame being streamed out
            return
        if type(chunks) is list:
            if len(chunks) == 1 and len(chunks[0]) < CORK_LIMIT:
                self._out.append(chunks[0])
                if self._flush_handle is None:
                    self._flush_handle = self.loop.call_soon(self._flush)
                return
            self._flush()
            for chunk in chunks:
                self.transport.write(chunk)
            return
        self._flush()
        self._streaming = True
        task = self.loop.create_task(self._stream(chunks))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream(self, pieces) -> None:
        """Write a large frame in steps as the socket drains.

        One ``transport.write`` of the whole frame would copy all that the first
        send() did not take into the transport's buffer; in steps, at most a step is.
        The sealer hashes each piece as it is taken, so the MAC overlaps the sending.
        """
        for piece in pieces:
            view = memoryview(piece).cast("B")
            for offset in range(0, view.nbytes, STREAM_STEP):
                if self.transport is None or self.is_closed:
                    return
                self.transport.write(view[offset:offset + STREAM_STEP])
                if self._paused:
                    waiter = self.loop.create_future()
                    self._drain_waiters.append(waiter)
                    await waiter
        self._streaming = False
        while self._backlog and not self._streaming and not self.is_closed:
            self._write(self._backlog.popleft())

    def _flush(self) -> None:
        self._flush_handle = None
        if self._out and self.transport is not None:
            out = self._out
            self._out = []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def flush(self) -> None:
        """Write the corked frames now instead of at the end of the loop's iteration: for a
        caller that just sent the last message of its batch (on the loop thread)."""
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush()

    def send_ping(self) -> None:
        self._send_frame(protocol.PING)

    def send_retire(self) -> None:
        if not self.retired_local and not self.is_closed:
            self.retired_local = True
            self._send_frame(protocol.RETIRE)

    def call(self, service: str, method: str, args: tuple, kwargs: dict) -> asyncio.Future:
        """Send a request; the returned future resolves with the response.

        A plain future rather than a coroutine: nothing to wrap in a Task when many
        calls are gathered, which roughly halves the cost of a pipelined call.
        """
        if self.is_closed:
            raise NotConnected(self._lost_message())
        self._next_id += 1
        request_id = self._next_id
        self._send_message((REQUEST, request_id, service, method, _arguments(args, kwargs)))
        future = self.loop.create_future()
        self._pending[request_id] = (future, service, method)
        return future

    def notify_plain(self, service: str, method: str, args: tuple) -> None:
        """A notice whose arguments go in the envelope itself, not in a payload of their own:
        for arguments the caller knows always unpickle (builtins — ints, strings, tuples and
        lists of them — and :class:`Payload`). One pickle less each way on hot paths."""
        if self.is_closed:
            raise NotConnected(self._lost_message())
        self._send_message((NOTICE, None, service, method, args))

    def notify(self, service: str, method: str, args: tuple, kwargs: dict) -> None:
        if self.is_closed:
            raise NotConnected(self._lost_message())
        self._send_message((NOTICE, None, service, method, _arguments(args, kwargs)))

    # -- closing -----------------------------------------------------------------------------

    def _who(self) -> str:
        if self.peer_name:
            return f"{self.peer_name} ({self.remote})"
        return self.remote

    def _lost_message(self) -> str:
        return f"not connected to {self._who()}: {self.close_reason or 'connection closed'}"

    def close(self, reason: str, *, notify: bool = True, abort: bool = False) -> None:
        """Close now: every call in flight fails with NotConnected at once."""
        if self.is_closed:
            return
        self.is_closed = True
        self.close_reason = reason
        self.handshake.check_peer = None  # a closure over this connection: no cycle to wait for
        transport = self.transport
        if transport is not None:
            try:
                if notify and not abort and self.handshake.done:
                    self._send_frame(protocol.CLOSE, reason.encode()[:1024])
                self._flush()
            except Exception:  # pragma: no cover - the transport is going anyway
                pass
            if abort:
                transport.abort()
            else:
                transport.close()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        error = NotConnected(self._lost_message())
        pending, self._pending = self._pending, {}
        for future, _, _ in pending.values():
            if not future.done():
                future.set_exception(error)
        for task in list(self._tasks):
            task.cancel()
        if not self.established.done():
            self.established.set_exception(NotConnected(self._lost_message()))
        self._wake_drainers()
        self.node._on_closed(self)
        if not self.closed.done():
            self.closed.set_result(reason)

    async def wait_tasks(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _arguments(args: tuple, kwargs: dict) -> Payload:
    """A call's arguments as one payload of their own (large bytes among them out of band)."""
    return Payload(*serialize.dumps((serialize.wrap_large(args), serialize.wrap_large(kwargs))))


def _what(service: str, method: str) -> str:
    return "the function" if service == "functions" else f"{service}.{method}"


def _envelope_kind(msg) -> int:
    """The kind of a message after checking its shape; ProtocolError names what is wrong."""
    if type(msg) is not tuple or len(msg) < 3:
        raise ProtocolError(f"malformed message: expected a message tuple, got {type(msg).__name__}")
    kind = msg[0]
    if kind in (RESPONSE, FAILURE) and len(msg) == 3 and type(msg[1]) is int:
        if kind == RESPONSE and type(msg[2]) is not Payload:
            raise ProtocolError("malformed message: a response without its payload")
        if kind == FAILURE and (type(msg[2]) is not tuple or len(msg[2]) != 5
                                or (msg[2][0] is not None and type(msg[2][0]) is not Payload)):
            raise ProtocolError("malformed message: a failure without its 5-field error")
        return kind
    if kind in (REQUEST, NOTICE) and len(msg) == 5:
        _, request_id, service, method, payload = msg
        if ((type(request_id) is int) == (kind == REQUEST) and (kind == REQUEST or request_id is None)
                and type(service) is str and type(method) is str
                and (type(payload) is Payload or (kind == NOTICE and type(payload) is tuple))):
            return kind
        raise ProtocolError(f"malformed message: a {'request' if kind == REQUEST else 'notice'} "
                            "needs an id, service and method names and its arguments' payload")
    raise ProtocolError(f"malformed message of kind {protocol.clean_text(repr(kind), 40)} "
                        f"and {len(msg)} fields")


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
