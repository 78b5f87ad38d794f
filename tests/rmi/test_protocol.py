"""The sans-I/O wire protocol: framing (``encode`` / ``FrameDecoder``) and the ``Handshake``.

No sockets, no event loop, no sleeps: the cores are driven with bytes and frames only.
"""

from __future__ import annotations

import json
import pickle
import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bndl_like.rmi import protocol
from bndl_like.rmi.errors import HandshakeError, ProtocolError
from bndl_like.rmi.protocol import (
    AUTH,
    AUTH_OK,
    CLOSE,
    HANDSHAKE_MAX_MESSAGE,
    HELLO,
    KIND_NAMES,
    LARGE_PART,
    MAX_PARTS,
    MESSAGE,
    PING,
    PREFIX,
    PROTOCOL_VERSION,
    REJECT,
    RETIRE,
    Frame,
    FrameDecoder,
    Handshake,
    encode,
    frame_size,
)

MiB = 1 << 20
BIG = 1 << 40  # a max_message_size that never gets in the way
# what the connection lets through its decoder before the handshake is done (connection.HANDSHAKE_KINDS)
HANDSHAKE_KINDS = frozenset({HELLO, AUTH, AUTH_OK, REJECT, MESSAGE, PING, CLOSE})
NONCE_C = bytes(range(32))
NONCE_S = bytes(range(100, 132))


# -- helpers -------------------------------------------------------------------------------------------


def wire(chunks) -> bytes:
    """The bytes a transport would write for the chunks ``encode`` returned."""
    return b"".join(bytes(c) for c in chunks)


def frame_bytes(kind: int, main: bytes = b"", parts=(), flags: int = 0) -> bytes:
    return wire(encode(kind, main, parts, flags))


def header(kind: int, main_len: int, part_lengths=(), flags: int = 0) -> bytes:
    """A frame header written by hand, independently of ``encode``."""
    return PREFIX.pack(kind, flags, len(part_lengths), main_len) + b"".join(
        struct.pack("<Q", n) for n in part_lengths)


def as_tuple(frame: Frame):
    return frame.kind, frame.flags, bytes(frame.main), [bytes(p) for p in frame.parts]


def payload(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def feed_in_chunks(decoder: FrameDecoder, data: bytes, rng: random.Random, max_chunk: int) -> list:
    frames = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, max_chunk)
        frames.extend(decoder.feed(data[pos:pos + n]))
        pos += n
    return frames


def drive_buffered(decoder: FrameDecoder, data: bytes, rng: random.Random | None = None):
    """Receive ``data`` the way asyncio.BufferedProtocol does: get_buffer, write into it, buffer_updated.

    With ``rng`` each write fills a random amount (at least one byte) of the offered buffer, else all
    of it. Returns the frames and the list of (buffer owner, bytes written) of every write.
    """
    data = memoryview(data)
    frames: list = []
    writes: list = []
    while data:
        view = decoder.get_buffer(-1)
        assert isinstance(view, memoryview)
        assert len(view) > 0, "get_buffer must never offer an empty buffer"
        assert not view.readonly
        n = min(len(view), len(data))
        if rng is not None:
            n = rng.randint(1, n)
        view[:n] = data[:n]
        writes.append((view.obj, n))
        data = data[n:]
        frames.extend(decoder.buffer_updated(n))
    return frames, writes


def one_frame(chunks) -> Frame:
    frames = FrameDecoder(BIG).feed(wire(chunks))
    assert len(frames) == 1, frames
    return frames[0]


def hello_frame(nonce: bytes, name: str = "peer", cluster: str = "c",
                version: int = PROTOCOL_VERSION) -> Frame:
    hello = {"protocol": version, "cluster": cluster, "name": name, "nonce": nonce.hex()}
    return Frame(HELLO, json.dumps(hello).encode())


def make_pair(secret="s3cret", client_secret=None, server_secret=None, cluster="c"):
    client = Handshake("client", secret if client_secret is None else client_secret, cluster,
                       {"name": "the-client", "type": "worker", "pid": 11}, nonce=NONCE_C)
    server = Handshake("server", secret if server_secret is None else server_secret, cluster,
                       {"name": "the-server", "type": "driver", "pid": 22}, nonce=NONCE_S)
    return client, server


def pump(client: Handshake, server: Handshake, rng: random.Random | None = None) -> list:
    """Run two handshakes against each other through encode / FrameDecoder until the wires are quiet.

    With ``rng`` the direction and size of every delivery is random. Returns the (sender role, kind)
    of each delivered frame. HandshakeError propagates.
    """
    wires = {client: bytearray(wire(client.start())), server: bytearray(wire(server.start()))}
    decoders = {side: FrameDecoder(HANDSHAKE_MAX_MESSAGE, kinds=HANDSHAKE_KINDS) for side in wires}
    log = []
    for _ in range(10_000):
        ready = [side for side in (client, server) if wires[side]]
        if not ready:
            return log
        sender = rng.choice(ready) if rng else ready[0]
        receiver = server if sender is client else client
        data = wires[sender]
        n = rng.randint(1, len(data)) if rng else len(data)
        chunk = bytes(data[:n])
        del data[:n]
        for frame in decoders[receiver].feed(chunk):
            log.append((sender.role, KIND_NAMES[frame.kind]))
            wires[receiver] += wire(receiver.receive(frame))
    raise AssertionError("the handshake did not settle")


