"""The wire protocol as a sans-I/O core: framing and the authenticating handshake.

Nothing here touches a socket, a clock or an event loop; the transport shell
(:mod:`bndl_like.rmi.connection`) feeds bytes in and writes the bytes it is
given. That keeps every rule of the protocol testable without a network.

A frame is::

    u8 kind | u8 flags | u16 nparts | u64 main length | nparts x u64 part length
    main bytes | part 0 | part 1 | ...

The main part carries JSON during the handshake and a pickle afterwards; the
further parts carry out-of-band buffers (numpy arrays, large bytes) that are
received straight into their own preallocated buffer, never copied through
the pickle stream.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass, field

from .errors import HandshakeError, ProtocolError

PROTOCOL_VERSION = 1
UPGRADE_TOKEN = "bndl-like-rmi"

PREFIX = struct.Struct("<BBHQ")
MAX_PARTS = 4096
# parts larger than this are received into a buffer of their own (no copy)
LARGE_PART = 1 << 16
# parts at least this large are received into memory that is not zero-filled first
UNINITIALIZED_PART = 1 << 20
# an unauthenticated peer can make us buffer no more than this
HANDSHAKE_MAX_MESSAGE = 1 << 16

# frame kinds
HELLO = 1
AUTH = 2
AUTH_OK = 3
REJECT = 4
MESSAGE = 5
PING = 6
RETIRE = 7
CLOSE = 8
KIND_NAMES = {
    HELLO: "HELLO", AUTH: "AUTH", AUTH_OK: "AUTH_OK", REJECT: "REJECT",
    MESSAGE: "MESSAGE", PING: "PING", RETIRE: "RETIRE", CLOSE: "CLOSE",
}


@dataclass(slots=True)
class Frame:
    kind: int
    main: bytes | bytearray
    parts: list = field(default_factory=list)
    flags: int = 0

    def __repr__(self) -> str:
        kind = KIND_NAMES.get(self.kind, self.kind)
        return f"<Frame {kind} main={len(self.main)}B parts={len(self.parts)}>"


def encode(kind: int, main: bytes = b"", parts=(), flags: int = 0) -> list:
    """Encode one frame into a list of bytes-like objects to write in order.

    Small frames come back as one ``bytes`` (one write); large parts are
    returned as they are, so that the transport can send them without a copy.
    """
    nparts = len(parts)
    if nparts > MAX_PARTS:
        raise ProtocolError(f"a frame can carry at most {MAX_PARTS} parts, not {nparts}")
    if not nparts:
        return [PREFIX.pack(kind, flags, 0, len(main)) + main]
    lengths = [memoryview(p).nbytes for p in parts]
    header = PREFIX.pack(kind, flags, nparts, len(main)) + struct.pack(f"<{nparts}Q", *lengths)
    if sum(lengths) <= LARGE_PART:
        return [b"".join([header, main, *parts])]
    return [header + main, *parts]


def frame_size(chunks) -> int:
    return sum(memoryview(c).nbytes for c in chunks)


class FrameDecoder:
    """Incremental frame parser with a buffer-protocol interface.

    Use ``get_buffer()`` / ``buffer_updated(n)`` (as ``asyncio.BufferedProtocol``
    does) to receive without intermediate copies, or ``feed(data)`` in tests.
    Raises :class:`ProtocolError` on a malformed or oversized frame; the
    decoder is then unusable and the connection must be closed.
    """

    def __init__(self, max_message_size: int, buffer_size: int = 1 << 18,
                 kinds: frozenset = frozenset(KIND_NAMES)):
        assert buffer_size >= LARGE_PART * 2 + PREFIX.size + 8 * MAX_PARTS
        self.max_message_size = max_message_size
        self.kinds = kinds
        # parse at most one frame per call, so the caller can change the limits between
        # frames (the handshake raises them once the peer is authenticated)
        self.one_frame = False
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._head: tuple | None = None  # (kind, flags, lengths) of the frame being read
        self._parts: list = []
        self._large: bytearray | None = None
        self._large_view: memoryview | None = None
        self._large_pos = 0
        self.bytes_received = 0

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        if self._large is not None:
            return self._large_view[self._large_pos:]
        if self._end == len(self._buf):
            self._compact()
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        self.bytes_received += nbytes
        if self._large is not None:
            self._large_pos += nbytes
            if self._large_pos < len(self._large):
                return []
            self._parts.append(self._large)
            self._large = self._large_view = None
            frames: list[Frame] = []
            self._finish_parts(frames)
            return frames
        self._end += nbytes
        return self._parse()

    def feed(self, data) -> list[Frame]:
        frames = []
        data = memoryview(data).cast("B")
        while data:
            buf = self.get_buffer()
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            data = data[n:]
            frames.extend(self.buffer_updated(n))
        return frames

    @property
    def pending(self) -> bool:
        """True while a frame is partially received."""
        return self._head is not None or self._end > self._start

    def _compact(self) -> None:
        if self._start:
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start:self._end]
            self._start, self._end = 0, n

    def _parse(self) -> list[Frame]:
        frames: list[Frame] = []
        while True:
            if self._head is None and not self._read_head():
                break
            if not self._read_parts(frames):
                break
            if self.one_frame:
                break
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._start < LARGE_PART + PREFIX.size + 8 * MAX_PARTS:
            self._compact()
        return frames

    def _read_head(self) -> bool:
        avail = self._end - self._start
        if avail < PREFIX.size:
            return False
        kind, flags, nparts, main_len = PREFIX.unpack_from(self._buf, self._start)
        if kind not in self.kinds:
            raise ProtocolError(f"unexpected frame kind {kind}")
        if nparts > MAX_PARTS:
            raise ProtocolError(f"frame announces {nparts} parts, at most {MAX_PARTS} are allowed")
        head_len = PREFIX.size + 8 * nparts
        if avail < head_len:
            return False
        lengths = [main_len]
        if nparts:
            lengths.extend(struct.unpack_from(f"<{nparts}Q", self._buf, self._start + PREFIX.size))
        total = sum(lengths)
        if total > self.max_message_size:
            raise ProtocolError(
                f"frame of {total} bytes exceeds the maximum message size of "
                f"{self.max_message_size} bytes")
        self._start += head_len
        self._head = (kind, flags, lengths)
        self._parts = []
        return True

    def _read_parts(self, frames: list) -> bool:
        lengths = self._head[2]
        while len(self._parts) < len(lengths):
            size = lengths[len(self._parts)]
            avail = self._end - self._start
            if size <= LARGE_PART:
                if avail < size:
                    return False
                chunk = self._view[self._start:self._start + size]
                # the main part as bytes, buffers writable (numpy arrays on them are)
                self._parts.append(bytes(chunk) if not self._parts else bytearray(chunk))
                self._start += size
            else:
                large = _allocate(size)
                take = min(avail, size)
                memoryview(large)[:take] = self._view[self._start:self._start + take]
                self._start += take
                if take < size:
                    self._large = large
                    self._large_view = memoryview(large)
                    self._large_pos = take
                    return False
                self._parts.append(large)
        self._finish_parts(frames)
        return True

    def _finish_parts(self, frames: list) -> None:
        kind, flags, lengths = self._head
        if len(self._parts) < len(lengths):
            # continue with the remaining parts from the small buffer (empty now)
            if self._read_parts(frames):
                frames.extend(self._parse())
            return
        parts = self._parts
        self._head = None
        self._parts = []
        frames.append(Frame(kind, parts[0], parts[1:], flags))


def _allocate(size: int):
    """A writable buffer of ``size`` bytes; large ones skip zero-filling (numpy.empty).

    Zero-filling 64 MiB costs more than receiving it; numpy, when importable, also
    asks the kernel for huge pages, which makes the first touch of each page cheap.
    """
    if size >= UNINITIALIZED_PART:
        try:
            import numpy
        except ImportError:  # pragma: no cover - numpy is a dependency
            return bytearray(size)
        return memoryview(numpy.empty(size, numpy.uint8))
    return bytearray(size)


def _mac(secret: bytes, role: str, peer_nonce: bytes, own_nonce: bytes, info: bytes) -> bytes:
    msg = b"bndl-like-auth\0" + role.encode() + b"\0" + peer_nonce + own_nonce + info
    return hmac.new(secret, msg, hashlib.sha256).digest()


class Handshake:
    """Mutual HMAC-SHA256 challenge-response over a shared secret.

    Both sides send HELLO (protocol version, cluster name, node name and a
    fresh nonce). On the peer's HELLO a side checks version and cluster and
    sends AUTH: an HMAC of its role, both nonces and its node info. On a valid
    AUTH it answers AUTH_OK. A side is done when it has verified the peer's
    AUTH *and* received AUTH_OK, so both know the other accepted them. Only
    JSON is read until then; a failure raises :class:`HandshakeError` after
    queueing a REJECT frame that names the problem for the peer.
    """

    def __init__(self, role: str, secret: bytes | str | None, cluster: str, info: dict,
                 nonce: bytes | None = None, version: int = PROTOCOL_VERSION):
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', not {role!r}")
        if isinstance(secret, str):
            secret = secret.encode()
        self.role = role
        self.peer_role = "server" if role == "client" else "client"
        self.secret = secret or b""
        self.cluster = cluster
        self.info = info
        self.version = version
        self.nonce = nonce or os.urandom(32)
        self.peer_hello: dict | None = None
        self.peer_nonce: bytes | None = None
        self.peer_info: dict | None = None
        self._info_bytes = json.dumps(info, sort_keys=True).encode()
        self._verified = False
        self._accepted = False
        self.failed: str | None = None

    @property
    def done(self) -> bool:
        return self._verified and self._accepted

    @property
    def peer_name(self) -> str | None:
        return self.peer_hello.get("name") if self.peer_hello else None

    def start(self) -> list:
        hello = {"protocol": self.version, "cluster": self.cluster,
                 "name": self.info.get("name"), "nonce": self.nonce.hex()}
        return encode(HELLO, json.dumps(hello).encode())

    def receive(self, frame: Frame) -> list:
        """Process one frame; return the chunks to send. Raises HandshakeError."""
        if self.failed:
            raise HandshakeError(self.failed)
        try:
            if frame.kind == HELLO and self.peer_hello is None:
                return self._on_hello(frame)
            if frame.kind == AUTH and self.peer_hello is not None and not self._verified:
                return self._on_auth(frame)
            if frame.kind == AUTH_OK and self._verified and not self._accepted:
                self._accepted = True
                return []
            if frame.kind == REJECT:
                reason = _json(frame.main).get("reason", "no reason given")
                self.failed = f"refused by the peer: {reason}"
                raise HandshakeError(self.failed)
            kind = KIND_NAMES.get(frame.kind, frame.kind)
            self._fail(f"unexpected {kind} frame during the handshake")
        except HandshakeError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            self._fail(f"malformed handshake frame: {exc}")

    def _fail(self, reason: str):
        self.failed = reason
        raise HandshakeError(reason, reject=encode(REJECT, json.dumps({"reason": reason}).encode()))

    def _on_hello(self, frame: Frame) -> list:
        hello = _json(frame.main)
        self.peer_hello = hello
        peer_version = hello.get("protocol")
        if type(peer_version) is not int or peer_version != self.version:
            self._fail(f"protocol version mismatch: this node speaks version {self.version}, "
                       f"the peer speaks version {hello.get('protocol')}")
        if hello.get("cluster") != self.cluster:
            self._fail(f"cluster name mismatch: this node is in cluster {self.cluster!r}, "
                       f"the peer is in cluster {hello.get('cluster')!r}")
        peer_nonce = bytes.fromhex(hello["nonce"])
        if len(peer_nonce) < 16:
            self._fail("handshake nonce too short")
        self.peer_nonce = peer_nonce
        mac = _mac(self.secret, self.role, self.peer_nonce, self.nonce, self._info_bytes)
        return encode(AUTH, mac + self._info_bytes)

    def _on_auth(self, frame: Frame) -> list:
        main = bytes(frame.main)
        mac, info_bytes = main[:32], main[32:]
        expected = _mac(self.secret, self.peer_role, self.nonce, self.peer_nonce, info_bytes)
        if len(mac) != 32 or not hmac.compare_digest(mac, expected):
            self._fail("authentication failed: the secrets of the two nodes differ")
        info = _json(info_bytes)
        if not isinstance(info, dict) or info.get("name") != self.peer_hello.get("name"):
            self._fail("peer info does not match its HELLO")
        self.peer_info = info
        self._verified = True
        return encode(AUTH_OK)


def _json(data) -> dict:
    try:
        value = json.loads(bytes(data).decode())
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value
