"""Driving the sans-I/O protocol cores without a network: wire bytes, frames, decoders and a pair of
``Handshake`` ends, with the invariants their runs must keep.

Shared by tests/rmi/test_protocol.py, tests/rmi/test_protocol_fuzz.py and benchmarks/fuzz.py, so it
imports neither pytest nor hypothesis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from bndl_like.rmi import protocol
from bndl_like.rmi.errors import HandshakeError, ProtocolError
from bndl_like.rmi.protocol import (
    HANDSHAKE_BUFFER,
    HANDSHAKE_KINDS,
    HANDSHAKE_MAX_MESSAGE,
    KIND_NAMES,
    LARGE_PART,
    MAX_PARTS,
    MESSAGE,
    PREFIX,
    Frame,
    FrameDecoder,
    FrameOpener,
    Handshake,
    encode,
)

MiB = 1 << 20
BIG = 1 << 40  # a max_message_size that never gets in the way
LIMIT = 2 * MiB  # max_message_size of the sealed decoders of the fuzzers
RECEIVE_BUFFER = 1 << 18  # what a connection resizes its decoder to once the peer is authenticated
KEY = bytes(range(32))
NONCE_C = bytes(range(32))
NONCE_S = bytes(range(100, 132))
# lengths for frame headers written by hand
LENGTHS = [0, 1, 31, 32, 33, 100, HANDSHAKE_MAX_MESSAGE, HANDSHAKE_MAX_MESSAGE + 1, LARGE_PART,
           LARGE_PART + 1, MiB, LIMIT, LIMIT + 1, 2**63, 2**64 - 1]
NPARTS = [0, 0, 1, 2, 3, 0xFFFF]  # part counts for frame headers written by hand
NOISE = [b"\x00" * 1000, b"\xff" * 1000, b'{"nonce": "' + b"ab" * 16 + b'"}']
MAIN_SIZES = [0, 1, 300, LARGE_PART, LARGE_PART + 1, 100_000]  # of the frames of sealed streams
PART_SIZES = [0, 1, 100, LARGE_PART, LARGE_PART + 1, 150_000]
# the kinds of the frames a meddler forges, and of those it alters when it targets one
FORGED_KINDS = [protocol.HELLO, protocol.AUTH, protocol.AUTH_OK, protocol.REJECT, protocol.CLOSE, MESSAGE,
                protocol.PING]
TARGET_KINDS = [protocol.HELLO, protocol.AUTH, protocol.AUTH_OK, MESSAGE, protocol.REJECT]


def wire(chunks) -> bytes:
    """The bytes a transport would write for the chunks ``encode`` or a sealer returned."""
    if isinstance(chunks, bytes | bytearray):
        return bytes(chunks)
    return b"".join(bytes(c) for c in chunks)


def frame_bytes(kind: int, main: bytes = b"", parts=(), flags: int = 0) -> bytes:
    return wire(encode(kind, main, parts, flags))


def handshake_decoder() -> FrameDecoder:
    """The decoder a connection reads with until the peer has proved the secret."""
    decoder = FrameDecoder(HANDSHAKE_MAX_MESSAGE, HANDSHAKE_BUFFER, kinds=HANDSHAKE_KINDS, max_parts=0)
    decoder.one_frame = True
    return decoder


def sealed_decoder(key: bytes = KEY, max_message_size: int = BIG, **kwargs) -> FrameDecoder:
    decoder = FrameDecoder(max_message_size, **kwargs)
    decoder.seal(FrameOpener(key))
    return decoder


def kinds(written) -> list:
    """The kind of each frame in a list of written frames (its number if it has no name)."""
    return [KIND_NAMES.get(data[0], data[0]) for data in written]


def frames_of(written: list[bytes]) -> list[tuple]:
    """(kind, main) of each written frame (handshake frames and the greetings have no parts)."""
    out = []
    for data in written:
        kind, _, nparts, main_len = PREFIX.unpack_from(data)
        assert nparts == 0
        out.append((kind, data[PREFIX.size:PREFIX.size + main_len]))
    return out


@contextmanager
def allocations():
    """The sizes of the large part buffers the decoders allocate meanwhile."""
    sizes: list[int] = []
    real = protocol._allocate

    def record(size):
        sizes.append(size)
        return real(size)

    protocol._allocate = record
    try:
        yield sizes
    finally:
        protocol._allocate = real


def receive(decoder: FrameDecoder, data: bytes, reads: Iterator[int]) -> tuple[list, list, Exception | None]:
    """Receive ``data`` through get_buffer / buffer_updated in reads of the sizes ``reads`` yields (at
    least 1/256 of the data), draining one-frame-at-a-time decoders as the connection does.

    Returns the frames handed out, the sizes of the large part buffers allocated and the ProtocolError
    that stopped it, if any."""
    frames: list = []
    error = None
    view = memoryview(data)
    least = len(data) // 256
    with allocations() as sizes:
        try:
            while view:
                buf = decoder.get_buffer(-1)
                assert len(buf) > 0 and not buf.readonly, "get_buffer offered no writable room"
                n = min(len(buf), len(view), max(least, next(reads)))
                buf[:n] = view[:n]
                view = view[n:]
                got = decoder.buffer_updated(n)
                while got:
                    frames += got
                    got = decoder.buffer_updated(0) if decoder.one_frame else []
        except ProtocolError as exc:
            error = exc
    return frames, sizes, error


def check_handshake_decoder(one_frame: bool, data: bytes, reads: Iterator[int]) -> str:
    """Junk into the decoder of an unauthenticated connection: frames within the handshake limits or
    ProtocolError, and nothing allocated beyond its fixed buffer, whatever the bytes announce."""
    decoder = handshake_decoder()
    decoder.one_frame = one_frame
    buffer = decoder.get_buffer().obj
    frames, sizes, error = receive(decoder, data, reads)
    for frame in frames:
        assert frame.kind in HANDSHAKE_KINDS and frame.parts == [], f"{frame!r} passed the handshake limits"
        assert len(frame.main) <= HANDSHAKE_MAX_MESSAGE, f"{frame!r} is over the handshake size"
    assert sizes == [], f"allocated {sizes} before authentication"
    assert decoder.get_buffer().obj is buffer and len(buffer) == HANDSHAKE_BUFFER, "the buffer grew"
    return "ProtocolError" if error is not None else "frames"


def check_sealed_decoder(data: bytes, reads: Iterator[int]) -> str:
    """Junk into a sealed decoder: nothing without a tag of the key comes out; what an announced frame
    costs is bounded by the limit."""
    frames, sizes, error = receive(sealed_decoder(max_message_size=LIMIT), data, reads)
    assert frames == [], "a sealed decoder handed out an unsealed frame"
    assert all(LARGE_PART < size <= LIMIT for size in sizes), f"allocated {sizes}"
    # no frame completes, so all of it is for one frame
    assert sum(sizes) <= LIMIT, f"allocated {sum(sizes)} bytes for frames that never completed"
    return "ProtocolError" if error is not None else "waiting"


def check_sealed_stream(sent: list[tuple], sealed: list[bytes], altered: bytes, reads: Iterator[int]) -> str:
    """From ``altered``, the frames ``sealed`` (of ``sent``: kind, flags, main, parts) altered, a
    prefix of the frames sent, in order, then at most a ProtocolError."""
    data = b"".join(sealed)
    decoder = sealed_decoder(max_message_size=LIMIT)
    frames, sizes, error = receive(decoder, altered, reads)
    got = [(f.kind, f.flags, bytes(f.main), [bytes(p) for p in f.parts]) for f in frames]
    assert got == sent[:len(got)], "a frame came out that was not sealed in this place"
    assert all(size <= LIMIT for size in sizes), f"allocated {sizes}"
    if altered == data:
        assert got == sent and error is None and not decoder.pending, "the unaltered stream was refused"
        return "intact"
    if data.startswith(altered):
        assert error is None, "a cut stream raised"  # what is complete, then waiting
        return "cut"
    assert got != sent or decoder.pending or error is not None, "an altered stream passed"
    return "ProtocolError" if error is not None else "waiting"


class Side:
    """One end of a connection, driven the way the transport drives the cores.

    Bytes arrive through get_buffer / buffer_updated; during the handshake the decoder hands out one
    frame at a time, and once the handshake has an opener it is sealed and its limits are raised.
    Every frame written is one bytes object in ``written`` (and in ``out`` until delivered); those
    written sealed are also in ``sealed_out``, those read through the sealed decoder in ``sealed_in``.
    """

    def __init__(self, hs: Handshake, max_message_size: int = BIG, greeting: bytes | None = None):
        self.hs = hs
        self.max_message_size = max_message_size
        self.greeting = greeting  # a sealed MESSAGE to send as soon as the handshake is done
        self.decoder = handshake_decoder()
        self.out: list[bytes] = []
        self.written: list[bytes] = []
        self.got: list[Frame] = []  # every frame the decoder handed out
        self.received: list[Frame] = []  # the frames that arrived after the handshake was done
        self.sealed_in: list[Frame] = []
        self.sealed_out: list[bytes] = []
        self.error: Exception | None = None
        self._sealed = 0  # frames sealed so far
        self._write(hs.start())

    def deliver(self, data) -> None:
        if self.error is not None:
            return  # the connection is closed
        data = memoryview(data)
        try:
            while data:
                buf = self.decoder.get_buffer(-1)
                assert len(buf) > 0, "get_buffer offered no room"
                n = min(len(buf), len(data))
                buf[:n] = data[:n]
                data = data[n:]
                self._on_frames(self.decoder.buffer_updated(n))
        except HandshakeError as exc:
            self.error = exc
            if exc.reject:
                self._write(exc.reject)
        except ProtocolError as exc:
            self.error = exc

    def send(self, kind: int, main: bytes = b"", parts=()) -> None:
        self._write(self.hs.sealer.seal(kind, main, parts))

    def _on_frames(self, frames: list) -> None:
        while frames:
            one_at_a_time = self.decoder.one_frame
            for frame in frames:
                self.got.append(frame)
                if self.decoder.opener is not None:  # it was read sealed
                    self.sealed_in.append(frame)
                self._on_frame(frame)
            if not one_at_a_time:
                return
            frames = self.decoder.buffer_updated(0)

    def _on_frame(self, frame: Frame) -> None:
        hs = self.hs
        if hs.done:
            self.received.append(frame)
            return
        out = hs.receive(frame)
        if out:
            self._write(out)
        decoder = self.decoder
        if hs.opener is not None and decoder.opener is None:
            decoder.seal(hs.opener)
            decoder.max_message_size = self.max_message_size
            decoder.kinds = frozenset(KIND_NAMES)
            decoder.max_parts = MAX_PARTS
            decoder.resize(RECEIVE_BUFFER)
        if hs.done:
            decoder.one_frame = False
            if self.greeting is not None:
                self.send(MESSAGE, self.greeting)

    def _write(self, chunks) -> None:
        data = wire(chunks)
        self.out.append(data)
        self.written.append(data)
        sealed = self.hs.sealer.seq if self.hs.sealer else 0
        if sealed > self._sealed:
            self._sealed = sealed
            self.sealed_out.append(data)


def check_handshake_on_junk(role: str, hello: bool, junk: bytes, reads: Iterator[int]) -> str:
    """A node talking to something that sends junk (after a valid HELLO or not), delivered in pieces
    of the sizes ``reads`` yields: refused, never verified, never a proof from a server."""
    side = Side(Handshake(role, b"k", "c", {"name": "me"}, nonce=NONCE_C), LIMIT)
    peer = Handshake("server" if role == "client" else "client", b"k", "c", {"name": "p"}, nonce=NONCE_S)
    data = (wire(peer.start()) if hello else b"") + junk
    pos = 0
    while pos < len(data):
        n = next(reads)
        side.deliver(data[pos:pos + n])
        pos += n
    assert side.error is None or isinstance(side.error, HandshakeError | ProtocolError)
    assert not side.hs.verified and not side.hs.done, "verified a peer that sent junk"
    allowed = {"HELLO", "REJECT"} | ({"AUTH"} if role == "client" else set())
    assert set(kinds(side.written)) <= allowed, f"a {role} wrote {kinds(side.written)} to junk"
    return type(side.error).__name__ if side.error else "waiting"


# -- a meddler between two handshakes -------------------------------------------------------------------

UNDISTURBED = {  # (wrong secret, who refuses the other): what each side ends with, nothing meddled
    (False, None): (None, None),
    (True, None): ("refused by the peer: 'authentication failed: the secrets of the two nodes differ'",
                   "authentication failed: the secrets of the two nodes differ"),
    (True, "c"): ("refused by the peer: 'authentication failed: the secrets of the two nodes differ'",
                  "authentication failed: the secrets of the two nodes differ"),
    (True, "s"): ("refused by the peer: 'authentication failed: the secrets of the two nodes differ'",
                  "authentication failed: the secrets of the two nodes differ"),
    (False, "c"): ("c refuses", "refused by the peer: 'c refuses'"),
    (False, "s"): ("refused by the peer: 's refuses'", "s refuses"),
}


class Meddler:
    """A client and a server, and the wire between them, which ``apply`` alters frame by frame.

    Frames in flight are queued per sender, one bytes object per frame written; a partial delivery
    leaves the rest of the frame at the head of its queue.
    """

    def __init__(self, client_secret=b"k", server_secret=b"k", refuse: str | None = None):
        def check(name):
            def check_peer(info):
                if refuse == name:
                    raise HandshakeError(f"{name} refuses")
            return check_peer

        client = Handshake("client", client_secret, "c", {"name": "a"}, nonce=NONCE_C, check_peer=check("c"))
        server = Handshake("server", server_secret, "c", {"name": "b"}, nonce=NONCE_S, check_peer=check("s"))
        self.sides = {"c": Side(client, LIMIT, greeting=b"from a"),
                      "s": Side(server, LIMIT, greeting=b"from b")}
        self.queues: dict[str, deque] = {"c": deque(), "s": deque()}
        self.seen: list[bytes] = []
        self._collect()

    def _collect(self) -> None:
        for name, side in self.sides.items():
            self.queues[name].extend(side.out)
            self.seen.extend(side.out)
            side.out.clear()

    def deliver(self, name: str, n: int | None = None) -> None:
        queue = self.queues[name]
        data = queue.popleft()
        if n is not None and n < len(data):
            queue.appendleft(data[n:])
            data = data[:n]
        self.sides["s" if name == "c" else "c"].deliver(data)
        self._collect()

    def apply(self, op: tuple) -> None:
        action, name, *args = op
        queue = self.queues[name]
        if action == "inject":
            queue.appendleft(args[0])
        elif action == "forge":
            queue.appendleft(frame_bytes(args[0], args[1]))
        elif action == "replay":
            queue.appendleft(self.seen[args[0] % len(self.seen)])
        elif not queue:
            return
        elif action == "deliver":
            self.deliver(name, args[0])
        elif action == "flip":
            data = bytearray(queue[0])
            if data:
                data[args[0] % len(data)] ^= 1 << args[1]
            queue[0] = bytes(data)
        elif action == "reflect":  # back to its sender
            self.queues["s" if name == "c" else "c"].appendleft(queue[0])
        elif action == "drop":
            queue.popleft()
        elif action == "dup":
            queue.appendleft(queue[0])
        elif action == "swap":
            if len(queue) > 1:
                queue[0], queue[1] = queue[1], queue[0]
        elif action == "truncate":
            queue[0] = queue[0][:args[0]]
        else:
            raise ValueError(action)

    def step(self) -> None:
        """One whole frame delivered unaltered, the two directions in turn."""
        self._turn = not getattr(self, "_turn", False)
        for name in ("cs" if self._turn else "sc"):
            if self.queues[name]:
                self.deliver(name)
                return

    def drain(self) -> None:
        for _ in range(1000):
            ready = [name for name in ("c", "s") if self.queues[name]]
            if not ready:
                return
            self.deliver(ready[0])
        raise AssertionError("the wire did not settle")


def check_outcome(m: Meddler, secrets_differ: bool) -> str:
    """The invariants of any run; returns its outcome: done, refused, ProtocolError or waiting."""
    c, s = m.sides["c"], m.sides["s"]
    client, server = c.hs, s.hs
    for side, peer in ((c, s), (s, c)):
        assert side.error is None or isinstance(side.error, HandshakeError | ProtocolError)
        # through a sealed decoder come the frames the peer sealed, in order, or nothing
        got = [(f.kind, bytes(f.main)) for f in side.sealed_in]
        assert got == frames_of(peer.sealed_out)[:len(got)], "a sealed frame came out that was not sent so"
        # sealed frames go only to a peer that proved the secret, and so holds the keys
        assert side.sealed_out == [] or peer.hs._keys == side.hs._keys[::-1], \
            "sealed frames went to a peer without the keys"
    if not server.verified:  # no proof, no info for a client that has not proved the secret
        assert set(kinds(s.written)) <= {"HELLO", "REJECT"}, \
            "the server answered a client that proved nothing"
    if client.done:  # the server proved the secret over this very transcript: it holds the same keys
        assert server.verified and server._keys == client._keys[::-1], "client done, server keys differ"
    if server.done:  # only the client's sealed AUTH_OK gets it there
        assert client.done and client._keys == server._keys[::-1], "server done, client keys differ"
    if secrets_differ:
        assert not client.verified and not server.verified, "verified without the secret"
    if client.done and server.done and c.error is None and s.error is None:
        # done on both sides only over the frames as sent (the flags byte of the unsealed handshake
        # frames is in no transcript, and carries nothing)
        for side, peer in ((c, s), (s, c)):
            got = [(f.kind, bytes(f.main)) for f in side.got]
            assert got == frames_of(peer.written)[:len(got)], "done over altered frames"
        return "done"
    if isinstance(c.error, HandshakeError) or isinstance(s.error, HandshakeError):
        return "refused"
    if c.error is not None or s.error is not None:
        return "ProtocolError"
    return "waiting"