class _CreatesFile:
    """Unpickling this creates the file at ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


# -- encode --------------------------------------------------------------------------------------------


def test_encode_small_frame_layout():
    chunks = encode(MESSAGE, b"abc", flags=7)
    assert len(chunks) == 1
    assert chunks[0] == bytes([MESSAGE, 7]) + (0).to_bytes(2, "little") + (3).to_bytes(8, "little") + b"abc"


def test_encode_frame_with_parts_layout():
    chunks = encode(PING, b"mm", [b"x", b"yyy"])
    assert chunks == [header(PING, 2, [1, 3]) + b"mm" + b"x" + b"yyy"]
    assert frame_size(chunks) == PREFIX.size + 16 + 6


def test_encode_small_parts_are_joined_into_one_write():
    parts = [b"a" * (LARGE_PART // 2), bytearray(b"b" * (LARGE_PART // 2))]
    chunks = encode(MESSAGE, b"m", parts)
    assert len(chunks) == 1 and isinstance(chunks[0], bytes)
    assert chunks[0].endswith(b"a" * (LARGE_PART // 2) + b"b" * (LARGE_PART // 2))


def test_encode_returns_large_parts_uncopied():
    parts = [bytearray(LARGE_PART), np.arange(1000, dtype=np.int64), b"tail"]
    chunks = encode(MESSAGE, b"main", parts)
    assert len(chunks) == 4
    assert chunks[0] == header(MESSAGE, 4, [LARGE_PART, 8000, 4]) + b"main"
    for chunk, part in zip(chunks[1:], parts, strict=True):
        assert chunk is part
    assert frame_size(chunks) == len(chunks[0]) + LARGE_PART + 8000 + 4


def test_encode_refuses_too_many_parts():
    with pytest.raises(ProtocolError, match=str(MAX_PARTS)):
        encode(MESSAGE, b"", [b""] * (MAX_PARTS + 1))
    assert len(encode(MESSAGE, b"", [b""] * MAX_PARTS)) == 1


# -- FrameDecoder: round trips -------------------------------------------------------------------------

ROUND_TRIP_CASES = {
    "empty": (b"", []),
    "main only": (b"hello", []),
    "empty main, parts": (b"", [b"abc", b"de"]),
    "empty parts": (b"m", [b"", b"", b""]),
    "small parts": (b"main", [b"a", b"bb" * 100, b"c" * 5000]),
    "part just below LARGE_PART": (b"m", [b"\x01" * (LARGE_PART - 1)]),
    "part of exactly LARGE_PART": (b"m", [b"\x02" * LARGE_PART]),
    "part just above LARGE_PART": (b"m", [b"\x03" * (LARGE_PART + 1)]),
    "1 MiB part": (b"m", ["rand", MiB]),
    "3 MiB part": (b"m", ["rand", 3 * MiB]),
    "mixed large and small": (b"m" * 100, ["rand", 3 * MiB, b"small", "rand", MiB, b"", b"x"]),
    "large main": ("rand", 200_000),
    "many parts": (b"m", [bytes([i % 256]) * (i % 7) for i in range(1000)]),
    "MAX_PARTS parts": (b"m", [bytes([i % 251]) for i in range(MAX_PARTS)]),
}


def _materialize(case, rng):
    main, parts = case
    if main == "rand":
        return payload(rng, parts), []
    out = []
    it = iter(parts)
    for p in it:
        out.append(payload(rng, next(it)) if p == "rand" else p)
    return main, out


@pytest.mark.parametrize("case", ROUND_TRIP_CASES.values(), ids=ROUND_TRIP_CASES.keys())
def test_round_trip(case):
    main, parts = _materialize(case, random.Random(1))
    decoder = FrameDecoder(BIG)
    frames = decoder.feed(frame_bytes(MESSAGE, main, parts, flags=3))
    assert len(frames) == 1
    frame = frames[0]
    assert (frame.kind, frame.flags) == (MESSAGE, 3)
    assert bytes(frame.main) == main
    assert len(frame.parts) == len(parts)
    for got, sent in zip(frame.parts, parts, strict=True):
        assert not memoryview(got).readonly  # writable, so numpy arrays on it are too
        assert bytes(got) == bytes(sent)
    assert not decoder.pending
    assert decoder.bytes_received == len(frame_bytes(MESSAGE, main, parts, flags=3))


def test_round_trip_from_chunks_as_written():
    """The chunk list of ``encode`` (uncopied large parts) is what a transport writes, in order."""
    rng = random.Random(2)
    parts = [payload(rng, MiB), b"s", np.arange(300_000, dtype=np.float64)]
    decoder = FrameDecoder(BIG)
    frames = []
    for chunk in encode(MESSAGE, b"main", parts):
        frames.extend(decoder.feed(chunk))
    assert len(frames) == 1
    assert frames[0].parts[0] == parts[0]
    assert frames[0].parts[1] == b"s"
    assert np.array_equal(np.frombuffer(frames[0].parts[2], dtype=np.float64), parts[2])


def test_main_part_is_bytes_when_small():
    frame = FrameDecoder(BIG).feed(frame_bytes(MESSAGE, b"main", [b"part"]))[0]
    assert type(frame.main) is bytes and frame.main == b"main"


@pytest.mark.parametrize("flags", [0, 1, 0x80, 0xFF])
@pytest.mark.parametrize("kind", sorted(KIND_NAMES))
def test_kind_and_flags_round_trip(kind, flags):
    frames = FrameDecoder(BIG).feed(frame_bytes(kind, b"x", flags=flags))
    assert [(f.kind, f.flags, f.main) for f in frames] == [(kind, flags, b"x")]


@pytest.mark.parametrize("size", [16, LARGE_PART - 8, 4 * MiB])
def test_parts_can_back_writable_numpy_arrays(size):
    sent = np.arange(size // 8, dtype=np.int64)
    frame = FrameDecoder(BIG).feed(frame_bytes(MESSAGE, b"m", [sent]))[0]
    arr = np.frombuffer(frame.parts[0], dtype=np.int64)
    assert arr.flags.writeable
    assert np.array_equal(arr, sent)
    arr[0] = -5  # writes through to the received buffer, no copy was needed
    assert np.frombuffer(frame.parts[0], dtype=np.int64)[0] == -5


def test_frame_repr():
    assert repr(Frame(MESSAGE, b"abc", [b"", b""])) == "<Frame MESSAGE main=3B parts=2>"
    assert repr(Frame(99, b"")) == "<Frame 99 main=0B parts=0>"


# -- FrameDecoder: chunking ----------------------------------------------------------------------------


def _stream(rng: random.Random) -> tuple[bytes, list]:
    frames = [
        (HELLO, b'{"a": 1}', []),
        (MESSAGE, b"", []),
        (MESSAGE, payload(rng, 300), [payload(rng, 10), b"", payload(rng, LARGE_PART + 5)]),
        (PING, b"p", [], ),
        (MESSAGE, b"m", [payload(rng, 2 * LARGE_PART), payload(rng, LARGE_PART), payload(rng, 3)]),
        (CLOSE, b"bye", []),
    ]
    data = b"".join(frame_bytes(k, m, p, flags=i) for i, (k, m, p) in enumerate(frames))
    expected = [(k, i, m, list(p)) for i, (k, m, p) in enumerate(frames)]
    return data, expected


def test_several_frames_in_one_feed():
    data, expected = _stream(random.Random(3))
    decoder = FrameDecoder(BIG)
    assert [as_tuple(f) for f in decoder.feed(data)] == expected
    assert not decoder.pending


def test_feeding_byte_by_byte():
    data, expected = _stream(random.Random(4))
    decoder = FrameDecoder(BIG)
    frames = []
    for i in range(len(data)):
        frames.extend(decoder.feed(data[i:i + 1]))
    assert [as_tuple(f) for f in frames] == expected
    assert not decoder.pending
    assert decoder.bytes_received == len(data)


@pytest.mark.parametrize("seed", range(8))
def test_feeding_random_chunks(seed):
    rng = random.Random(seed)
    data, expected = _stream(rng)
    frames = feed_in_chunks(FrameDecoder(BIG), data, rng, max_chunk=rng.choice([7, 500, 70_000]))
    assert [as_tuple(f) for f in frames] == expected


@pytest.mark.parametrize("seed", range(3))
def test_random_chunks_with_multi_mib_parts(seed):
    rng = random.Random(100 + seed)
    parts = [payload(rng, 3 * MiB), payload(rng, 17), payload(rng, MiB)]
    data = frame_bytes(MESSAGE, b"big", parts) + frame_bytes(PING, b"after")
    frames = feed_in_chunks(FrameDecoder(BIG), data, rng, max_chunk=300_000)
    assert [as_tuple(f) for f in frames] == [(MESSAGE, 0, b"big", parts), (PING, 0, b"after", [])]


def test_frame_split_at_every_boundary_of_its_header():
    data = frame_bytes(MESSAGE, b"main", [b"p0", b"", b"p2"], flags=9) + frame_bytes(PING, b"next")
    head_len = PREFIX.size + 3 * 8
    first_len = head_len + 4 + 2 + 0 + 2
    expected = [(MESSAGE, 9, b"main", [b"p0", b"", b"p2"]), (PING, 0, b"next", [])]
    for cut in range(1, len(data)):
        decoder = FrameDecoder(BIG)
        first = decoder.feed(data[:cut])
        assert len(first) == (cut >= first_len), cut
        assert decoder.pending == (cut != first_len), cut  # idle only exactly between the frames
        rest = decoder.feed(data[cut:])
        assert [as_tuple(f) for f in first + rest] == expected, cut
        assert not decoder.pending


def test_frame_split_at_every_pair_of_boundaries():
    data = frame_bytes(AUTH, b"mac+info", [b"xy"]) + frame_bytes(AUTH_OK)
    expected = [(AUTH, 0, b"mac+info", [b"xy"]), (AUTH_OK, 0, b"", [])]
    for i in range(1, len(data)):
        for j in range(i, len(data)):
            decoder = FrameDecoder(BIG)
            frames = decoder.feed(data[:i]) + decoder.feed(data[i:j]) + decoder.feed(data[j:])
            assert [as_tuple(f) for f in frames] == expected, (i, j)


frame_specs = st.lists(
    st.tuples(
        st.sampled_from(sorted(KIND_NAMES)),
        st.integers(0, 255),
        st.integers(0, 300),
        st.lists(st.sampled_from([0, 1, 100, LARGE_PART - 1, LARGE_PART, LARGE_PART + 1, 150_000]),
                 max_size=5),
    ),
    min_size=1, max_size=6,
)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(specs=frame_specs, seed=st.integers(0, 2**32), max_chunk=st.sampled_from([1, 13, 4096, 100_000]))
def test_any_chunking_gives_the_frames_of_one_feed(specs, seed, max_chunk):
    rng = random.Random(seed)
    sent = [(kind, flags, payload(rng, main_len), [payload(rng, n) for n in sizes])
            for kind, flags, main_len, sizes in specs]
    data = b"".join(frame_bytes(kind, main, parts, flags) for kind, flags, main, parts in sent)
    if max_chunk < 100 and len(data) > 50_000:
        max_chunk = 1000  # tiny chunks through ~1 MB would only be slow (other tests cover them)
    at_once = [as_tuple(f) for f in FrameDecoder(BIG).feed(data)]
    assert at_once == sent
    assert [as_tuple(f) for f in feed_in_chunks(FrameDecoder(BIG), data, rng, max_chunk)] == sent
    frames, _ = drive_buffered(FrameDecoder(BIG), data, rng)
    assert [as_tuple(f) for f in frames] == sent


def test_smallest_allowed_buffer_compacts_correctly():
    """A decoder with the smallest buffer it accepts must shift partial frames to make room."""
    size = LARGE_PART * 2 + PREFIX.size + 8 * MAX_PARTS
    rng = random.Random(5)
    sent = []
    for i in range(40):
        parts = [payload(rng, rng.choice([LARGE_PART, LARGE_PART - 3, 1000, 0]))
                 for _ in range(rng.randint(0, 3))]
        if i % 10 == 0:
            parts = [b"z"] * MAX_PARTS  # a maximal header at a random offset
        sent.append((MESSAGE, i % 256, payload(rng, rng.randint(0, 2000)), parts))
    data = b"".join(frame_bytes(k, m, p, f) for k, f, m, p in sent)
    for seed in range(3):
        frames, _ = drive_buffered(FrameDecoder(BIG, buffer_size=size), data, random.Random(seed))
        assert [as_tuple(f) for f in frames] == sent


# -- FrameDecoder: the buffer protocol and zero copy ---------------------------------------------------


@pytest.mark.parametrize("seed", [None, 6, 7])
def test_buffered_protocol_receive(seed):
    data, expected = _stream(random.Random(8))
    decoder = FrameDecoder(BIG)
    frames, writes = drive_buffered(decoder, data, random.Random(seed) if seed is not None else None)
    assert [as_tuple(f) for f in frames] == expected
    assert sum(n for _, n in writes) == decoder.bytes_received == len(data)
    assert not decoder.pending


@pytest.mark.parametrize("size", [MiB, 3 * MiB])
def test_large_part_is_received_into_its_own_buffer(size):
    rng = random.Random(9)
    part = payload(rng, size)
    data = frame_bytes(MESSAGE, b"main", [part]) + frame_bytes(PING, b"next")
    decoder = FrameDecoder(BIG)
    frames, writes = drive_buffered(decoder, data)
    assert [as_tuple(f) for f in frames] == [(MESSAGE, 0, b"main", [part]), (PING, 0, b"next", [])]
    part_received = frames[0].parts[0]
    # a large part may be a memoryview over memory that was not zero-filled: compare exporters
    received = part_received.obj if isinstance(part_received, memoryview) else part_received
    direct = sum(n for obj, n in writes if obj is received)
    # all but what arrived with the header in the decoder's own buffer went straight into the part
    assert direct >= size - (1 << 18)
    assert direct > 0
    others = {id(obj) for obj, _ in writes if obj is not received}
    assert len(others) == 1  # the decoder's one internal buffer, nothing else


def test_get_buffer_exposes_exactly_the_rest_of_a_large_part():
    rng = random.Random(10)
    size = 2 * MiB
    part = payload(rng, size)
    data = frame_bytes(MESSAGE, b"main", [part, b"after"])
    decoder = FrameDecoder(BIG)
    prelude = len(data) - size - 5 + 1000  # header, main and the first 1000 bytes of the part
    assert decoder.feed(data[:prelude]) == []
    assert decoder.pending

    view = decoder.get_buffer()
    assert len(view) == size - 1000  # a BufferedProtocol cannot write past the part
    view[:100] = part[1000:1100]
    assert decoder.buffer_updated(100) == []

    view = decoder.get_buffer()
    assert len(view) == size - 1100
    target = view.obj
    view[:] = part[1100:]
    assert decoder.buffer_updated(len(view)) == []  # the small trailing part is still missing
    assert decoder.pending
    assert decoder.get_buffer().obj is not target  # back to the decoder's own buffer

    frames = decoder.feed(data[-5:])
    assert len(frames) == 1
    got = frames[0].parts[0]
    assert (got.obj if isinstance(got, memoryview) else got) is target  # the very buffer: no copy
    assert frames[0].parts[0] == part and frames[0].parts[1] == b"after"
    assert not decoder.pending


def test_consecutive_large_parts_each_get_their_own_buffer():
    rng = random.Random(11)
    parts = [payload(rng, MiB), payload(rng, MiB + 1), payload(rng, 2 * LARGE_PART)]
    data = frame_bytes(MESSAGE, b"m", parts)
    frames, writes = drive_buffered(FrameDecoder(BIG), data)
    assert len(frames) == 1
    # large parts may be memoryviews over memory that was not zero-filled: compare exporters
    received = [p.obj if isinstance(p, memoryview) else p for p in frames[0].parts]
    assert [bytes(p) for p in frames[0].parts] == parts
    assert len({id(p) for p in received}) == 3
    # the first part partly arrives with the header; the later ones entirely straight into their buffer
    assert sum(n for obj, n in writes if obj is received[1]) == len(parts[1])
    assert sum(n for obj, n in writes if obj is received[2]) == len(parts[2])


# -- FrameDecoder: pending -----------------------------------------------------------------------------


def test_pending():
    decoder = FrameDecoder(BIG)
    assert not decoder.pending
    data = frame_bytes(MESSAGE, b"main", [b"x" * 10, b"y" * (LARGE_PART + 10)])
    assert decoder.feed(data[:1]) == [] and decoder.pending  # part of the prefix
    assert decoder.feed(data[1:PREFIX.size]) == [] and decoder.pending  # prefix, not the lengths
    assert decoder.feed(data[PREFIX.size:30]) == [] and decoder.pending  # header (28 B) done, main partly
    assert decoder.feed(data[30:-1]) == [] and decoder.pending  # one byte of the large part missing
    assert len(decoder.feed(data[-1:])) == 1
    assert not decoder.pending
    # an empty frame is complete with its prefix
    assert len(decoder.feed(frame_bytes(AUTH_OK))) == 1
    assert not decoder.pending
    # a complete frame followed by a partial one
    two = frame_bytes(PING, b"a") + frame_bytes(PING, b"bc")
    assert len(decoder.feed(two[:-1])) == 1
    assert decoder.pending
    assert [f.main for f in decoder.feed(two[-1:])] == [b"bc"]
    assert not decoder.pending


def test_pending_through_the_buffer_interface():
    decoder = FrameDecoder(BIG)
    data = frame_bytes(MESSAGE, b"", [bytes(LARGE_PART * 3)])
    view = decoder.get_buffer()
    view[:5] = data[:5]
    assert decoder.buffer_updated(5) == [] and decoder.pending
    frames, _ = drive_buffered(decoder, data[5:])
    assert len(frames) == 1 and not decoder.pending


# -- FrameDecoder: protocol errors ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", [0, 9, 200, 255])
def test_unknown_kind_is_refused_from_the_prefix_alone(kind):
    decoder = FrameDecoder(BIG)
    with pytest.raises(ProtocolError, match=f"unexpected frame kind {kind}"):
        decoder.feed(header(kind, 0))


@pytest.mark.parametrize("nparts", [MAX_PARTS + 1, 0xFFFF])
def test_too_many_parts_are_refused_from_the_prefix_alone(nparts):
    decoder = FrameDecoder(BIG)
    prefix = PREFIX.pack(MESSAGE, 0, nparts, 0)  # not even the part lengths follow
    with pytest.raises(ProtocolError, match=str(nparts)):
        decoder.feed(prefix)


def test_max_parts_is_allowed():
    frames = FrameDecoder(BIG).feed(header(MESSAGE, 0, [0] * MAX_PARTS))
    assert len(frames) == 1 and frames[0].parts == [bytearray()] * MAX_PARTS


@pytest.mark.parametrize("lengths", [
    (1001, []),
    (0, [1001]),
    (1, [500, 500]),
    (0, [2**64 - 1]),
    (2**64 - 1, [2**64 - 1, 2**64 - 1]),
    (10, [1] * 1000),
], ids=["main", "part", "sum", "huge part", "overflowing sum", "many parts"])
def test_oversized_frame_is_refused_from_its_header_alone(lengths):
    main_len, part_lengths = lengths
    decoder = FrameDecoder(max_message_size=1000)
    with pytest.raises(ProtocolError, match="exceeds the maximum message size of 1000 bytes"):
        decoder.feed(header(MESSAGE, main_len, part_lengths))  # no payload byte is ever sent


def test_oversized_frame_is_refused_when_its_header_completes():
    decoder = FrameDecoder(max_message_size=1000)
    head = header(MESSAGE, 10, [600, 600])
    assert decoder.feed(head[:-1]) == []
    with pytest.raises(ProtocolError, match="frame of 1210 bytes"):
        decoder.feed(head[-1:])


def test_oversized_frame_is_refused_through_the_buffer_interface():
    decoder = FrameDecoder(max_message_size=HANDSHAKE_MAX_MESSAGE)
    head = header(HELLO, 1 << 30)
    view = decoder.get_buffer()
    view[:len(head)] = head
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.buffer_updated(len(head))


def test_frame_of_exactly_the_maximum_size_is_accepted():
    decoder = FrameDecoder(max_message_size=1000)
    frames = decoder.feed(frame_bytes(MESSAGE, b"m" * 400, [b"p" * 600]))
    assert len(frames) == 1
    with pytest.raises(ProtocolError):
        FrameDecoder(max_message_size=1000).feed(header(MESSAGE, 401, [600]))


def test_kinds_outside_the_allowed_set_are_refused():
    decoder = FrameDecoder(BIG, kinds=frozenset({HELLO, AUTH}))
    assert [f.kind for f in decoder.feed(frame_bytes(HELLO, b"{}") + frame_bytes(AUTH))] == [HELLO, AUTH]
    with pytest.raises(ProtocolError, match=f"unexpected frame kind {RETIRE}"):
        decoder.feed(header(RETIRE, 0))


def test_limits_can_be_raised_between_reads():
    """The connection widens kinds and size once the handshake is done."""
    decoder = FrameDecoder(HANDSHAKE_MAX_MESSAGE, kinds=HANDSHAKE_KINDS)
    assert len(decoder.feed(frame_bytes(AUTH_OK))) == 1
    decoder.max_message_size = BIG
    decoder.kinds = frozenset(KIND_NAMES)
    big = bytes(range(256)) * 1000
    frames = decoder.feed(frame_bytes(RETIRE, b"r", [big]))
    assert [as_tuple(f) for f in frames] == [(RETIRE, 0, b"r", [big])]


def test_frame_after_the_last_handshake_frame_in_the_same_read():
    decoder = FrameDecoder(HANDSHAKE_MAX_MESSAGE, kinds=HANDSHAKE_KINDS)
    decoder.one_frame = True  # as Connection does during the handshake
    big = bytes(200_000)
    data = frame_bytes(AUTH_OK) + frame_bytes(MESSAGE, b"request", [big])
    view = decoder.get_buffer()
    view[:len(data)] = data
    got = []
    frames = decoder.buffer_updated(len(data))  # what Connection.buffer_updated does
    while frames:
        for frame in frames:
            got.append(frame)
            if frame.kind == AUTH_OK:  # the handshake is done: the connection raises the limits
                decoder.max_message_size = BIG
                decoder.kinds = frozenset(KIND_NAMES)
                decoder.one_frame = False
        frames = decoder.buffer_updated(0)
    assert [as_tuple(f) for f in got] == [(AUTH_OK, 0, b"", []), (MESSAGE, 0, b"request", [big])]


# -- Handshake: success --------------------------------------------------------------------------------


def test_handshake_completes():
    client, server = make_pair()
    assert not client.done and not server.done
    log = pump(client, server)
    assert client.done and server.done
    assert client.peer_info == server.info
    assert server.peer_info == client.info
    assert client.peer_name == "the-server" and server.peer_name == "the-client"
    assert client.failed is None and server.failed is None
    for role in ("client", "server"):
        assert [kind for sender, kind in log if sender == role] == ["HELLO", "AUTH", "AUTH_OK"]
    assert {kind for _, kind in log} == {"HELLO", "AUTH", "AUTH_OK"}


@pytest.mark.parametrize("seed", range(20))
def test_handshake_completes_in_any_interleaving(seed):
    client = Handshake("client", b"k", "c", {"name": "a", "n": [1, 2]})
    server = Handshake("server", "k", "c", {"name": "b", "x": {"y": None}})
    pump(client, server, random.Random(seed))
    assert client.done and server.done
    assert client.peer_info == {"name": "b", "x": {"y": None}}
    assert server.peer_info == {"name": "a", "n": [1, 2]}


def test_hello_content():
    hs = Handshake("client", "s", "clu", {"name": "n1", "other": 1}, nonce=NONCE_C)
    frame = one_frame(hs.start())
    assert frame.kind == HELLO and frame.parts == []
    assert json.loads(frame.main) == {"protocol": PROTOCOL_VERSION, "cluster": "clu", "name": "n1",
                                      "nonce": NONCE_C.hex()}


def test_nonces_are_fresh():
    a = Handshake("client", "s", "c", {"name": "a"})
    b = Handshake("client", "s", "c", {"name": "a"})
    assert len(a.nonce) == 32 and a.nonce != b.nonce


def test_done_needs_both_a_verified_auth_and_auth_ok():
    client, server = make_pair()
    c_hello, s_hello = one_frame(client.start()), one_frame(server.start())
    c_auth = one_frame(client.receive(s_hello))
    s_auth = one_frame(server.receive(c_hello))
    assert c_auth.kind == AUTH and s_auth.kind == AUTH
    s_ok = one_frame(server.receive(c_auth))
    assert s_ok.kind == AUTH_OK
    assert server.peer_info == client.info and not server.done  # verified, not yet accepted
    # the client cannot be accepted before it has verified the server
    with pytest.raises(HandshakeError, match="unexpected AUTH_OK frame"):
        Handshake("client", "s3cret", "c", {"name": "x"}, nonce=NONCE_C).receive(s_ok)
    c_ok = one_frame(client.receive(s_auth))
    assert not client.done
    assert client.receive(s_ok) == [] and client.done
    assert server.receive(c_ok) == [] and server.done


def test_no_secret_on_both_sides():
    client, server = make_pair(secret=None)
    pump(client, server)
    assert client.done and server.done


@pytest.mark.parametrize("client_secret, server_secret", [(None, "s"), ("s", None), ("", "s")])
def test_no_secret_against_a_secret_fails(client_secret, server_secret):
    client = Handshake("client", client_secret, "c", {"name": "a"})
    server = Handshake("server", server_secret, "c", {"name": "b"})
    with pytest.raises(HandshakeError, match="authentication failed"):
        pump(client, server)
    assert not client.done and not server.done


def test_str_and_bytes_secrets_are_the_same():
    client, server = make_pair(client_secret="sécret", server_secret="sécret".encode())
    pump(client, server)
    assert client.done and server.done


def test_role_must_be_client_or_server():
    with pytest.raises(ValueError, match="role"):
        Handshake("peer", "s", "c", {"name": "a"})


# -- Handshake: refusals -------------------------------------------------------------------------------


def _wrong_secret_exchange():
    client, server = make_pair(client_secret="right", server_secret="wrong")
    c_hello, s_hello = one_frame(client.start()), one_frame(server.start())
    c_auth = one_frame(client.receive(s_hello))
    s_auth = one_frame(server.receive(c_hello))
    return client, server, c_auth, s_auth


def test_wrong_secret_is_refused_with_a_reject_frame():
    client, server, c_auth, _ = _wrong_secret_exchange()
    with pytest.raises(HandshakeError, match="authentication failed") as info:
        server.receive(c_auth)
    exc = info.value
    assert exc.reason == str(exc) and "secrets" in exc.reason
    reject = one_frame(exc.reject)
    assert reject.kind == REJECT
    assert json.loads(reject.main) == {"reason": exc.reason}
    assert server.failed == exc.reason and not server.done and server.peer_info is None
    # once failed, it stays failed
    with pytest.raises(HandshakeError, match="authentication failed") as again:
        server.receive(c_auth)
    assert again.value.reject is None

    # the client learns why from the REJECT frame
    with pytest.raises(HandshakeError) as refused:
        client.receive(reject)
    assert str(refused.value) == "refused by the peer: " + exc.reason
    assert refused.value.reject is None  # a REJECT is not answered
    assert client.failed == str(refused.value) and not client.done


def test_wrong_secret_is_detected_by_both_sides():
    client, _, _, s_auth = _wrong_secret_exchange()
    with pytest.raises(HandshakeError, match="authentication failed") as info:
        client.receive(s_auth)
    assert one_frame(info.value.reject).kind == REJECT
    assert client.peer_info is None


def test_reject_through_the_wire():
    client, server = make_pair(client_secret="right", server_secret="wrong")
    decoder = FrameDecoder(HANDSHAKE_MAX_MESSAGE, kinds=HANDSHAKE_KINDS)
    server.receive(one_frame(client.start()))
    with pytest.raises(HandshakeError) as info:
        server.receive(one_frame(client.receive(one_frame(server.start()))))
    (reject,) = decoder.feed(wire(info.value.reject))
    with pytest.raises(HandshakeError, match=r"^refused by the peer: authentication failed"):
        client.receive(reject)


def test_reject_without_a_reason():
    client, _ = make_pair()
    with pytest.raises(HandshakeError, match="refused by the peer: no reason given"):
        client.receive(Frame(REJECT, b"{}"))


def test_protocol_version_mismatch():
    client = Handshake("client", "s", "c", {"name": "a"}, nonce=NONCE_C)
    server = Handshake("server", "s", "c", {"name": "b"}, nonce=NONCE_S, version=2)
    c_hello, s_hello = one_frame(client.start()), one_frame(server.start())
    with pytest.raises(HandshakeError, match="protocol version mismatch") as info:
        client.receive(s_hello)
    assert "version 1" in info.value.reason and "version 2" in info.value.reason
    assert json.loads(one_frame(info.value.reject).main)["reason"] == info.value.reason
    with pytest.raises(HandshakeError, match="this node speaks version 2, the peer speaks version 1"):
        server.receive(c_hello)


def test_cluster_name_mismatch():
    client = Handshake("client", "s", "a", {"name": "x"}, nonce=NONCE_C)
    server = Handshake("server", "s", "b", {"name": "y"}, nonce=NONCE_S)
    with pytest.raises(HandshakeError, match="cluster name mismatch") as info:
        server.receive(one_frame(client.start()))
    assert "'a'" in info.value.reason and "'b'" in info.value.reason
    assert one_frame(info.value.reject).kind == REJECT
    with pytest.raises(HandshakeError, match="this node is in cluster 'a', the peer is in cluster 'b'"):
        client.receive(one_frame(server.start()))


def test_own_hello_and_auth_reflected_back_are_refused():
    """An attacker echoes a node's own HELLO and AUTH back at it."""
    client = Handshake("client", "s", "c", {"name": "me"}, nonce=NONCE_C)
    hello = one_frame(client.start())
    auth = one_frame(client.receive(hello))  # same version, cluster: it answers its own HELLO
    with pytest.raises(HandshakeError, match="authentication failed"):
        client.receive(auth)
    # role binding is what refuses it: the very same bytes, nonces and secret pass for the other role
    server = Handshake("server", "s", "c", {"name": "other"}, nonce=NONCE_C)
    server.receive(hello)
    assert one_frame(server.receive(auth)).kind == AUTH_OK
    assert server.peer_info == {"name": "me"}


