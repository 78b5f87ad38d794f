"""The sans-I/O wire protocol: framing (``encode`` / ``FrameDecoder``), sealing and the ``Handshake``.

No sockets, no event loop, no sleeps: the cores are driven with bytes and frames only.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import pickle
import random
import re
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import HealthCheck, given, settings
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
    MAX_NAME,
    MAX_PARTS,
    MESSAGE,
    PING,
    PREFIX,
    PROTOCOL_VERSION,
    REJECT,
    RETIRE,
    TAG_SIZE,
    Frame,
    FrameDecoder,
    FrameOpener,
    FrameSealer,
    Handshake,
    encode,
    frame_size,
)

from .protocol_drive import (
    BIG,
    KEY,
    NONCE_C,
    NONCE_S,
    RECEIVE_BUFFER,
    MiB,
    Side,
    frame_bytes,
    handshake_decoder,
    kinds,
    sealed_decoder,
    wire,
)

SECRET = "s3cret"
CLIENT_INFO = {"name": "the-client", "type": "worker", "pid": 98765}
SERVER_INFO = {"name": "the-server", "type": "driver", "pid": 45678}
OTHER_KEY = bytes(range(32, 64))


# -- helpers -------------------------------------------------------------------------------------------


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
    """The one unsealed frame in ``chunks`` (nothing before or after it)."""
    decoder = FrameDecoder(BIG)
    frames = decoder.feed(wire(chunks))
    assert len(frames) == 1 and not decoder.pending, frames
    return frames[0]


def open_frame(chunks, key: bytes, seq: int = 0) -> Frame:
    """The one frame in ``chunks``, sealed with ``key`` as frame ``seq`` of its direction."""
    opener = FrameOpener(key)
    opener.seq = seq
    decoder = FrameDecoder(BIG)
    decoder.seal(opener)
    frames = decoder.feed(wire(chunks))
    assert len(frames) == 1 and not decoder.pending, frames
    return frames[0]


def main_of(data: bytes) -> bytes:
    """The main part of one written frame (unsealed or sealed, without parts)."""
    kind, flags, nparts, main_len = PREFIX.unpack_from(data)
    assert nparts == 0
    return data[PREFIX.size:PREFIX.size + main_len]


def pump(a: Side, b: Side, rng: random.Random | None = None, max_chunk: int | None = None) -> None:
    """Deliver what each side writes to the other until both are quiet.

    With ``rng`` the direction and size of every delivery are random (frames are split and merged);
    ``max_chunk`` caps the size of a delivery.
    """
    pending = {a: bytearray(), b: bytearray()}
    for _ in range(1_000_000):
        for side in (a, b):
            pending[side] += b"".join(side.out)
            side.out.clear()
        ready = [side for side in (a, b) if pending[side]]
        if not ready:
            return
        sender = rng.choice(ready) if rng else ready[0]
        data = pending[sender]
        n = len(data) if max_chunk is None else min(max_chunk, len(data))
        if rng:
            n = rng.randint(1, n)
        chunk = bytes(data[:n])
        del data[:n]
        (b if sender is a else a).deliver(chunk)
    raise AssertionError("the sides did not settle")


def make_pair(secret=SECRET, client_secret=None, server_secret=None, cluster="c",
              client_check=None, server_check=None, client_nonce=NONCE_C, server_nonce=NONCE_S):
    client = Handshake("client", secret if client_secret is None else client_secret, cluster,
                       dict(CLIENT_INFO), nonce=client_nonce, check_peer=client_check)
    server = Handshake("server", secret if server_secret is None else server_secret, cluster,
                       dict(SERVER_INFO), nonce=server_nonce, check_peer=server_check)
    return client, server


def connect(client: Handshake, server: Handshake, rng: random.Random | None = None,
            **kwargs) -> tuple[Side, Side]:
    c, s = Side(client, **kwargs), Side(server, **kwargs)
    pump(c, s, rng)
    return c, s


def spec_mac(secret: bytes, label: bytes, *items: bytes) -> bytes:
    """The handshake's HMAC-SHA256, restated from the protocol description."""
    h = hmac.new(secret, b"bndl-like-v2\0" + label + b"\0", hashlib.sha256)
    for item in items:
        h.update(struct.pack("<Q", len(item)))
        h.update(item)
    return h.digest()


def spec_keys(secret: bytes, s_hello: bytes, c_hello: bytes, proof: bytes) -> tuple[bytes, bytes]:
    """The (client-to-server, server-to-client) session keys, restated from the protocol description."""
    base = spec_mac(secret, b"session", s_hello, c_hello, proof)
    return (hmac.new(base, b"client-to-server", hashlib.sha256).digest(),
            hmac.new(base, b"server-to-client", hashlib.sha256).digest())


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


def _large_part_interiors(expected) -> list[tuple[int, int]]:
    """Where the large parts of the frames of ``_stream`` lie in its bytes, but their first and last
    100 bytes: (start, end) of each."""
    spans = []
    pos = 0
    for _, _, main, parts in expected:
        pos += PREFIX.size + 8 * len(parts) + len(main)
        for part in parts:
            if len(part) > LARGE_PART:
                spans.append((pos + 100, pos + len(part) - 100))
            pos += len(part)
    return spans


def test_feeding_byte_by_byte():
    """Every byte in a read of its own, but the inside of the large parts (the same step for each
    of their bytes) in one read."""
    data, expected = _stream(random.Random(4))
    decoder = FrameDecoder(BIG)
    frames = []
    cuts = sorted({*range(len(data) + 1)} - {i for a, b in _large_part_interiors(expected)
                                              for i in range(a + 1, b)})
    for a, b in itertools.pairwise(cuts):
        frames.extend(decoder.feed(data[a:b]))
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


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


SMALLEST_BUFFER = PREFIX.size + 8 * MAX_PARTS + LARGE_PART + TAG_SIZE  # for the default limits


def test_buffer_smaller_than_the_limits_need_is_refused():
    FrameDecoder(BIG, buffer_size=SMALLEST_BUFFER)
    with pytest.raises(ValueError, match="too small"):
        FrameDecoder(BIG, buffer_size=SMALLEST_BUFFER - 1)
    # the room a frame needs shrinks with the limits: no parts, small messages
    room = PREFIX.size + 100 + TAG_SIZE
    FrameDecoder(100, buffer_size=room, max_parts=0)
    with pytest.raises(ValueError, match="too small"):
        FrameDecoder(100, buffer_size=room - 1, max_parts=0)
    # the handshake buffer fits handshake frames without parts, not MAX_PARTS part lengths
    FrameDecoder(HANDSHAKE_MAX_MESSAGE, HANDSHAKE_BUFFER, kinds=HANDSHAKE_KINDS, max_parts=0)
    with pytest.raises(ValueError, match="too small"):
        FrameDecoder(HANDSHAKE_MAX_MESSAGE, HANDSHAKE_BUFFER, kinds=HANDSHAKE_KINDS)


def test_resize_checks_the_room_for_the_current_limits():
    decoder = handshake_decoder()
    decoder.max_parts = MAX_PARTS
    with pytest.raises(ValueError, match="too small"):
        decoder.resize(HANDSHAKE_BUFFER)
    decoder.max_message_size = BIG
    decoder.resize(SMALLEST_BUFFER)


@pytest.mark.parametrize("sealed", [False, True], ids=["unsealed", "sealed"])
def test_smallest_allowed_buffer_compacts_correctly(sealed):
    """A decoder with the smallest buffer it accepts must shift partial frames to make room."""
    rng = random.Random(5)
    sent = []
    for i in range(40):
        parts = [payload(rng, rng.choice([LARGE_PART, LARGE_PART - 3, 1000, 0]))
                 for _ in range(rng.randint(0, 3))]
        if i % 10 == 0:
            parts = [b"z"] * MAX_PARTS  # a maximal header at a random offset
        sent.append((MESSAGE, i % 256, payload(rng, rng.randint(0, 2000)), parts))
    sealer = FrameSealer(KEY)
    data = b"".join(wire(sealer.seal(k, m, p, f)) if sealed else frame_bytes(k, m, p, f)
                    for k, f, m, p in sent)
    for seed in range(3):
        decoder = FrameDecoder(BIG, buffer_size=SMALLEST_BUFFER)
        if sealed:
            decoder.seal(FrameOpener(KEY))
        frames, _ = drive_buffered(decoder, data, random.Random(seed))
        assert [as_tuple(f) for f in frames] == sent
        assert not decoder.pending


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


