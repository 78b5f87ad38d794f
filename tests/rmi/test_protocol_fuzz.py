"""Fuzzing the protocol cores: arbitrary bytes into the decoders, and a meddler between two handshakes.

Bounded for the test suite; ``benchmarks/fuzz.py N`` runs the same fuzzers for as long as wanted.
"""

from __future__ import annotations

import struct
from collections import deque
from contextlib import contextmanager

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bndl_like.rmi import protocol
from bndl_like.rmi.errors import HandshakeError, ProtocolError
from bndl_like.rmi.protocol import (
    AUTH,
    AUTH_OK,
    CLOSE,
    HANDSHAKE_BUFFER,
    HANDSHAKE_KINDS,
    HANDSHAKE_MAX_MESSAGE,
    HELLO,
    KIND_NAMES,
    LARGE_PART,
    MESSAGE,
    PING,
    PREFIX,
    REJECT,
    FrameDecoder,
    FrameOpener,
    FrameSealer,
    Handshake,
)

from .test_protocol import KEY, NONCE_C, NONCE_S, Side, frame_bytes, handshake_decoder, kinds, wire

MiB = 1 << 20
LIMIT = 2 * MiB  # max_message_size of the sealed decoders
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextmanager
def allocations():
    """The sizes of the large part buffers the decoder allocates meanwhile."""
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


def receive(decoder: FrameDecoder, data: bytes, cuts: list[int], frames: list) -> None:
    """Receive ``data`` through get_buffer / buffer_updated in reads of the sizes in ``cuts`` (cycled,
    at least 1/256 of the data), draining one-frame-at-a-time decoders as the connection does; the
    frames go to ``frames`` as they come. ProtocolError propagates."""
    view = memoryview(data)
    least = len(data) // 256
    i = 0
    while view:
        buf = decoder.get_buffer(-1)
        assert len(buf) > 0 and not buf.readonly
        n = min(len(buf), len(view), max(least, cuts[i % len(cuts)]) if cuts else len(view))
        i += 1
        buf[:n] = view[:n]
        view = view[n:]
        got = decoder.buffer_updated(n)
        while got:
            frames += got
            got = decoder.buffer_updated(0) if decoder.one_frame else []


# -- bytes that look like frames ------------------------------------------------------------------------

LENGTHS = [0, 1, 31, 32, 33, 100, HANDSHAKE_MAX_MESSAGE, HANDSHAKE_MAX_MESSAGE + 1, LARGE_PART,
           LARGE_PART + 1, MiB, LIMIT, LIMIT + 1, 2**63, 2**64 - 1]


@st.composite
def headers(draw) -> bytes:
    nparts = draw(st.sampled_from([0, 0, 1, 2, 3, 0xFFFF]))
    lengths = draw(st.lists(st.sampled_from(LENGTHS), min_size=min(nparts, 3), max_size=min(nparts, 3)))
    kind, flags, main_len = draw(st.integers(0, 9)), draw(st.integers(0, 255)), draw(st.sampled_from(LENGTHS))
    head = PREFIX.pack(kind, flags, nparts, main_len)
    return head + b"".join(struct.pack("<Q", n) for n in lengths)


def _frame(args) -> bytes:
    kind, main = args
    return frame_bytes(kind, main)


pieces = st.one_of(
    st.binary(max_size=64),
    headers(),
    st.tuples(st.integers(0, 9), st.binary(max_size=200)).map(_frame),
    st.sampled_from([b"\x00" * 1000, b"\xff" * 1000, b'{"nonce": "' + b"ab" * 16 + b'"}']),
)
wire_bytes = st.lists(pieces, max_size=12).map(b"".join)
cuts = st.lists(st.integers(1, 3000), max_size=8)


# -- (a) arbitrary bytes into the decoders ------------------------------------------------------------


@FUZZ
@given(data=wire_bytes, cuts=cuts, one_frame=st.booleans())
def test_handshake_decoder_on_arbitrary_bytes(data, cuts, one_frame):
    decoder = handshake_decoder()
    decoder.one_frame = one_frame
    buffer = decoder.get_buffer().obj
    frames: list = []
    with allocations() as sizes:
        try:
            receive(decoder, data, cuts, frames)
        except ProtocolError:
            pass
    for frame in frames:
        assert frame.kind in HANDSHAKE_KINDS and frame.parts == []
        assert len(frame.main) <= HANDSHAKE_MAX_MESSAGE
    assert sizes == []  # nothing but the fixed buffer, whatever the bytes announce
    assert decoder.get_buffer().obj is buffer and len(buffer) == HANDSHAKE_BUFFER