def test_server_auth_replayed_into_another_server_connection_is_refused():
    """Reflection: get a server to compute the proof its other connection asks of a client."""
    info = {"name": "srv"}
    conn1 = Handshake("server", "s", "c", info, nonce=b"\x01" * 32)
    conn2 = Handshake("server", "s", "c", info, nonce=b"\x02" * 32)
    # the attacker opens conn2 with conn1's nonce as its own, and gets conn2's AUTH over both nonces
    conn2_auth = one_frame(conn2.receive(hello_frame(conn1.nonce, name="srv")))
    # ... then answers conn1 with conn2's nonce and that AUTH
    conn1.receive(hello_frame(conn2.nonce, name="srv"))
    with pytest.raises(HandshakeError, match="authentication failed"):
        conn1.receive(conn2_auth)
    # the stolen AUTH is a valid proof over exactly these nonces, only for the other role
    client = Handshake("client", "s", "c", {"name": "x"}, nonce=conn1.nonce)
    client.receive(hello_frame(conn2.nonce, name="srv"))
    assert one_frame(client.receive(conn2_auth)).kind == AUTH_OK


def test_two_clients_cannot_authenticate_each_other():
    a = Handshake("client", "s", "c", {"name": "a"})
    b = Handshake("client", "s", "c", {"name": "b"})
    with pytest.raises(HandshakeError, match="authentication failed"):
        pump(a, b)