def raise_limits(decoder: FrameDecoder) -> None:
    """What the connection does once the peer is authenticated (less the sealing)."""
    decoder.max_message_size = BIG
    decoder.kinds = frozenset(KIND_NAMES)
    decoder.max_parts = MAX_PARTS
    decoder.resize(RECEIVE_BUFFER)


def test_limits_can_be_raised_between_reads():
    """The connection widens kinds, parts and size once the handshake is done."""
    decoder = handshake_decoder()
    assert len(decoder.feed(frame_bytes(AUTH_OK))) == 1
    raise_limits(decoder)
    big = bytes(range(256)) * 1000
    frames = decoder.feed(frame_bytes(RETIRE, b"r", [big]))
    assert [as_tuple(f) for f in frames] == [(RETIRE, 0, b"r", [big])]


def test_frame_after_the_last_handshake_frame_in_the_same_read():
    decoder = handshake_decoder()
    big = bytes(200_000)
    data = frame_bytes(AUTH_OK) + frame_bytes(MESSAGE, b"request", [big])
    view = decoder.get_buffer()
    assert len(view) < len(data)  # the handshake buffer is small: the rest follows in more reads
    got = []
    pos = 0
    while pos < len(data):
        view = decoder.get_buffer()
        n = min(len(view), len(data) - pos)
        view[:n] = data[pos:pos + n]
        pos += n
        frames = decoder.buffer_updated(n)  # what Connection.buffer_updated does
        while frames:
            one_at_a_time = decoder.one_frame
            for frame in frames:
                got.append(frame)
                if frame.kind == AUTH_OK:  # the handshake is done: the connection raises the limits
                    raise_limits(decoder)
                    decoder.one_frame = False
            if not one_at_a_time:
                break
            frames = decoder.buffer_updated(0)
    assert [as_tuple(f) for f in got] == [(AUTH_OK, 0, b"", []), (MESSAGE, 0, b"request", [big])]


def test_one_frame_hands_out_one_frame_per_call():
    decoder = handshake_decoder()
    data = frame_bytes(HELLO, b"{}") + frame_bytes(AUTH, b"a") + frame_bytes(AUTH_OK)
    assert [f.kind for f in decoder.feed(data)] == [HELLO]
    assert [f.kind for f in decoder.buffer_updated(0)] == [AUTH]
    assert [f.kind for f in decoder.buffer_updated(0)] == [AUTH_OK]
    assert decoder.buffer_updated(0) == [] and not decoder.pending


# -- FrameDecoder: the limits before authentication -----------------------------------------------------


def test_handshake_kinds():
    assert HANDSHAKE_KINDS == {HELLO, AUTH, AUTH_OK, REJECT, CLOSE}


@pytest.mark.parametrize("kind", [MESSAGE, PING, RETIRE, 0, 9, 255])
def test_handshake_decoder_refuses_other_kinds_from_the_prefix_alone(kind):
    with pytest.raises(ProtocolError, match=f"unexpected frame kind {kind}$"):
        handshake_decoder().feed(PREFIX.pack(kind, 0, 0, 10))


@pytest.mark.parametrize("kind", sorted(HANDSHAKE_KINDS))
@pytest.mark.parametrize("nparts", [1, 2, 0xFFFF])
def test_handshake_decoder_refuses_parts_from_the_prefix_alone(kind, nparts):
    with pytest.raises(ProtocolError, match=f"announces {nparts} parts, at most 0 are allowed"):
        handshake_decoder().feed(PREFIX.pack(kind, 0, nparts, 0))  # no part length follows


def test_handshake_decoder_refuses_large_frames_from_the_prefix_alone():
    decoder = handshake_decoder()
    main = b"x" * HANDSHAKE_MAX_MESSAGE
    assert [f.main for f in decoder.feed(frame_bytes(HELLO, main))] == [main]
    with pytest.raises(ProtocolError, match="exceeds the maximum message size"):
        decoder.feed(header(HELLO, HANDSHAKE_MAX_MESSAGE + 1))


def test_handshake_decoder_never_grows_nor_allocates(monkeypatch):
    """Before authentication a peer can make the decoder hold HANDSHAKE_BUFFER bytes, no more."""
    allocated = []
    monkeypatch.setattr(protocol, "_allocate", lambda size: allocated.append(size) or bytearray(size))
    decoder = handshake_decoder()
    decoder.one_frame = False
    frame = frame_bytes(AUTH, b"a" * HANDSHAKE_MAX_MESSAGE)
    frames, writes = drive_buffered(decoder, frame * 20, random.Random(1))
    assert len(frames) == 20
    buffer = decoder.get_buffer().obj
    assert {id(obj) for obj, _ in writes} == {id(buffer)} and len(buffer) == HANDSHAKE_BUFFER
    assert allocated == []


# -- sealing: round trips -------------------------------------------------------------------------------

SEALED_CASES = dict(ROUND_TRIP_CASES)
SEALED_CASES["large main and a part"] = (b"M" * 200_000, [b"p"])


@pytest.mark.parametrize("case", SEALED_CASES.values(), ids=SEALED_CASES.keys())
def test_sealed_round_trip(case):
    main, parts = _materialize(case, random.Random(1))
    sealer = FrameSealer(KEY)
    data = wire(sealer.seal(MESSAGE, main, parts, flags=3)) + wire(sealer.seal(PING, b"next"))
    unsealed = frame_bytes(MESSAGE, main, parts) + frame_bytes(PING, b"next")
    assert len(data) == len(unsealed) + 2 * TAG_SIZE
    decoder = sealed_decoder()
    frames = decoder.feed(data)
    assert [as_tuple(f) for f in frames] == [(MESSAGE, 3, main, [bytes(p) for p in parts]),
                                             (PING, 0, b"next", [])]
    for got in frames[0].parts:
        assert not memoryview(got).readonly
    assert not decoder.pending and decoder.bytes_received == len(data)


@pytest.mark.parametrize("size", [LARGE_PART, LARGE_PART + 1, 3 * MiB])
@pytest.mark.parametrize("how", ["seal", "seal_stream"])
def test_sealed_main_only_frame_around_large_part(how, size):
    """A large pickle without out-of-band buffers (e.g. the result list(range(30_000)))."""
    main = random.Random(2).randbytes(size)
    sealer = FrameSealer(KEY)
    chunks = sealer.seal(MESSAGE, main) if how == "seal" else sealer.seal_stream(MESSAGE, main, (), MiB)
    frames = sealed_decoder().feed(wire(chunks) + wire(sealer.seal(PING)))
    assert [as_tuple(f) for f in frames] == [(MESSAGE, 0, main, []), (PING, 0, b"", [])]


def _sealed_stream(rng: random.Random, sealer: FrameSealer, step: int | None = None):
    frames = [
        (HELLO, 0, b'{"a": 1}', []),
        (MESSAGE, 1, b"", []),
        (MESSAGE, 2, payload(rng, 300), [payload(rng, 10), b"", payload(rng, LARGE_PART + 5)]),
        (PING, 3, b"p", []),
        (MESSAGE, 4, b"m", [payload(rng, 3 * MiB), payload(rng, LARGE_PART), payload(rng, 3)]),
        (MESSAGE, 5, payload(rng, 70_000), [payload(rng, 2 * MiB + 1)]),
        (CLOSE, 6, b"bye", []),
    ]
    if step is None:
        data = b"".join(wire(sealer.seal(k, m, p, f)) for k, f, m, p in frames)
    else:  # seal_stream has no flags
        frames = [(k, 0, m, p) for k, _, m, p in frames]
        data = b"".join(wire(sealer.seal_stream(k, m, p, step)) for k, _, m, p in frames)
    return data, frames