@FUZZ
@given(data=wire_bytes, cuts=cuts)
def test_sealed_decoder_on_arbitrary_bytes(data, cuts):
    """Nothing without a tag of the key comes out; what an announced frame costs is bounded by the limit."""
    decoder = FrameDecoder(LIMIT)
    decoder.seal(FrameOpener(KEY))
    frames: list = []
    with allocations() as sizes:
        try:
            receive(decoder, data, cuts, frames)
        except ProtocolError:
            pass
    assert frames == []
    assert all(LARGE_PART < size <= LIMIT for size in sizes)
    assert sum(sizes) <= LIMIT  # no frame completes, so all of it is for one frame


frame_specs = st.lists(
    st.tuples(
        st.sampled_from(sorted(KIND_NAMES)),
        st.integers(0, 255),
        st.sampled_from([0, 1, 300, LARGE_PART, LARGE_PART + 1, 100_000]),
        st.lists(st.sampled_from([0, 1, 100, LARGE_PART, LARGE_PART + 1, 150_000]), max_size=3),
    ),
    min_size=1, max_size=5,
)
frame_ops = st.lists(
    st.one_of(
        st.tuples(st.just("dup"), st.integers(0, 9), st.integers(0, 9)),  # frame i again before frame j
        st.tuples(st.just("drop"), st.integers(0, 9)),
        st.tuples(st.just("swap"), st.integers(0, 9)),  # frames i and i + 1
        st.tuples(st.just("flip head"), st.integers(0, 9), st.integers(0, 15), st.integers(0, 7)),
    ),
    max_size=2,
)
byte_ops = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 2**32), st.integers(0, 7)),
        st.tuples(st.just("insert"), st.integers(0, 2**32), st.binary(min_size=1, max_size=20)),
        st.tuples(st.just("delete"), st.integers(0, 2**32), st.integers(1, 40)),
        st.tuples(st.just("repeat"), st.integers(0, 2**32), st.integers(1, 200)),
    ),
    max_size=3,
)


def mutate(frames: list[bytes], frame_ops, byte_ops) -> bytes:
    """Frames duplicated, dropped, swapped or flipped near their start, then bytes of the whole altered."""
    frames = list(frames)
    for op, i, *args in frame_ops:
        if not frames:
            break
        i %= len(frames)
        if op == "dup":
            frames.insert(args[0] % (len(frames) + 1), frames[i])
        elif op == "drop":
            del frames[i]
        elif op == "swap":
            if i + 1 < len(frames):
                frames[i], frames[i + 1] = frames[i + 1], frames[i]
        else:
            offset, bit = args
            data = bytearray(frames[i])
            data[offset % len(data)] ^= 1 << bit
            frames[i] = bytes(data)
    out = bytearray(b"".join(frames))
    for op, pos, arg in byte_ops:
        if not out:
            break
        pos %= len(out)
        if op == "flip":
            out[pos] ^= 1 << arg
        elif op == "insert":
            out[pos:pos] = arg
        elif op == "delete":
            del out[pos:pos + arg]
        else:
            out[pos:pos] = out[pos:pos + arg]
    return bytes(out)


@FUZZ
@given(specs=frame_specs, frame_ops=frame_ops, byte_ops=byte_ops, cuts=cuts, seed=st.integers(0, 255))
def test_sealed_decoder_hands_out_only_what_was_sealed(specs, frame_ops, byte_ops, cuts, seed):
    """From an altered stream of sealed frames, a prefix of the frames sealed, in order, then
    at most a ProtocolError."""
    sealer = FrameSealer(KEY)
    sent = [(kind, flags, bytes([seed]) * main_len, [bytes([i]) * n for i, n in enumerate(sizes)])
            for kind, flags, main_len, sizes in specs]
    sealed = [wire(sealer.seal(kind, main, parts, flags)) for kind, flags, main, parts in sent]
    data = b"".join(sealed)
    altered = mutate(sealed, frame_ops, byte_ops)
    decoder = FrameDecoder(LIMIT)
    decoder.seal(FrameOpener(KEY))
    frames: list = []
    error = None
    with allocations() as sizes:
        try:
            receive(decoder, altered, cuts, frames)
        except ProtocolError as exc:
            error = exc
    got = [(f.kind, f.flags, bytes(f.main), [bytes(p) for p in f.parts]) for f in frames]
    assert got == sent[:len(got)]
    if altered == data:
        assert got == sent and error is None and not decoder.pending
    elif data.startswith(altered):
        assert error is None  # a cut stream: what is complete, then waiting
    else:
        assert got != sent or decoder.pending or error is not None
    assert all(size <= LIMIT for size in sizes)


