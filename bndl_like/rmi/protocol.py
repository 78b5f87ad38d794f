"""The wire protocol as a sans-I/O core: framing, frame authentication and the handshake.

Nothing here touches a socket, a clock or an event loop; the transport shell
(:mod:`bndl_like.rmi.connection`) feeds bytes in and writes the bytes it is
given. That keeps every rule of the protocol testable without a network.

A frame is::

    u8 kind | u8 flags | u16 nparts | u64 main length | nparts x u64 part length
    main bytes | part 0 | part 1 | ... | [16-byte tag, once the handshake sealed the stream]

The main part carries JSON during the handshake and a pickle afterwards; the
further parts carry out-of-band buffers (numpy arrays, large bytes) that are
received straight into their own preallocated buffer, never copied through
the pickle stream.

After the handshake every frame in either direction is *sealed*: it ends in a
tag over an implicit per-direction sequence number and every byte of the frame
(header, main part and all out-of-band parts), made with a key of that
direction derived from the secret, both HELLOs and the client's proof. A frame
that was injected, altered, replayed, reordered or reflected fails its tag and
the stream ends before anything of it is unpickled. Small frames (at most
``LARGE_PART`` bytes of payload) are tagged with keyed BLAKE2b, which costs
~0.6 us; larger ones with Poly1305 under a one-time key per frame, which runs
at ~5 GB/s and is computed as the parts stream in and out (benchmarks/README.md
has the figures behind this choice).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from cryptography.hazmat.primitives.poly1305 import Poly1305

from .errors import HandshakeError, ProtocolError

if TYPE_CHECKING:
    from typing import TypeAlias

    from typing_extensions import Buffer

    # what a received part is: small ones bytes (the main part) or bytearray, large ones a
    # bytearray or a memoryview on memory that was not zero-filled (see _allocate)
    Received: TypeAlias = "bytes | bytearray | memoryview"
    # what a frame header records: (kind, flags, [main length, part lengths...])
    Head: TypeAlias = "tuple[int, int, list[int]]"

PROTOCOL_VERSION = 3
UPGRADE_TOKEN = "bndl-like-rmi"

PREFIX = struct.Struct("<BBHQ")
SEQ = struct.Struct("<Q")
MAX_PARTS = 4096
TAG_SIZE = 16
# parts larger than this are received into a buffer of their own (no copy); frames with
# at most this much payload are sealed with BLAKE2b in one pass, larger ones with Poly1305
LARGE_PART = 1 << 16
# parts at least this large are received into memory that is not zero-filled first
UNINITIALIZED_PART = 1 << 20
# an unauthenticated peer can make us buffer no more than this
HANDSHAKE_MAX_MESSAGE = 1 << 13
HANDSHAKE_BUFFER = 1 << 14
MAX_NAME = 200  # characters in a node name

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
# what a peer may send before it is authenticated
HANDSHAKE_KINDS = frozenset({HELLO, AUTH, AUTH_OK, REJECT, CLOSE})


@dataclass(slots=True)
class Frame:
    kind: int
    main: Received
    parts: list[Received] = field(default_factory=list)
    flags: int = 0

    def __repr__(self) -> str:
        kind = KIND_NAMES.get(self.kind, self.kind)
        return f"<Frame {kind} main={len(self.main)}B parts={len(self.parts)}>"


def _header(kind: int, flags: int, main: bytes, parts: Sequence[Buffer]) -> tuple[bytes, list[int]]:
    nparts = len(parts)
    if nparts > MAX_PARTS:
        raise ProtocolError(f"a frame can carry at most {MAX_PARTS} parts, not {nparts}")
    if not nparts:
        return PREFIX.pack(kind, flags, 0, len(main)), []
    lengths = [memoryview(p).nbytes for p in parts]
    return PREFIX.pack(kind, flags, nparts, len(main)) + struct.pack(f"<{nparts}Q", *lengths), lengths


def encode(kind: int, main: bytes = b"", parts: Sequence[Buffer] = (), flags: int = 0) -> list[Buffer]:
    """Encode one unsealed frame (the handshake's) into a list of bytes-like objects to write.

    Small frames come back as one ``bytes`` (one write); large parts are
    returned as they are, so that the transport can send them without a copy.
    """
    header, lengths = _header(kind, flags, main, parts)
    if not parts:
        return [header + main]
    if sum(lengths) <= LARGE_PART:
        return [b"".join([header, main, *parts])]
    return [header + main, *parts]


def frame_size(chunks: Sequence[Buffer]) -> int:
    return sum(memoryview(c).nbytes for c in chunks)


# -- sealing ----------------------------------------------------------------------------------------


def _keyed(key: bytes, person: bytes, digest_size: int) -> hashlib.blake2b:
    return hashlib.blake2b(key=key, person=person, digest_size=digest_size)


class _Direction:
    """The key schedule of one direction: a BLAKE2b state per use, copied per frame."""

    __slots__ = ("seq", "_small", "_one_time")

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("a direction key is 32 bytes")
        self.seq = 0
        self._small = _keyed(key, b"bndl-frame", TAG_SIZE)
        self._one_time = _keyed(key, b"bndl-poly1305", 32)

    def _next(self) -> bytes:
        seq = SEQ.pack(self.seq)
        self.seq += 1
        return seq

    def small_tag(self, data: Buffer) -> bytes:
        h = self._small.copy()
        h.update(self._next())
        h.update(data)
        return h.digest()

    def large_mac(self) -> Poly1305:
        h = self._one_time.copy()
        h.update(self._next())
        return Poly1305(h.digest())


class FrameSealer(_Direction):
    """Seals the outgoing frames of one direction, in the order they go on the wire."""

    __slots__ = ()

    def seal(self, kind: int, main: bytes = b"", parts: Sequence[Buffer] = (),
             flags: int = 0) -> list[Buffer]:
        """The frame with its tag, as chunks to write in order (one chunk when small)."""
        if not parts and len(main) <= LARGE_PART:  # most frames: inlined, it is paid per call
            frame = PREFIX.pack(kind, flags, 0, len(main)) + main
            h = self._small.copy()
            h.update(SEQ.pack(self.seq))
            self.seq += 1
            h.update(frame)
            return [frame + h.digest()]
        header, lengths = _header(kind, flags, main, parts)
        if len(main) + sum(lengths) <= LARGE_PART:
            frame = b"".join([header, main, *parts]) if parts else header + main
            return [frame + self.small_tag(frame)]
        return list(self._stream(header + main, parts))

    def seal_stream(self, kind: int, main: bytes, parts: Sequence[Buffer], step: int) -> Iterator[Buffer]:
        """Like :meth:`seal`, yielding large parts in pieces of ``step`` bytes, each hashed
        just before it is handed out (while it is in cache), the tag last.

        The frame takes its sequence number now, not when the pieces are taken."""
        header, lengths = _header(kind, 0, main, parts)
        if len(main) + sum(lengths) <= LARGE_PART:
            return iter(self.seal(kind, main, parts))
        return self._stream(header + main, parts, step)

    def _stream(self, head: bytes, parts: Sequence[Buffer], step: int = 0) -> Iterator[Buffer]:
        mac = self.large_mac()
        mac.update(head)
        return self._pieces(mac, head, parts, step)

    @staticmethod
    def _pieces(mac: Poly1305, head: bytes, parts: Sequence[Buffer], step: int) -> Iterator[Buffer]:
        yield head
        for part in parts:
            view = memoryview(part).cast("B")
            if not step or view.nbytes <= step:
                mac.update(view)
                yield part
                continue
            for offset in range(0, view.nbytes, step):
                piece = view[offset:offset + step]
                mac.update(piece)
                yield piece
        yield mac.finalize()


class FrameOpener(_Direction):
    """Checks the tags of the incoming frames of one direction (used by FrameDecoder)."""

    __slots__ = ()

    def failure(self) -> ProtocolError:
        """The error for the frame just checked."""
        return ProtocolError(f"frame authentication failed (frame {self.seq - 1}): the stream was "
                             "altered, replayed or injected")

    def check_small(self, frame: Buffer, tag: Buffer) -> None:
        if not hmac.compare_digest(self.small_tag(frame), tag):
            raise self.failure()

    def check_large(self, mac: Poly1305, tag: Buffer) -> None:
        try:
            mac.verify(bytes(tag))
        except Exception:  # cryptography's InvalidSignature
            raise self.failure() from None


# -- decoding ---------------------------------------------------------------------------------------


class FrameDecoder:
    """Incremental frame parser with a buffer-protocol interface.

    Use ``get_buffer()`` / ``buffer_updated(n)`` (as ``asyncio.BufferedProtocol``
    does) to receive without intermediate copies, or ``feed(data)`` in tests.
    Raises :class:`ProtocolError` on a malformed, oversized or (once an opener
    is set) unauthentic frame; the decoder is then unusable and the connection
    must be closed. ``max_message_size``, ``kinds`` and ``max_parts`` may be
    changed between frames (``one_frame`` parses one frame per call for that).
    """

    def __init__(self, max_message_size: int, buffer_size: int = 1 << 18,
                 kinds: frozenset[int] = frozenset(KIND_NAMES), max_parts: int = MAX_PARTS):
        self.max_message_size = max_message_size
        self.kinds = kinds
        self.max_parts = max_parts
        # parse at most one frame per call, so the caller can change the limits between
        # frames (the handshake raises them once the peer is authenticated)
        self.one_frame = False
        self.opener: FrameOpener | None = None
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._head: Head | None = None  # (kind, flags, lengths) of the frame being read
        self._parts: list[Received] = []
        self._mac: Poly1305 | None = None  # of a large sealed frame being read
        self._large: bytearray | memoryview | None = None
        self._large_view: memoryview | None = None
        self._large_pos = 0
        self.bytes_received = 0
        self._check_room()

    def _room(self) -> int:
        """Contiguous bytes a frame read from the small buffer may need past its start."""
        return PREFIX.size + 8 * self.max_parts + min(self.max_message_size, LARGE_PART) + TAG_SIZE

    def _check_room(self) -> None:
        if len(self._buf) < self._room():
            raise ValueError(f"a buffer of {len(self._buf)} bytes is too small for these limits")

    def resize(self, buffer_size: int) -> None:
        """Move the unread bytes into a new buffer (the large one once authenticated)."""
        n = self._end - self._start
        buf = bytearray(max(buffer_size, n))
        buf[:n] = self._view[self._start:self._end]
        self._buf, self._view = buf, memoryview(buf)
        self._start, self._end = 0, n
        self._check_room()

    def seal(self, opener: FrameOpener) -> None:
        """From the next frame on, every frame must carry a valid tag of ``opener``."""
        if self._head is not None:
            raise ProtocolError("cannot seal the stream in the middle of a frame")
        self.opener = opener

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        if self._large is not None:
            return self._large_view[self._large_pos:]  # type: ignore[index]  # set with _large
        if self._end == len(self._buf):
            self._compact()
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        self.bytes_received += nbytes
        if self._large is not None:
            if self._mac is not None and nbytes:
                self._mac.update(self._large_view[self._large_pos:self._large_pos + nbytes])  # type: ignore[index]
            self._large_pos += nbytes
            if self._large_pos < len(self._large):
                return []
            self._parts.append(self._large)
            self._large = self._large_view = None
        else:
            self._end += nbytes
        return self._parse()

    def feed(self, data: Buffer) -> list[Frame]:
        frames: list[Frame] = []
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
            if self._head is None:
                if not self._read_head(frames):
                    break
            elif not self._read_rest(frames):
                break
            if self.one_frame and frames:
                break
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._start < self._room():
            self._compact()
        return frames

    def _read_head(self, frames: list[Frame]) -> bool:
        """Read a frame's header; a small sealed frame is read whole. False: need more bytes."""
        start = self._start
        avail = self._end - start
        if avail < PREFIX.size:
            return False
        kind, flags, nparts, main_len = PREFIX.unpack_from(self._buf, start)
        if kind not in self.kinds:
            raise ProtocolError(f"unexpected frame kind {kind}")
        if nparts > self.max_parts:
            raise ProtocolError(f"frame announces {nparts} parts, at most {self.max_parts} are allowed")
        head_len = PREFIX.size + 8 * nparts
        if avail < head_len:
            return False
        if nparts:
            lengths = [main_len, *struct.unpack_from(f"<{nparts}Q", self._buf, start + PREFIX.size)]
            total = sum(lengths)
        else:
            lengths = [main_len]
            total = main_len
        if total > self.max_message_size:
            raise ProtocolError(
                f"frame of {total} bytes exceeds the maximum message size of "
                f"{self.max_message_size} bytes")
        opener = self.opener
        if opener is not None and not nparts and total <= LARGE_PART:
            # the most common frame, inlined: no out-of-band parts, checked in one pass
            end = start + PREFIX.size + total
            if self._end - end < TAG_SIZE:
                return False
            view = self._view
            h = opener._small.copy()
            h.update(SEQ.pack(opener.seq))
            h.update(view[start:end])
            if not hmac.compare_digest(h.digest(), view[end:end + TAG_SIZE]):
                opener.seq += 1
                raise opener.failure()
            opener.seq += 1
            self._start = end + TAG_SIZE
            frames.append(Frame(kind, bytes(view[start + PREFIX.size:end]), [], flags))
            return True
        if opener is not None and total <= LARGE_PART:
            # the hot path: the whole frame and its tag are in the buffer, checked in one pass
            end = start + head_len + total
            if self._end - end < TAG_SIZE:
                return False
            opener.check_small(self._view[start:end], self._view[end:end + TAG_SIZE])
            self._start = start + head_len
            self._head = (kind, flags, lengths)
            self._parts = []
            self._read_parts()
            self._start += TAG_SIZE
            self._emit(frames)
            return True
        self._start = start + head_len
        self._head = (kind, flags, lengths)
        self._parts = []
        if opener is not None:
            self._mac = opener.large_mac()
            self._mac.update(self._view[start:start + head_len])
        return True

    def _read_rest(self, frames: list[Frame]) -> bool:
        """Read the parts (and tag) of the frame whose header was read. False: need more bytes."""
        if not self._read_parts():
            return False
        if self._mac is not None:
            if self._end - self._start < TAG_SIZE:
                return False
            # a _mac is only made from an opener
            self.opener.check_large(self._mac, self._view[self._start:self._start + TAG_SIZE])  # type: ignore[union-attr]
            self._mac = None
            self._start += TAG_SIZE
        self._emit(frames)
        return True

    def _read_parts(self) -> bool:
        lengths = self._head[2]  # type: ignore[index]  # called with a header read
        mac = self._mac
        while len(self._parts) < len(lengths):
            size = lengths[len(self._parts)]
            avail = self._end - self._start
            if size <= LARGE_PART:
                if avail < size:
                    return False
                chunk = self._view[self._start:self._start + size]
                if mac is not None:
                    mac.update(chunk)
                # the main part as bytes, buffers writable (numpy arrays on them are)
                self._parts.append(bytes(chunk) if not self._parts else bytearray(chunk))
                self._start += size
            else:
                large = _allocate(size)
                take = min(avail, size)
                if take:
                    chunk = self._view[self._start:self._start + take]
                    memoryview(large)[:take] = chunk
                    if mac is not None:
                        mac.update(chunk)
                self._start += take
                if take < size:
                    self._large = large
                    self._large_view = memoryview(large)
                    self._large_pos = take
                    return False
                self._parts.append(large)
        return True

    def _emit(self, frames: list[Frame]) -> None:
        kind, flags, _ = self._head  # type: ignore[misc]  # called with a header read
        parts = self._parts
        self._head = None
        self._parts = []
        frames.append(Frame(kind, parts[0], parts[1:], flags))


def _allocate(size: int) -> bytearray | memoryview:
    """A writable buffer of ``size`` bytes; large ones skip zero-filling (numpy.empty).

    Zero-filling 64 MiB costs more than receiving it; numpy, when importable, also
    asks the kernel for huge pages, which makes the first touch of each page cheap.
    """
    if size >= UNINITIALIZED_PART:
        try:
            import numpy
        except ImportError:  # pragma: no cover - numpy is a dependency
            return bytearray(size)
        # numpy's stubs declare ndarray.__buffer__ for Python >= 3.12 only
        return memoryview(numpy.empty(size, numpy.uint8))  # type: ignore[arg-type]
    return bytearray(size)


# -- the handshake ----------------------------------------------------------------------------------


def _mac(secret: bytes, label: bytes, *data: bytes) -> bytes:
    h = hmac.new(secret, b"bndl-like-v2\0" + label + b"\0", hashlib.sha256)
    for item in data:
        h.update(SEQ.pack(len(item)))
        h.update(item)
    return h.digest()


class Handshake:
    """Mutual HMAC-SHA256 challenge-response over a shared secret; the client proves first.

    1. Both send HELLO (protocol version, cluster name, a fresh nonce) and check
       the other's: a mismatch is refused naming both values.
    2. The client sends AUTH: an HMAC over both HELLOs and its node info, then the info.
    3. The server verifies it and only then answers AUTH: its HMAC over both HELLOs,
       the client's proof and its own info, then its info. An unauthenticated peer
       thus never gets a MAC made with the secret, nor the node's info.
    4. The client verifies that and answers AUTH_OK, its first sealed frame.

    From the client's AUTH on, both derive per-direction keys from the secret, both
    HELLOs and the client's proof; the server's frames are sealed from its AUTH on
    (exclusive), the client's from AUTH_OK on. Only JSON is read until then; a
    failure raises :class:`HandshakeError` carrying a REJECT frame for the peer.
    ``check_peer(info)`` may raise HandshakeError to refuse an authenticated peer
    (e.g. this node itself, a duplicate connection).
    """

    def __init__(self, role: str, secret: bytes | str, cluster: str, info: dict[str, Any],
                 nonce: bytes | None = None, version: int = PROTOCOL_VERSION,
                 check_peer: Callable[[dict[str, Any]], object] | None = None):
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', not {role!r}")
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or not secret:
            raise ValueError("a handshake needs a non-empty secret")
        self.role = role
        self.secret = secret
        self.cluster = cluster
        self.info = info
        self.version = version
        self.check_peer = check_peer
        self.nonce = nonce or os.urandom(32)
        self.peer_nonce: bytes | None = None
        self.peer_hello: dict[str, Any] | None = None
        self.peer_info: dict[str, Any] | None = None
        self._hello = json.dumps({"protocol": version, "cluster": cluster,
                                  "nonce": self.nonce.hex()}).encode()
        self._peer_hello_bytes: bytes | None = None
        self._info_bytes = json.dumps(info, sort_keys=True).encode()
        self._client_proof: bytes | None = None
        self.verified = False  # the peer proved the secret
        self.done = False
        self.sealer: FrameSealer | None = None  # set once outgoing frames are sealed
        self.opener: FrameOpener | None = None  # set once incoming frames must be sealed
        self._keys: tuple[bytes, bytes] | None = None
        self.failed: str | None = None

    @property
    def peer_name(self) -> str | None:
        return self.peer_info.get("name") if self.peer_info else None

    def start(self) -> list[Buffer]:
        return encode(HELLO, self._hello)

    def receive(self, frame: Frame) -> list[Buffer]:
        """Process one frame; return the chunks to send. Raises HandshakeError."""
        if self.failed:
            raise HandshakeError(self.failed)
        try:
            kind = frame.kind
            if frame.flags and not self.verified:  # flags are not covered by the handshake's MACs
                self._fail(f"unexpected flags {frame.flags} on a handshake frame")
            if kind == REJECT:
                reason = _json(frame.main).get("reason", "no reason given")
                self.failed = f"refused by the peer: {_printable(reason, 500)}"
                raise HandshakeError(self.failed)
            if kind == HELLO and self.peer_hello is None:
                return self._on_hello(frame)
            if kind == AUTH and self.peer_hello is not None and not self.verified:
                if self.role == "server" and self._client_proof is None:
                    return self._on_client_auth(frame)
                if self.role == "client" and self._client_proof is not None:
                    return self._on_server_auth(frame)
            if kind == AUTH_OK and self.role == "server" and self.verified and not self.done:
                self.done = True  # it came sealed: the client holds the keys
                return []
            self._fail(f"unexpected {KIND_NAMES.get(kind, kind)} frame during the handshake")
        except HandshakeError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            self._fail(f"malformed handshake frame: {exc}")

    def reject(self, reason: str) -> list[Buffer]:
        """A REJECT frame for the peer, sealed if the peer expects sealed frames."""
        main = json.dumps({"reason": reason}).encode()
        return self.sealer.seal(REJECT, main) if self.sealer else encode(REJECT, main)

    def _fail(self, reason: str) -> NoReturn:
        self.failed = reason
        raise HandshakeError(reason, reject=self.reject(reason))

    def _transcript(self) -> tuple[bytes, bytes]:
        """The (server HELLO, client HELLO) as sent (called once the peer's HELLO is in)."""
        if self.role == "client":
            return self._peer_hello_bytes, self._hello  # type: ignore[return-value]
        return self._hello, self._peer_hello_bytes  # type: ignore[return-value]

    def _on_hello(self, frame: Frame) -> list[Buffer]:
        data = bytes(frame.main)
        hello = _json(data)
        self.peer_hello = hello
        self._peer_hello_bytes = data
        peer_version = hello.get("protocol")
        if type(peer_version) is not int or peer_version != self.version:
            self._fail(f"protocol version mismatch: this node speaks version {self.version}, "
                       f"the peer speaks version {_printable(peer_version)}")
        if hello.get("cluster") != self.cluster:
            self._fail(f"cluster name mismatch: this node is in cluster {self.cluster!r}, "
                       f"the peer is in cluster {_printable(hello.get('cluster'))}")
        nonce = hello.get("nonce")
        peer_nonce = bytes.fromhex(nonce) if isinstance(nonce, str) else b""
        if len(peer_nonce) < 16:
            self._fail("handshake nonce too short")
        if peer_nonce == self.nonce:
            self._fail("the peer sent back this node's own nonce")
        self.peer_nonce = peer_nonce
        if self.role == "server":
            return []
        self._client_proof = _mac(self.secret, b"client-auth", *self._transcript(), self._info_bytes)
        self._derive_keys()
        return encode(AUTH, self._client_proof + self._info_bytes)

    def _derive_keys(self) -> None:
        base = _mac(self.secret, b"session", *self._transcript(), self._client_proof)  # type: ignore[arg-type]
        c2s = hmac.new(base, b"client-to-server", hashlib.sha256).digest()
        s2c = hmac.new(base, b"server-to-client", hashlib.sha256).digest()
        self._keys = (c2s, s2c) if self.role == "client" else (s2c, c2s)  # (send, receive)

    def _peer_info(self, info_bytes: bytes) -> dict[str, Any]:
        info = _json(info_bytes)
        name = info.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or not name.isprintable():
            self._fail(f"invalid node name: {_printable(name)}")
        if self.check_peer is not None:
            try:
                self.check_peer(info)
            except HandshakeError as exc:
                self._fail(exc.reason)
        return info

    def _on_client_auth(self, frame: Frame) -> list[Buffer]:
        main = bytes(frame.main)
        proof, info_bytes = main[:32], main[32:]
        expected = _mac(self.secret, b"client-auth", *self._transcript(), info_bytes)
        if len(proof) != 32 or not hmac.compare_digest(proof, expected):
            self._fail("authentication failed: the secrets of the two nodes differ")
        self._client_proof = proof
        self.peer_info = self._peer_info(info_bytes)
        self.verified = True
        self._derive_keys()
        send, receive = self._keys  # type: ignore[misc]  # derived just above
        self.opener = FrameOpener(receive)
        answer = _mac(self.secret, b"server-auth", *self._transcript(), proof, self._info_bytes)
        out = encode(AUTH, answer + self._info_bytes)
        self.sealer = FrameSealer(send)
        return out

    def _on_server_auth(self, frame: Frame) -> list[Buffer]:
        main = bytes(frame.main)
        proof, info_bytes = main[:32], main[32:]
        # a client sets _client_proof and _keys on the server's HELLO, before the server's AUTH
        expected = _mac(self.secret, b"server-auth", *self._transcript(),
                        self._client_proof, info_bytes)  # type: ignore[arg-type]
        send, receive = self._keys  # type: ignore[misc]
        if len(proof) != 32 or not hmac.compare_digest(proof, expected):
            self._fail("authentication failed: the server could not prove the secret")
        # from here the server reads sealed frames: a refusal must be sealed too
        self.sealer = FrameSealer(send)
        self.opener = FrameOpener(receive)
        self.peer_info = self._peer_info(info_bytes)
        self.verified = True
        self.done = True
        return self.sealer.seal(AUTH_OK)


def _printable(value: object, limit: int = 100) -> str:
    """A peer-supplied value for a message or a log line: repr'd, so one line, and cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def clean_text(text: str, limit: int = 300) -> str:
    """Peer-supplied text for one log line: control characters escaped, cut at ``limit``."""
    text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text


def _json(data: Buffer) -> dict[str, Any]:
    try:
        value = json.loads(bytes(data).decode())
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value