@pytest.mark.parametrize("seed", range(4))
def test_sealed_stream_in_random_chunks(seed):
    rng = random.Random(seed)
    data, expected = _sealed_stream(rng, FrameSealer(KEY))
    frames = feed_in_chunks(sealed_decoder(), data, rng, max_chunk=rng.choice([1000, 70_000, 400_000]))
    assert [as_tuple(f) for f in frames] == expected


@pytest.mark.parametrize("seed", [None, 1, 2])
def test_sealed_stream_through_the_buffer_protocol(seed):
    data, expected = _sealed_stream(random.Random(3), FrameSealer(KEY))
    decoder = sealed_decoder()
    frames, writes = drive_buffered(decoder, data, random.Random(seed) if seed is not None else None)
    assert [as_tuple(f) for f in frames] == expected
    assert sum(n for _, n in writes) == decoder.bytes_received == len(data)
    assert not decoder.pending


def test_sealed_large_part_is_still_received_into_its_own_buffer():
    part = random.Random(4).randbytes(3 * MiB)
    sealer = FrameSealer(KEY)
    data = wire(sealer.seal(MESSAGE, b"main", [part])) + wire(sealer.seal(PING, b"next"))
    frames, writes = drive_buffered(sealed_decoder(), data)
    assert [as_tuple(f) for f in frames] == [(MESSAGE, 0, b"main", [part]), (PING, 0, b"next", [])]
    got = frames[0].parts[0]
    received = got.obj if isinstance(got, memoryview) else got
    assert sum(n for obj, n in writes if obj is received) >= len(part) - RECEIVE_BUFFER


@pytest.mark.parametrize("step", [1000, 4096, LARGE_PART, MiB, 4 * MiB])
def test_seal_stream_pieces(step):
    rng = random.Random(step)
    main = payload(rng, 500)
    parts = [payload(rng, 3 * MiB + 7), payload(rng, 20), np.arange(30_000, dtype=np.int64)]
    pieces = list(FrameSealer(KEY).seal_stream(MESSAGE, main, parts, step))
    # the same bytes as seal() at the same sequence number, the tag last
    assert wire(pieces) == wire(FrameSealer(KEY).seal(MESSAGE, main, parts))
    assert bytes(pieces[0]) == header(MESSAGE, len(main), [memoryview(p).nbytes for p in parts]) + main
    assert len(pieces[-1]) == TAG_SIZE
    assert all(memoryview(p).nbytes <= step for p in pieces[1:-1])
    frames = feed_in_chunks(sealed_decoder(), wire(pieces), rng, max_chunk=300_000)
    assert len(frames) == 1
    assert bytes(frames[0].main) == main
    assert [bytes(p) for p in frames[0].parts] == [bytes(memoryview(p).cast("B")) for p in parts]


def test_seal_stream_of_a_small_frame_is_one_chunk():
    pieces = list(FrameSealer(KEY).seal_stream(MESSAGE, b"m", [b"p" * 100], 10))
    assert pieces == FrameSealer(KEY).seal(MESSAGE, b"m", [b"p" * 100])
    assert len(pieces) == 1


def test_seal_stream_takes_its_sequence_number_when_called():
    """A frame streamed out while smaller ones are sealed behind it keeps its place."""
    sealer = FrameSealer(KEY)
    big = bytes(2 * MiB)
    streaming = sealer.seal_stream(MESSAGE, b"big", [big], 4096)
    behind = sealer.seal(PING, b"behind")
    data = wire(streaming) + wire(behind)
    assert [as_tuple(f) for f in sealed_decoder().feed(data)] == [(MESSAGE, 0, b"big", [big]),
                                                                  (PING, 0, b"behind", [])]


@pytest.mark.parametrize("parts", [[], [b"p"]], ids=["main only", "with a part"])
def test_small_frame_tag_is_keyed_blake2b_over_the_sequence_number_and_the_frame(parts):
    sealer = FrameSealer(KEY)
    body = frame_bytes(MESSAGE, b"abc", parts, flags=2)
    sealed = [wire(sealer.seal(MESSAGE, b"abc", parts, flags=2)) for _ in range(2)]
    for seq, data in enumerate(sealed):
        assert data[:-TAG_SIZE] == body
        expected = hashlib.blake2b(struct.pack("<Q", seq) + body, key=KEY, person=b"bndl-frame",
                                   digest_size=TAG_SIZE).digest()
        assert data[-TAG_SIZE:] == expected
    assert sealed[0] != sealed[1]
    frames = sealed_decoder().feed(sealed[0] + sealed[1])
    assert [as_tuple(f) for f in frames] == [(MESSAGE, 2, b"abc", parts)] * 2