def test_replayed_client_auth_fails_against_a_fresh_nonce():
    client, server = make_pair()
    recorded = []
    c_hello = one_frame(client.start())
    recorded.append(c_hello)
    server.receive(c_hello)
    c_auth = one_frame(client.receive(one_frame(server.start())))
    recorded.append(c_auth)
    assert one_frame(server.receive(c_auth)).kind == AUTH_OK  # the recorded session was valid

    fresh = Handshake("server", "s3cret", "c", server.info)  # a new connection: a new nonce
    fresh.start()
    fresh.receive(recorded[0])
    with pytest.raises(HandshakeError, match="authentication failed"):
        fresh.receive(recorded[1])
    assert fresh.peer_info is None
    # the nonce is what defeats the replay: a server reusing the recorded nonce would accept it
    stale = Handshake("server", "s3cret", "c", server.info, nonce=server.nonce)
    stale.receive(recorded[0])
    assert one_frame(stale.receive(recorded[1])).kind == AUTH_OK


def test_auth_with_info_that_does_not_match_the_hello_is_refused():
    _, server = make_pair()
    honest = Handshake("client", "s3cret", "c", {"name": "alice"}, nonce=NONCE_C)
    liar = Handshake("client", "s3cret", "c", {"name": "mallory"}, nonce=NONCE_C)
    server.receive(one_frame(honest.start()))  # says it is alice
    s_hello = one_frame(server.start())
    honest.receive(s_hello)
    auth = one_frame(liar.receive(s_hello))  # correctly MACed, but for mallory
    with pytest.raises(HandshakeError, match="peer info does not match its HELLO") as info:
        server.receive(auth)
    assert one_frame(info.value.reject).kind == REJECT
    assert server.peer_info is None and not server.done