# -- (b) a meddler between two handshakes ----------------------------------------------------------------


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


def frames_of(written: list[bytes]) -> list[tuple]:
    """(kind, main) of each written frame (handshake frames and the greetings have no parts)."""
    out = []
    for data in written:
        kind, _, nparts, main_len = PREFIX.unpack_from(data)
        assert nparts == 0
        out.append((kind, data[PREFIX.size:PREFIX.size + main_len]))
    return out


def check_outcome(m: Meddler, secrets_differ: bool) -> str:
    """The invariants of any run; returns its outcome."""
    c, s = m.sides["c"], m.sides["s"]
    client, server = c.hs, s.hs
    for side, peer in ((c, s), (s, c)):
        assert side.error is None or isinstance(side.error, HandshakeError | ProtocolError)
        # through a sealed decoder come the frames the peer sealed, in order, or nothing
        got = [(f.kind, bytes(f.main)) for f in side.sealed_in]
        assert got == frames_of(peer.sealed_out)[:len(got)]
        # sealed frames go only to a peer that proved the secret, and so holds the keys
        assert side.sealed_out == [] or peer.hs._keys == side.hs._keys[::-1]
    if not server.verified:  # no proof, no info for a client that has not proved the secret
        assert set(kinds(s.written)) <= {"HELLO", "REJECT"}
    if client.done:  # the server proved the secret over this very transcript: it holds the same keys
        assert server.verified and server._keys == client._keys[::-1]
    if server.done:  # only the client's sealed AUTH_OK gets it there
        assert client.done and client._keys == server._keys[::-1]
    if secrets_differ:
        assert not client.verified and not server.verified
    if client.done and server.done and c.error is None and s.error is None:
        # done on both sides only over the frames as sent (the flags byte of the unsealed handshake
        # frames is in no transcript, and carries nothing)
        for side, peer in ((c, s), (s, c)):
            got = [(f.kind, bytes(f.main)) for f in side.got]
            assert got == frames_of(peer.written)[:len(got)]
        return "done"
    if isinstance(c.error, HandshakeError) or isinstance(s.error, HandshakeError):
        return "refused"
    if c.error is not None or s.error is not None:
        return "protocol error"
    return "stalled"


names = st.sampled_from("cs")
actions = st.one_of(  # what the meddler does to the frame at the head of one direction
    st.tuples(st.just("deliver"), st.integers(1, 200)),  # a part of it
    st.tuples(st.just("deliver"), st.just(1 << 20)),
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(0, 7)),
    st.tuples(st.just("drop")),
    st.tuples(st.just("dup")),
    st.tuples(st.just("reflect")),
    st.tuples(st.just("swap")),
    st.tuples(st.just("truncate"), st.integers(0, 120)),
    st.tuples(st.just("inject"), st.binary(max_size=40)),
    st.tuples(st.just("forge"), st.sampled_from([HELLO, AUTH, AUTH_OK, REJECT, CLOSE, MESSAGE, PING]),
              st.binary(max_size=60)),
    st.tuples(st.just("replay"), st.integers(0, 20)),
)
meddling = st.tuples(names, actions).map(lambda t: (t[1][0], t[0], *t[1][1:]))
# an action on the frame of a kind from one side, when it is about to be delivered
targeted = st.tuples(names, st.sampled_from([HELLO, AUTH, AUTH_OK, MESSAGE, REJECT]), actions)


@settings(FUZZ, max_examples=400)
@given(ops=st.lists(meddling, max_size=25), wrong_secret=st.sampled_from([False, False, False, True]),
       refuse=st.sampled_from([None, None, None, None, "c", "s"]), steps=st.lists(st.booleans()))