def test_large_frame_tag_is_poly1305_under_a_one_time_key_per_frame():
    sealer = FrameSealer(KEY)
    sealer.seal(PING)  # frame 0
    part = bytes(range(256)) * (LARGE_PART // 256)
    data = wire(sealer.seal(MESSAGE, b"m", [part]))  # frame 1: 1 + LARGE_PART bytes of payload
    body = frame_bytes(MESSAGE, b"m", [part])
    one_time = hashlib.blake2b(struct.pack("<Q", 1), key=KEY, person=b"bndl-poly1305",
                               digest_size=32).digest()
    assert data[:-TAG_SIZE] == body
    assert data[-TAG_SIZE:] == Poly1305.generate_tag(one_time, body)


def test_direction_keys_are_32_bytes():
    for cls in (FrameSealer, FrameOpener):
        with pytest.raises(ValueError, match="32 bytes"):
            cls(KEY[:16])


def test_decoder_cannot_be_sealed_in_the_middle_of_a_frame():
    decoder = FrameDecoder(BIG)
    decoder.feed(frame_bytes(MESSAGE, b"main")[:-1])
    with pytest.raises(ProtocolError, match="middle of a frame"):
        decoder.seal(FrameOpener(KEY))


# -- sealing: what is refused ----------------------------------------------------------------------------

FLIP_LIMIT = 4 * MiB  # bounds what a flipped length bit can make the decoder wait for


def refused(decoder: FrameDecoder, *reads: bytes, rng: random.Random | None = None) -> list:
    """Feed each of ``reads`` (in random chunks with ``rng``), then filler until the decoder must
    have decided. Returns the frames handed out before the ProtocolError; fails if none is raised.
    """
    frames: list = []
    try:
        for data in reads:
            if rng is None:
                frames += decoder.feed(data)
            else:
                sizes = [1, 50, 5000, 300_000] if len(data) < 10_000 else [5000, 300_000]
                frames += feed_in_chunks(decoder, data, rng, max_chunk=rng.choice(sizes))
        filler = bytes(MiB)
        for _ in range(min(decoder.max_message_size, FLIP_LIMIT) // MiB + 2):
            frames += decoder.feed(filler)
    except ProtocolError:
        return frames
    raise AssertionError("the decoder accepted the altered stream")


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("parts", [[], [b"a small part", b"another"]], ids=["main only", "with parts"])
def test_flipped_bit_anywhere_in_a_small_frame(parts):
    sealer = FrameSealer(KEY)
    first = wire(sealer.seal(MESSAGE, b"the main part", parts, flags=5))
    second = wire(sealer.seal(PING, b"second"))
    assert len(first) < 100
    rng = random.Random(6)
    for bit in range(len(first) * 8):
        decoder = sealed_decoder(max_message_size=FLIP_LIMIT)
        assert refused(decoder, _flip(first, bit) + second, rng=rng if bit % 2 else None) == [], bit
    # control: the unaltered frames pass
    frames = sealed_decoder(max_message_size=FLIP_LIMIT).feed(first + second)
    assert [as_tuple(f) for f in frames] == [(MESSAGE, 5, b"the main part", parts), (PING, 0, b"second", [])]


LARGE_FRAME_PARTS = [b"a small part", random.Random(7).randbytes(3 * LARGE_PART)]


def _large_frame_regions():
    main = b"m" * 100
    sealer = FrameSealer(KEY)
    data = wire(sealer.seal(MESSAGE, main, LARGE_FRAME_PARTS))
    next_frame = wire(sealer.seal(PING))  # frame 1: what follows in the stream
    head = PREFIX.size + 8 * 2
    small = head + len(main)
    large = small + len(LARGE_FRAME_PARTS[0])
    tag = len(data) - TAG_SIZE
    regions = {"header": (0, head), "main": (head, small), "small part": (small, large),
               "large part": (large, tag), "tag": (tag, len(data))}
    return main, data, next_frame, regions


@pytest.mark.parametrize("region", ["header", "main", "small part", "large part", "tag"])
def test_flipped_bit_anywhere_in_a_large_frame(region):
    main, data, next_frame, regions = _large_frame_regions()
    start, end = regions[region]
    rng = random.Random(region)
    bits = range(start * 8, end * 8)
    if len(bits) > 400:
        bits = [bits[0], bits[-1], *rng.sample(bits, 200)]
    for bit in bits:
        decoder = sealed_decoder(max_message_size=FLIP_LIMIT)
        assert refused(decoder, _flip(data, bit) + next_frame, rng=rng if bit % 2 else None) == [], bit
    # control: the unaltered frames pass
    frames = sealed_decoder(max_message_size=FLIP_LIMIT).feed(data + next_frame)
    assert [as_tuple(f) for f in frames] == [(MESSAGE, 0, main, LARGE_FRAME_PARTS), (PING, 0, b"", [])]


def _three(sealer: FrameSealer, size: int) -> list[bytes]:
    return [wire(sealer.seal(MESSAGE, b"frame %d" % i, [bytes([i]) * size])) for i in range(3)]


SIZES = pytest.mark.parametrize("size", [10, 3 * LARGE_PART], ids=["small", "large"])


@SIZES
def test_replayed_frame_is_refused(size):
    a, b, _ = _three(FrameSealer(KEY), size)
    frames = refused(sealed_decoder(), a, a, b)
    assert [f.main for f in frames] == [b"frame 0"]


@SIZES
def test_swapped_frames_are_refused(size):
    a, b, c = _three(FrameSealer(KEY), size)
    assert [f.main for f in refused(sealed_decoder(), a, c, b)] == [b"frame 0"]
    assert refused(sealed_decoder(), b, a, c) == []


@SIZES
def test_dropped_frame_is_refused(size):
    a, b, c = _three(FrameSealer(KEY), size)
    assert [f.main for f in refused(sealed_decoder(), a, c)] == [b"frame 0"]
    assert [f.main for f in sealed_decoder().feed(a + b + c)] == [b"frame 0", b"frame 1", b"frame 2"]


@SIZES
def test_frame_sealed_with_another_key_is_refused(size):
    assert refused(sealed_decoder(KEY), _three(FrameSealer(OTHER_KEY), size)[0]) == []


def test_unsealed_frame_after_sealing_is_refused():
    sealer = FrameSealer(KEY)
    first = wire(sealer.seal(PING, b"sealed"))
    for injected in (frame_bytes(MESSAGE, b"x" * 40), frame_bytes(CLOSE),
                     frame_bytes(MESSAGE, b"m", [bytes(MiB)])):
        frames = refused(sealed_decoder(), first, injected, wire(sealer.seal(PING, b"after")))
        assert [f.main for f in frames] == [b"sealed"]


@SIZES
@pytest.mark.parametrize("cut", [1, 8, TAG_SIZE])
def test_truncated_tag_followed_by_more_data_is_refused(size, cut):
    a, b, c = _three(FrameSealer(KEY), size)
    assert [f.main for f in refused(sealed_decoder(), a, b[:-cut] + c)] == [b"frame 0"]


def test_truncated_stream_gives_the_complete_frames_and_waits():
    a, b, _ = _three(FrameSealer(KEY), 10)
    decoder = sealed_decoder()
    assert [f.main for f in decoder.feed(a + b[:-1])] == [b"frame 0"]
    assert decoder.pending


def test_frames_of_another_connection_are_refused():
    """Frames recorded on one connection and injected into another between the same nodes."""
    c1, s1 = connect(*make_pair())
    c2, s2 = connect(*make_pair(client_nonce=b"\x05" * 32))  # a new connection: a new nonce
    assert c2.hs.done and s2.hs.done
    assert c2.hs.sealer.seq == c1.hs.sealer.seq  # the same position in both streams
    recorded = wire(c1.hs.sealer.seal(MESSAGE, b"for connection 1"))
    s2.deliver(recorded)
    assert isinstance(s2.error, ProtocolError) and s2.received == []
    s1.deliver(recorded)  # control
    assert [f.main for f in s1.received] == [b"for connection 1"] and s1.error is None


def test_frame_reflected_back_to_its_sender_is_refused():
    """The client's AUTH_OK (its frame 0) echoed back as the server's frame 0."""
    client, server = make_pair()
    c, s = Side(client), Side(server)
    pump(c, s)
    auth_ok = c.written[2]
    assert KIND_NAMES[auth_ok[0]] == "AUTH_OK" and client.opener.seq == 0  # it expects frame 0
    c.deliver(auth_ok)
    assert isinstance(c.error, ProtocolError) and c.received == []
    assert [f.kind for f in s.got[-1:]] == [AUTH_OK] and s.error is None  # it was valid for the server


# -- sealing: nothing is unpickled ----------------------------------------------------------------------


def test_malicious_pickle_is_a_real_threat(tmp_path):
    """The control for the tests below: unpickling the payload does create the file."""
    target = tmp_path / "control"
    pickle.loads(pickle.dumps(_CreatesFile(target))).close()
    assert target.exists()


@pytest.mark.parametrize("injected", ["unsealed", "other key", "valid"])
def test_decoder_never_unpickles(tmp_path, injected):
    """Unpickling is the caller's, after the tag was checked; the decoder hands out bytes only."""
    target = tmp_path / "pwned"
    evil = pickle.dumps(_CreatesFile(target), protocol=5)
    if injected == "unsealed":
        data = frame_bytes(MESSAGE, evil, [evil]) + bytes(TAG_SIZE)
    else:
        data = wire(FrameSealer(OTHER_KEY if injected == "other key" else KEY).seal(MESSAGE, evil, [evil]))
    decoder = sealed_decoder()
    if injected == "valid":
        frames = decoder.feed(data)
        assert [as_tuple(f) for f in frames] == [(MESSAGE, 0, evil, [evil])]
    else:
        with pytest.raises(ProtocolError, match="frame authentication failed"):
            decoder.feed(data)
    assert not target.exists()


def test_protocol_module_does_not_import_pickle():
    assert "pickle" not in vars(protocol)
    assert not any(getattr(v, "__name__", "") in ("pickle", "_pickle") for v in vars(protocol).values())


# -- Handshake: success --------------------------------------------------------------------------------


def test_handshake_completes():
    client, server = make_pair()
    assert not client.done and not server.done
    c, s = connect(client, server)
    assert c.error is None and s.error is None
    assert client.done and server.done and client.verified and server.verified
    assert client.peer_info == SERVER_INFO and server.peer_info == CLIENT_INFO
    assert client.peer_name == "the-server" and server.peer_name == "the-client"
    assert client.failed is None and server.failed is None
    assert client.peer_nonce == NONCE_S and server.peer_nonce == NONCE_C
    assert kinds(c.written) == ["HELLO", "AUTH", "AUTH_OK"]
    assert kinds(s.written) == ["HELLO", "AUTH"]
    assert [f.kind for f in s.got] == [HELLO, AUTH, AUTH_OK] and [f.kind for f in c.got] == [HELLO, AUTH]
    # AUTH_OK is the client's first sealed frame: a header and a tag
    assert len(c.written[2]) == PREFIX.size + TAG_SIZE
    assert c.sealed_out == c.written[2:] and s.sealed_out == [] and s.sealed_in == s.got[2:]
    # both hold the keys of both directions: sealed frames flow each way
    big = bytes(range(256)) * 1000
    c.send(MESSAGE, b"ping", [big])
    s.send(MESSAGE, b"pong")
    pump(c, s)
    assert [as_tuple(f) for f in s.received] == [(MESSAGE, 0, b"ping", [big])]
    assert [as_tuple(f) for f in c.received] == [(MESSAGE, 0, b"pong", [])]


@pytest.mark.parametrize("seed", range(25))
def test_handshake_completes_in_any_interleaving(seed):
    client = Handshake("client", b"k", "c", {"name": "a", "n": [1, 2]}, nonce=NONCE_C)
    server = Handshake("server", "k", "c", {"name": "b", "x": {"y": None}}, nonce=NONCE_S)
    # each side sends a sealed message as soon as it is done: it may arrive with the last handshake frame
    c, s = connect(client, server, random.Random(seed), greeting=b"hi")
    assert c.error is None and s.error is None
    assert client.done and server.done
    assert client.peer_info == {"name": "b", "x": {"y": None}}
    assert server.peer_info == {"name": "a", "n": [1, 2]}
    assert [as_tuple(f) for f in c.received] == [as_tuple(f) for f in s.received] == [(MESSAGE, 0, b"hi", [])]


def test_handshake_completes_byte_by_byte():
    client, server = make_pair()
    c, s = Side(client, greeting=b"c"), Side(server, greeting=b"s")
    pump(c, s, max_chunk=1)
    assert client.done and server.done
    assert [f.main for f in c.received] == [b"s"] and [f.main for f in s.received] == [b"c"]


@pytest.mark.parametrize("role", ["client", "server"])
def test_hello_carries_protocol_cluster_and_nonce_only(role):
    hs = Handshake(role, "s", "clu", {"name": "node-1", "pid": 98765, "host": "h.example"}, nonce=NONCE_C)
    data = wire(hs.start())
    frame = one_frame(data)
    assert (frame.kind, frame.flags, frame.parts) == (HELLO, 0, [])
    assert json.loads(frame.main) == {"protocol": PROTOCOL_VERSION, "cluster": "clu", "nonce": NONCE_C.hex()}
    assert PROTOCOL_VERSION == 3
    for info in (b"node-1", b"98765", b"h.example", b"name", b"pid", b"host"):
        assert info not in data


def test_nonces_are_fresh():
    a = Handshake("client", "s", "c", {"name": "a"})
    b = Handshake("client", "s", "c", {"name": "a"})
    assert len(a.nonce) == 32 and a.nonce != b.nonce


def test_server_sends_nothing_but_its_hello_before_the_client_proved_the_secret():
    client, server = make_pair()
    c, s = Side(client), Side(server)
    hello = s.written[0]
    c.deliver(b"".join(s.out))  # the server's HELLO: the client answers HELLO, AUTH
    s.out.clear()
    assert kinds(c.written) == ["HELLO", "AUTH"]
    c_hello, c_auth = c.written
    s.deliver(c_hello + c_auth[:-1])  # all but the last byte of the proof
    assert s.written == [hello] and not server.verified
    assert server.sealer is None and server.opener is None and server.peer_info is None
    assert json.loads(main_of(hello)).keys() == {"protocol", "cluster", "nonce"}
    assert len(hello) == PREFIX.size + len(main_of(hello))
    s.deliver(c_auth[-1:])
    assert kinds(s.written) == ["HELLO", "AUTH"] and server.verified and not server.done
    assert b"the-server" in s.written[1]  # its info goes out with its proof, now


def test_client_without_the_secret_gets_a_reject_and_nothing_else():
    checked = []
    client, server = make_pair(client_secret="not-the-secret", server_check=checked.append)
    c, s = connect(client, server)
    hello, reject = s.written
    sent = hello + reject
    assert [as_tuple(f) for f in FrameDecoder(BIG).feed(sent)] == [
        (HELLO, 0, main_of(hello), []),
        (REJECT, 0, b'{"reason": "authentication failed: the secrets of the two nodes differ"}', []),
    ]
    assert len(reject) == PREFIX.size + len(main_of(reject))  # no tag, nothing else
    assert json.loads(main_of(hello)).keys() == {"protocol", "cluster", "nonce"}
    for info in (b"the-server", b"driver", b"45678"):
        assert info not in sent
    assert checked == [] and server.peer_info is None and not server.verified
    assert server.sealer is None and server.opener is None and s.decoder.opener is None
    assert isinstance(s.error, HandshakeError)
    assert s.error.reason == server.failed == "authentication failed: the secrets of the two nodes differ"
    assert isinstance(c.error, HandshakeError)
    assert str(c.error) == "refused by the peer: 'authentication failed: the secrets of the two nodes differ'"
    assert c.error.reject is None  # a REJECT is not answered
    assert not client.done and not server.done and not client.verified


def _server_auth(secret: bytes, s_hello: Frame, c_hello: Frame, c_auth: Frame, info: bytes) -> Frame:
    proof = spec_mac(secret, b"server-auth", s_hello.main, c_hello.main, c_auth.main[:32], info)
    return Frame(AUTH, proof + info)


def test_server_without_the_secret_is_refused_by_the_client():
    """An impostor server answers the client's AUTH with a proof made with another secret."""
    info = b'{"name": "impostor"}'
    for secret, accepted in ((b"not-the-secret", False), (SECRET.encode(), True)):
        client, server = make_pair()
        c_hello, s_hello = one_frame(client.start()), one_frame(server.start())
        c_auth = one_frame(client.receive(s_hello))
        forged = _server_auth(secret, s_hello, c_hello, c_auth, info)
        if accepted:  # control: the same construction with the secret passes
            assert len(client.receive(forged)) == 1 and client.done
            assert client.peer_info == {"name": "impostor"}
            continue
        with pytest.raises(HandshakeError, match="^authentication failed: the server could not prove") as exc:
            client.receive(forged)
        reject = one_frame(exc.value.reject)  # unsealed: nothing made with the keys goes to an impostor
        assert reject.kind == REJECT and json.loads(reject.main) == {"reason": exc.value.reason}
        assert client.peer_info is None and not client.verified and not client.done
        assert client.sealer is None and client.opener is None


def test_str_and_bytes_secrets_are_the_same():
    client, server = make_pair(client_secret="sécret", server_secret="sécret".encode())
    connect(client, server)
    assert client.done and server.done


@pytest.mark.parametrize("secret", ["", b"", None, 5], ids=["empty str", "empty bytes", "None", "int"])
def test_a_secret_is_required(secret):
    for role in ("client", "server"):
        with pytest.raises(ValueError, match="non-empty secret"):
            Handshake(role, secret, "c", {"name": "a"})


def test_role_must_be_client_or_server():
    with pytest.raises(ValueError, match="role"):
        Handshake("peer", "s", "c", {"name": "a"})


def test_session_keys_and_proofs_follow_the_described_schedule():
    client, server = make_pair()
    c, s = connect(client, server)
    c_hello, c_auth = main_of(c.written[0]), main_of(c.written[1])
    s_hello, s_auth = main_of(s.written[0]), main_of(s.written[1])
    secret = SECRET.encode()
    proof, c_info = c_auth[:32], c_auth[32:]
    assert json.loads(c_info) == CLIENT_INFO and json.loads(s_auth[32:]) == SERVER_INFO
    assert proof == spec_mac(secret, b"client-auth", s_hello, c_hello, c_info)
    assert s_auth[:32] == spec_mac(secret, b"server-auth", s_hello, c_hello, proof, s_auth[32:])
    c2s, s2c = spec_keys(secret, s_hello, c_hello, proof)
    assert c2s != s2c
    assert c.written[2] == wire(FrameSealer(c2s).seal(AUTH_OK))
    s.send(MESSAGE, b"x")
    assert open_frame(s.out[-1], s2c).main == b"x"


def test_session_keys_differ_per_direction_and_per_connection():
    keys = []
    for client_nonce, server_nonce in [(NONCE_C, NONCE_S), (NONCE_C, b"\x09" * 32), (b"\x08" * 32, NONCE_S)]:
        c, s = connect(*make_pair(client_nonce=client_nonce, server_nonce=server_nonce))
        c.send(MESSAGE, b"same")
        s.send(MESSAGE, b"same")
        # what each direction of each connection puts on the wire for the same frame
        keys += [c.out[-1], s.out[-1]]
    assert len(set(keys)) == 6
    # and connections with the default (random) nonces
    c1, _ = connect(Handshake("client", "k", "c", {"name": "a"}),
                    Handshake("server", "k", "c", {"name": "b"}))
    c2, _ = connect(Handshake("client", "k", "c", {"name": "a"}),
                    Handshake("server", "k", "c", {"name": "b"}))
    assert c1.written[2] != c2.written[2]  # the sealed AUTH_OK


def test_server_is_done_only_on_a_sealed_auth_ok():
    client, server = make_pair()
    c, s = Side(client), Side(server)
    c.deliver(b"".join(s.out))
    s.deliver(b"".join(c.out))
    assert server.verified and not server.done and s.decoder.opener is not None
    s.deliver(frame_bytes(AUTH_OK) + bytes(TAG_SIZE))  # not sealed with the client's key
    assert isinstance(s.error, ProtocolError) and not server.done


def test_reject_is_sealed_once_the_peer_expects_sealed_frames():
    client, server = make_pair()
    assert one_frame(client.reject("no")).kind == REJECT  # before anything: plain
    c_hello, s_hello = one_frame(client.start()), one_frame(server.start())
    server.receive(c_hello)
    c_auth = one_frame(client.receive(s_hello))
    assert one_frame(client.reject("no")).kind == REJECT  # the client has keys, the server not yet
    s_auth = one_frame(server.receive(c_auth))
    c2s, s2c = spec_keys(SECRET.encode(), s_hello.main, c_hello.main, c_auth.main[:32])
    assert open_frame(server.reject("no"), s2c).kind == REJECT  # the client reads sealed frames now
    auth_ok = client.receive(s_auth)
    assert open_frame(auth_ok, c2s).kind == AUTH_OK
    assert json.loads(open_frame(client.reject("bye"), c2s, seq=1).main) == {"reason": "bye"}


# -- Handshake: refusals -------------------------------------------------------------------------------


def test_once_failed_it_stays_failed():
    client, server = make_pair(client_secret="wrong")
    server.receive(one_frame(client.start()))
    c_auth = one_frame(client.receive(one_frame(server.start())))
    with pytest.raises(HandshakeError, match="authentication failed") as first:
        server.receive(c_auth)
    assert first.value.reject is not None
    with pytest.raises(HandshakeError, match="authentication failed") as again:
        server.receive(c_auth)
    assert again.value.reject is None and server.failed == first.value.reason


def test_reject_reason_is_shown_repr_and_cut():
    client, _ = make_pair()
    with pytest.raises(HandshakeError) as info:
        client.receive(Frame(REJECT, json.dumps({"reason": "line\nbreak\x1b[2J" + "x" * 1000}).encode()))
    reason = str(info.value)
    assert reason.startswith("refused by the peer: 'line\\nbreak\\x1b[2J")
    assert reason.isprintable() and len(reason) < 600


def test_reject_without_a_reason():
    client, _ = make_pair()
    with pytest.raises(HandshakeError, match="refused by the peer: 'no reason given'"):
        client.receive(Frame(REJECT, b"{}"))


def test_malformed_reject_is_a_handshake_error():
    client, _ = make_pair()
    with pytest.raises(HandshakeError):
        client.receive(Frame(REJECT, b"\x00garbage"))


def test_protocol_version_mismatch_names_both_versions():
    client = Handshake("client", "s", "c", {"name": "a"}, nonce=NONCE_C, version=1)
    server = Handshake("server", "s", "c", {"name": "b"}, nonce=NONCE_S)
    c_hello, s_hello = one_frame(client.start()), one_frame(server.start())
    with pytest.raises(HandshakeError, match=f"^protocol version mismatch: this node speaks version "
                                             f"{PROTOCOL_VERSION}, the peer speaks version 1$") as info:
        server.receive(c_hello)
    assert json.loads(one_frame(info.value.reject).main) == {"reason": info.value.reason}
    with pytest.raises(HandshakeError, match=f"this node speaks version 1, the peer speaks version "
                                             f"{PROTOCOL_VERSION}$"):
        client.receive(s_hello)
    assert client.peer_info is None and server.peer_info is None


@pytest.mark.parametrize("version, shown", [
    ("3", "'3'"), (3.0, "3.0"), (True, "True"), (None, "None"), ([3], "[3]"), (2, "2"), (4, "4"),
    (10**30, str(10**30)),
])
def test_odd_protocol_versions_are_mismatches(version, shown):
    _, server = make_pair()
    main = json.dumps({"protocol": version, "cluster": "c", "nonce": NONCE_C.hex()}).encode()
    with pytest.raises(HandshakeError, match=re.escape(f"the peer speaks version {shown}")):
        server.receive(Frame(HELLO, main))


def test_cluster_name_mismatch_names_both_clusters():
    client = Handshake("client", "s", "a", {"name": "x"}, nonce=NONCE_C)
    server = Handshake("server", "s", "b", {"name": "y"}, nonce=NONCE_S)
    c, s = connect(client, server)
    assert s.error.reason == "cluster name mismatch: this node is in cluster 'b', the peer is in cluster 'a'"
    assert kinds(s.written) == ["HELLO", "REJECT"]
    assert isinstance(c.error, HandshakeError)
    assert client.failed == "cluster name mismatch: this node is in cluster 'a', the peer is in cluster 'b'"


@pytest.mark.parametrize("role", ["client", "server"])
def test_own_hello_reflected_back_is_refused(role):
    hs = Handshake(role, "s", "c", {"name": "me"}, nonce=NONCE_C)
    with pytest.raises(HandshakeError, match="sent back this node's own nonce") as info:
        hs.receive(one_frame(hs.start()))
    assert one_frame(info.value.reject).kind == REJECT
    assert hs.sealer is None and hs.opener is None and not hs.verified


def test_own_auth_reflected_back_is_refused():
    client, server = make_pair()
    auth = client.receive(one_frame(server.start()))
    with pytest.raises(HandshakeError, match="authentication failed"):
        client.receive(one_frame(auth))
    assert not client.verified


def test_server_auth_replayed_into_another_connection_is_refused():
    c1, s1 = connect(*make_pair())
    recorded_hello, recorded_auth = (one_frame([data]) for data in s1.written)
    # the attacker plays the server to a new connection of the client (a new nonce), replaying both
    client = Handshake("client", SECRET, "c", dict(CLIENT_INFO), nonce=b"\x07" * 32)
    assert kinds([wire(client.receive(recorded_hello))]) == ["AUTH"]
    with pytest.raises(HandshakeError, match="authentication failed"):
        client.receive(recorded_auth)
    assert not client.verified and client.peer_info is None and client.sealer is None
    # ... or presents the server's AUTH to the server itself, as a client's (same nonces)
    server = Handshake("server", SECRET, "c", dict(SERVER_INFO), nonce=NONCE_S)
    server.receive(one_frame([c1.written[0]]))
    with pytest.raises(HandshakeError, match="authentication failed"):
        server.receive(recorded_auth)
    # control: the nonce is what defeats the replay; a client reusing the recorded one would accept it
    stale = Handshake("client", SECRET, "c", dict(CLIENT_INFO), nonce=NONCE_C)
    stale.receive(recorded_hello)
    assert len(stale.receive(recorded_auth)) == 1 and stale.done


def test_two_clients_cannot_authenticate_each_other():
    a = Handshake("client", SECRET, "c", {"name": "a"}, nonce=NONCE_C)
    b = Handshake("client", SECRET, "c", {"name": "b"}, nonce=NONCE_S)
    sa, sb = connect(a, b)
    for side in (sa, sb):
        assert isinstance(side.error, HandshakeError) and "authentication failed" in side.error.reason
        assert not side.hs.verified and side.hs.sealer is None and side.hs.peer_info is None


def test_two_servers_wait_for_each_other_and_reveal_nothing():
    a = Handshake("server", SECRET, "c", {"name": "a"}, nonce=NONCE_C)
    b = Handshake("server", SECRET, "c", {"name": "b"}, nonce=NONCE_S)
    sa, sb = connect(a, b)
    assert kinds(sa.written) == kinds(sb.written) == ["HELLO"]
    assert sa.error is None and sb.error is None and not a.verified and not b.verified


def test_replayed_client_auth_fails_against_a_fresh_nonce():
    c, s = connect(*make_pair())
    recorded_hello, recorded_auth = (one_frame([data]) for data in c.written[:2])
    fresh = Handshake("server", SECRET, "c", dict(SERVER_INFO))  # a new connection: a new nonce
    fresh.start()
    fresh.receive(recorded_hello)
    with pytest.raises(HandshakeError, match="authentication failed"):
        fresh.receive(recorded_auth)
    assert fresh.peer_info is None and not fresh.verified and fresh.sealer is None
    # control: a server reusing the recorded nonce would accept it
    stale = Handshake("server", SECRET, "c", dict(SERVER_INFO), nonce=NONCE_S)
    stale.receive(recorded_hello)
    assert one_frame(stale.receive(recorded_auth)).kind == AUTH


def test_client_auth_with_other_info_is_refused():
    """The proof covers the client's info: it cannot be swapped for another's."""
    client, server = make_pair()
    server.receive(one_frame(client.start()))
    auth = one_frame(client.receive(one_frame(server.start())))
    forged = Frame(AUTH, auth.main[:32] + b'{"name": "mallory"}')
    with pytest.raises(HandshakeError, match="authentication failed"):
        server.receive(forged)
    assert server.peer_info is None


@pytest.mark.parametrize("main", [
    b"",
    b"x" * 31,
    b"\x00" * 32 + json.dumps(CLIENT_INFO).encode(),
    b"\xff" * 64,
    b"[" * 4000 + b"]" * 4000,
], ids=["empty", "short", "zero mac", "garbage", "nested"])
def test_bad_client_auth_is_refused(main):
    client, server = make_pair()
    server.receive(one_frame(client.start()))
    with pytest.raises(HandshakeError, match="authentication failed") as info:
        server.receive(Frame(AUTH, main))
    assert one_frame(info.value.reject).kind == REJECT
    assert not server.verified and server.sealer is None


def _hello(**fields) -> bytes:
    hello = {"protocol": PROTOCOL_VERSION, "cluster": "c", "nonce": NONCE_C.hex()}
    hello.update(fields)
    return json.dumps({k: v for k, v in hello.items() if v is not ...}).encode()


MALFORMED_HELLOS = {
    "empty": b"",
    "not json": b"not json",
    "truncated": b'{"protocol": 2,',
    "not utf-8": b"\xff\xfe{}",
    "list": b"[1, 2]",
    "string": b'"a string"',
    "null": b"null",
    "nested": b"[" * 4000 + b"]" * 4000,
    "nested value": _hello(cluster=...)[:-1] + b', "cluster": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    "huge integer": b'{"protocol": ' + b"9" * 5000 + b"}",
    "no protocol": _hello(protocol=...),
    "no cluster": _hello(cluster=...),
    "cluster int": _hello(cluster=1),
    "no nonce": _hello(nonce=...),
    "nonce not hex": _hello(nonce="zz" * 32),
    "nonce int": _hello(nonce=12345),
    "nonce null": _hello(nonce=None),
    "nonce list": _hello(nonce=[1, 2]),
    "odd hex": _hello(nonce="ab" * 16 + "a"),
    "short nonce": _hello(nonce="ab" * 15),
    "NaN": b'{"protocol": NaN, "cluster": "c", "nonce": "%s"}' % NONCE_C.hex().encode(),
    "surrogate": _hello(cluster="\ud800"),
}


@pytest.mark.parametrize("role", ["client", "server"])
@pytest.mark.parametrize("main", MALFORMED_HELLOS.values(), ids=MALFORMED_HELLOS.keys())
def test_malformed_hello_is_a_handshake_error(role, main):
    assert len(main) <= HANDSHAKE_MAX_MESSAGE  # the handshake decoder lets it through
    hs = Handshake(role, SECRET, "c", {"name": "me"}, nonce=NONCE_S)
    with pytest.raises(HandshakeError) as info:
        hs.receive(Frame(HELLO, main))
    reject = one_frame(info.value.reject)
    assert reject.kind == REJECT and json.loads(reject.main) == {"reason": info.value.reason}
    assert hs.failed == info.value.reason and hs.sealer is None and hs.peer_nonce is None


def _forged_client_auth(server: Handshake, c_hello: Frame, info: bytes) -> Frame:
    """A client AUTH with a valid proof (made with the secret) over ``info``."""
    s_hello = one_frame(server.start())
    return Frame(AUTH, spec_mac(SECRET.encode(), b"client-auth", s_hello.main, c_hello.main, info) + info)


MALFORMED_INFOS = {
    "empty": b"",
    "not json": b"{name",
    "not utf-8": b'{"name": "\xff"}',
    "list": b'["name"]',
    "null": b"null",
    "nested": b"[" * 4000 + b"]" * 4000,
}
BAD_NAMES = {
    "missing": ...,
    "not a string": 5,
    "null": None,
    "empty": "",
    "newline": "a\nb",
    "NUL": "a\x00",
    "escape": "\x1b[31mred",
    "line separator": "a\u2028b",
    "too long": "n" * (MAX_NAME + 1),
}


@pytest.mark.parametrize("info", MALFORMED_INFOS.values(), ids=MALFORMED_INFOS.keys())
def test_authenticated_client_auth_with_malformed_info_is_a_handshake_error(info):
    checked = []
    client, server = make_pair(server_check=checked.append)
    c_hello = one_frame(client.start())
    server.receive(c_hello)
    with pytest.raises(HandshakeError, match="malformed handshake frame|invalid node name") as exc:
        server.receive(_forged_client_auth(server, c_hello, info))
    assert one_frame(exc.value.reject).kind == REJECT  # the client does not read sealed frames yet
    assert checked == [] and not server.verified and server.sealer is None


def test_forged_client_auth_control():
    """The construction of the tests above, with well-formed info, is accepted."""
    client, server = make_pair()
    c_hello = one_frame(client.start())
    server.receive(c_hello)
    assert one_frame(server.receive(_forged_client_auth(server, c_hello, b'{"name": "x"}'))).kind == AUTH
    assert server.peer_info == {"name": "x"}


@pytest.mark.parametrize("info", MALFORMED_INFOS.values(), ids=MALFORMED_INFOS.keys())
def test_authenticated_server_auth_with_malformed_info_is_a_handshake_error(info):
    client, server = make_pair()
    c_hello, s_hello = one_frame(client.start()), one_frame(server.start())
    c_auth = one_frame(client.receive(s_hello))
    with pytest.raises(HandshakeError, match="malformed handshake frame|invalid node name") as exc:
        client.receive(_server_auth(SECRET.encode(), s_hello, c_hello, c_auth, info))
    # the server proved the secret and reads sealed frames: the refusal is sealed
    c2s, _ = spec_keys(SECRET.encode(), s_hello.main, c_hello.main, c_auth.main[:32])
    assert json.loads(open_frame(exc.value.reject, c2s).main) == {"reason": exc.value.reason}
    assert not client.done


def _info(name) -> dict:
    return {"type": "worker"} if name is ... else {"name": name, "type": "worker"}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_client_with_an_invalid_name_is_refused(name):
    checked = []
    client = Handshake("client", SECRET, "c", _info(name), nonce=NONCE_C)
    server = Handshake("server", SECRET, "c", dict(SERVER_INFO), nonce=NONCE_S, check_peer=checked.append)
    c, s = connect(client, server)
    assert s.error.reason.startswith("invalid node name: ")
    assert s.error.reason.isprintable() and len(s.error.reason) < 150
    assert kinds(s.written) == ["HELLO", "REJECT"]
    assert checked == [] and not server.verified and server.peer_info is None
    assert isinstance(c.error, HandshakeError) and str(c.error).startswith("refused by the peer: ")
    assert "invalid node name" in str(c.error)


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_server_with_an_invalid_name_is_refused(name):
    checked = []
    client = Handshake("client", SECRET, "c", dict(CLIENT_INFO), nonce=NONCE_C, check_peer=checked.append)
    server = Handshake("server", SECRET, "c", _info(name), nonce=NONCE_S)
    c, s = connect(client, server)
    assert c.error.reason.startswith("invalid node name: ")
    assert kinds(c.written) == ["HELLO", "AUTH", "REJECT"]
    assert len(c.written[2]) == PREFIX.size + len(main_of(c.written[2])) + TAG_SIZE  # sealed
    assert checked == [] and not client.done and client.peer_info is None
    # it reached the server through its sealed decoder
    assert isinstance(s.error, HandshakeError) and str(s.error).startswith("refused by the peer: ")
    assert "invalid node name" in str(s.error)


@pytest.mark.parametrize("name", ["n" * MAX_NAME, "nœud-ü-1", "a b", "x"])
def test_valid_names_are_accepted(name):
    client = Handshake("client", SECRET, "c", {"name": name}, nonce=NONCE_C)
    server = Handshake("server", SECRET, "c", {"name": name}, nonce=NONCE_S)
    connect(client, server)
    assert client.done and server.done
    assert server.peer_name == client.peer_name == name


def test_check_peer_sees_the_authenticated_info_of_each_side():
    seen = []
    client, server = make_pair(client_check=lambda info: seen.append(("client", info)),
                               server_check=lambda info: seen.append(("server", info)))
    connect(client, server)
    assert client.done and server.done
    assert seen == [("server", CLIENT_INFO), ("client", SERVER_INFO)]


def _refuse(info):
    raise HandshakeError(f"{info['name']} is already connected")


def test_check_peer_refusal_on_the_server_is_a_plain_reject():
    client, server = make_pair(server_check=_refuse)
    c, s = connect(client, server)
    assert s.error.reason == server.failed == "the-client is already connected"
    assert kinds(s.written) == ["HELLO", "REJECT"]
    assert len(s.written[1]) == PREFIX.size + len(main_of(s.written[1]))  # unsealed: the client reads it
    assert b"the-server" not in b"".join(s.written)  # no proof, no info
    assert not server.verified and server.sealer is None and server.peer_info is None
    assert str(c.error) == "refused by the peer: 'the-client is already connected'"


def test_check_peer_refusal_on_the_client_is_a_sealed_reject():
    client, server = make_pair(client_check=_refuse)
    c, s = connect(client, server)
    assert c.error.reason == "the-server is already connected"
    assert kinds(c.written) == ["HELLO", "AUTH", "REJECT"]
    assert len(c.written[2]) == PREFIX.size + len(main_of(c.written[2])) + TAG_SIZE
    assert s.decoder.opener is not None  # read as sealed
    assert str(s.error) == "refused by the peer: 'the-server is already connected'"
    assert not client.done and not server.done


def test_plain_reject_after_the_server_auth_does_not_reach_the_server():
    """Why the client's late refusals are sealed: the server reads nothing else."""
    client, server = make_pair()
    c, s = Side(client), Side(server)
    c.deliver(b"".join(s.out))
    s.deliver(b"".join(c.out))
    assert kinds(s.written) == ["HELLO", "AUTH"]
    s.deliver(frame_bytes(REJECT, b'{"reason": "no"}') + bytes(64))
    assert isinstance(s.error, ProtocolError) and server.failed is None


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


def test_auth_ok_before_the_client_is_verified_is_refused():
    client, server = make_pair()
    server.receive(one_frame(client.start()))
    with pytest.raises(HandshakeError, match="unexpected AUTH_OK frame"):
        server.receive(Frame(AUTH_OK, b""))


def test_client_never_accepts_auth_ok():
    client, server = make_pair()
    client.receive(one_frame(server.start()))
    with pytest.raises(HandshakeError, match="unexpected AUTH_OK frame"):
        client.receive(Frame(AUTH_OK, b""))


def test_second_auth_is_refused():
    client, server = make_pair()
    c_hello, s_hello = one_frame(client.start()), one_frame(server.start())
    server.receive(c_hello)
    c_auth = one_frame(client.receive(s_hello))
    server.receive(c_auth)
    with pytest.raises(HandshakeError, match="unexpected AUTH frame") as info:
        server.receive(c_auth)
    assert info.value.reject is not None and server.sealer is not None  # sealed: the client has keys


def test_message_after_hello_is_refused():
    client, server = make_pair()
    server.receive(one_frame(client.start()))
    with pytest.raises(HandshakeError, match="unexpected MESSAGE frame"):
        server.receive(Frame(MESSAGE, b"data"))


@pytest.mark.parametrize("kind", [HELLO, REJECT], ids=["HELLO", "REJECT"])
def test_deeply_nested_json_is_a_handshake_error(kind):
    _, server = make_pair()
    main = b"[" * 4000 + b"]" * 4000
    assert len(main) <= HANDSHAKE_MAX_MESSAGE  # the handshake decoder lets it through
    with pytest.raises(HandshakeError):
        server.receive(Frame(kind, main))


# -- Handshake: never unpickles ------------------------------------------------------------------------


def test_handshake_never_calls_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the handshake must not unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    c, s = connect(*make_pair(), greeting=pickle.dumps(["payload"]))
    assert c.hs.done and s.hs.done and [f.kind for f in s.received] == [MESSAGE]


@pytest.mark.parametrize("stage", ["before hello", "after hello", "after auth"])
def test_malicious_pickle_during_the_handshake_is_not_unpickled(tmp_path, stage):
    target = tmp_path / "pwned"
    evil = pickle.dumps(_CreatesFile(target))
    client, server = make_pair()
    c, s = Side(client), Side(server)
    if stage != "before hello":
        s.deliver(c.out.pop(0))
    if stage == "after auth":
        c.deliver(b"".join(s.out))
        s.deliver(b"".join(c.out))
        assert server.verified and not server.done
    s.deliver(frame_bytes(MESSAGE, evil) + bytes(TAG_SIZE))
    # refused by the decoder: by its kind until the client is verified, then by its tag
    assert isinstance(s.error, ProtocolError)
    expected = "frame authentication failed" if stage == "after auth" else "unexpected frame kind"
    assert expected in str(s.error)
    assert s.received == [] and not server.done
    # handed to the handshake directly, it is refused as well
    fresh = Handshake("server", SECRET, "c", dict(SERVER_INFO))
    with pytest.raises(HandshakeError, match="unexpected MESSAGE frame"):
        fresh.receive(Frame(MESSAGE, evil, [evil]))
    assert not target.exists()


def test_flags_on_an_unauthenticated_handshake_frame_are_refused():
    """The handshake's MACs do not cover the flags byte, so nothing but zero is accepted there."""
    client, server = make_pair()
    hello = one_frame(client.start())
    with pytest.raises(HandshakeError, match="unexpected flags 1"):
        server.receive(Frame(hello.kind, hello.main, [], 1))