@pytest.mark.parametrize("main", [
    b"",
    b"x" * 31,
    b"\x00" * 32 + b'{"name": "the-client"}',
    b"\xff" * 64,
], ids=["empty", "short", "zero mac", "garbage"])
def test_bad_auth_is_refused(main):
    client, server = make_pair()
    server.receive(one_frame(client.start()))
    with pytest.raises(HandshakeError, match="authentication failed") as info:
        server.receive(Frame(AUTH, main))
    assert one_frame(info.value.reject).kind == REJECT


@pytest.mark.parametrize("kind", [MESSAGE, AUTH, AUTH_OK, PING, CLOSE, RETIRE])
def test_other_frames_before_hello_are_refused(kind):
    _, server = make_pair()
    message = f"unexpected {KIND_NAMES[kind]} frame during the handshake"
    with pytest.raises(HandshakeError, match=message) as info:
        server.receive(Frame(kind, b"\x00" * 40))
    assert one_frame(info.value.reject).kind == REJECT
    assert server.failed and not server.done


def test_second_hello_is_refused():
    client, server = make_pair()
    hello = one_frame(client.start())
    server.receive(hello)
    with pytest.raises(HandshakeError, match="unexpected HELLO frame"):
        server.receive(hello)


def test_message_after_hello_is_refused():
    client, server = make_pair()
    server.receive(one_frame(client.start()))
    with pytest.raises(HandshakeError, match="unexpected MESSAGE frame"):
        server.receive(Frame(MESSAGE, b"data"))