def test_meddled_handshake(ops, wrong_secret, refuse, steps):
    """Each alteration may be followed by a frame delivered as sent: the handshake moves on, so
    alterations land in every phase of it."""
    m = Meddler(server_secret=b"x" if wrong_secret else b"k", refuse=refuse)
    for i, op in enumerate(ops):
        m.apply(op)
        if steps[i % len(steps)] if steps else True:
            m.step()
    m.drain()
    outcome = check_outcome(m, wrong_secret)
    event(outcome)
    if outcome == "done":
        assert not wrong_secret and refuse is None
        assert [f.main for f in m.sides["c"].received] in ([], [b"from b"])  # unless dropped
        assert [f.main for f in m.sides["s"].received] in ([], [b"from a"])


@settings(FUZZ, max_examples=400)
@given(ops=st.lists(targeted, min_size=1, max_size=3), order=st.lists(st.booleans()))
def test_meddled_handshake_frame_by_frame(ops, order):
    """The handshake goes frame by frame (from the side ``order`` says when both have one); an
    action fires on the first frame of its kind that one side is about to deliver."""
    m = Meddler()
    pending = list(ops)
    for i in range(100):
        ready = [name for name in "cs" if m.queues[name]]
        if not ready:
            break
        name = ready[0] if len(ready) == 1 or not order else "cs"[order[i % len(order)]]
        for op in [op for op in pending if op[0] == name and m.queues[name][0][:1] == bytes([op[1]])]:
            pending.remove(op)
            action, *args = op[2]
            m.apply((action, name, *args))
        if m.queues[name]:
            m.deliver(name)
    m.drain()
    event(check_outcome(m, False))


UNDISTURBED = {  # (wrong secret, who refuses the other): what each side ends with
    (False, None): (None, None),
    (True, None): ("refused by the peer: 'authentication failed: the secrets of the two nodes differ'",
                   "authentication failed: the secrets of the two nodes differ"),
    (False, "c"): ("c refuses", "refused by the peer: 'c refuses'"),
    (False, "s"): ("refused by the peer: 's refuses'", "s refuses"),
}


@FUZZ
@given(ops=st.lists(st.tuples(st.just("deliver"), names, st.integers(1, 200)), max_size=40),
       case=st.sampled_from(sorted(UNDISTURBED, key=str)))
def test_undisturbed_handshake(ops, case):
    """The control for the test above: deliveries in any order and split anyhow, nothing altered."""
    wrong_secret, refuse = case
    m = Meddler(server_secret=b"x" if wrong_secret else b"k", refuse=refuse)
    for op in ops:
        m.apply(op)
    m.drain()
    outcome = check_outcome(m, wrong_secret)
    c, s = m.sides["c"], m.sides["s"]
    assert [c.error and str(c.error), s.error and str(s.error)] == list(UNDISTURBED[case])
    assert all(e is None or isinstance(e, HandshakeError) for e in (c.error, s.error))
    if case == (False, None):
        assert outcome == "done"
        assert [f.main for f in c.received] == [b"from b"]
        assert [f.main for f in s.received] == [b"from a"]


@FUZZ
@given(data=wire_bytes, cuts=cuts, role=st.sampled_from(["client", "server"]), hello=st.booleans())
def test_handshake_on_arbitrary_bytes(data, cuts, role, hello):
    """A node talking to something that sends junk (after a valid HELLO or not)."""
    side = Side(Handshake(role, b"k", "c", {"name": "me"}, nonce=NONCE_C), LIMIT)
    peer = Handshake("server" if role == "client" else "client", b"k", "c", {"name": "p"}, nonce=NONCE_S)
    data = (wire(peer.start()) if hello else b"") + data
    pos = i = 0
    while pos < len(data):
        n = cuts[i % len(cuts)] if cuts else len(data)
        side.deliver(data[pos:pos + n])
        pos += n
        i += 1
    assert side.error is None or isinstance(side.error, HandshakeError | ProtocolError)
    assert not side.hs.verified and not side.hs.done
    allowed = {"HELLO", "REJECT"} | ({"AUTH"} if role == "client" else set())
    assert set(kinds(side.written)) <= allowed