def _hello(**fields) -> bytes:
    hello = {"protocol": PROTOCOL_VERSION, "cluster": "c", "name": "p", "nonce": NONCE_C.hex()}
    hello.update(fields)
    return json.dumps({k: v for k, v in hello.items() if v is not ...}).encode()


@pytest.mark.parametrize("main", [
    b"",
    b"not json",
    b'{"protocol": 1,',
    b"\xff\xfe{}",
    b"[1, 2]",
    b'"a string"',
    b"null",
    _hello(nonce=...),
    _hello(nonce="zz" * 32),
    _hello(nonce=12345),
    _hello(nonce=None),
    _hello(nonce="ab" * 8 + "a"),
], ids=["empty", "not json", "truncated", "not utf-8", "list", "string", "null", "no nonce",
        "nonce not hex", "nonce int", "nonce null", "odd hex"])
def test_malformed_hello_is_refused(main):
    _, server = make_pair()
    with pytest.raises(HandshakeError, match="malformed handshake frame") as info:
        server.receive(Frame(HELLO, main))
    assert one_frame(info.value.reject).kind == REJECT
    assert server.failed


def test_short_nonce_is_refused():
    _, server = make_pair()
    with pytest.raises(HandshakeError, match="nonce too short"):
        server.receive(Frame(HELLO, _hello(nonce="ab" * 15)))


def test_malformed_reject_is_a_handshake_error():
    client, _ = make_pair()
    with pytest.raises(HandshakeError):
        client.receive(Frame(REJECT, b"\x00garbage"))


@pytest.mark.parametrize("kind", [HELLO, REJECT], ids=["HELLO", "REJECT"])
def test_deeply_nested_json_is_a_handshake_error(kind):
    _, server = make_pair()
    main = b"[" * 30_000 + b"]" * 30_000
    assert len(main) < HANDSHAKE_MAX_MESSAGE  # the handshake decoder lets it through
    with pytest.raises(HandshakeError):
        server.receive(Frame(kind, main))


# -- Handshake: never unpickles ------------------------------------------------------------------------


def test_handshake_never_calls_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the handshake must not unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    client, server = make_pair()
    pump(client, server)
    assert client.done and server.done


def test_malicious_pickle_is_a_real_threat(tmp_path):
    """The control for the test below: unpickling the payload does create the file."""
    target = tmp_path / "control"
    pickle.loads(pickle.dumps(_CreatesFile(target))).close()
    assert target.exists()


@pytest.mark.parametrize("stage", ["before hello", "after hello", "after auth"])
def test_malicious_pickle_during_the_handshake_is_not_unpickled(tmp_path, stage):
    target = tmp_path / "pwned"
    evil = pickle.dumps(_CreatesFile(target))
    client, server = make_pair()
    decoder = FrameDecoder(HANDSHAKE_MAX_MESSAGE, kinds=HANDSHAKE_KINDS)
    client_hello = one_frame(client.start())
    if stage != "before hello":
        server.receive(client_hello)
    if stage == "after auth":
        server.receive(one_frame(client.receive(one_frame(server.start()))))
        assert server.peer_info is not None and not server.done
    (frame,) = decoder.feed(frame_bytes(MESSAGE, evil, [evil]))
    with pytest.raises(HandshakeError, match="unexpected MESSAGE frame") as info:
        server.receive(frame)
    assert one_frame(info.value.reject).kind == REJECT
    assert not target.exists()
    assert not server.done


def test_protocol_module_does_not_import_pickle():
    assert "pickle" not in vars(protocol)
    assert not any(getattr(v, "__name__", "") in ("pickle", "_pickle") for v in vars(protocol).values())
