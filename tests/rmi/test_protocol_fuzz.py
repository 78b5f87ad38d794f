"""Fuzzing the protocol cores: arbitrary bytes into the decoders, and a meddler between two handshakes.

Bounded for the test suite; ``benchmarks/fuzz.py N`` runs the same fuzzers for as long as wanted.
"""

from __future__ import annotations

import itertools
import os
import struct

from hypothesis import HealthCheck, event, given, is_hypothesis_test, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from bndl_like.rmi.errors import HandshakeError
from bndl_like.rmi.protocol import KIND_NAMES, PREFIX, FrameSealer

from ..conftest import ROOT
from . import test_protocol
from .protocol_drive import (
    FORGED_KINDS,
    KEY,
    LENGTHS,
    MAIN_SIZES,
    NOISE,
    NPARTS,
    PART_SIZES,
    TARGET_KINDS,
    UNDISTURBED,
    Meddler,
    check_handshake_decoder,
    check_handshake_on_junk,
    check_outcome,
    check_sealed_decoder,
    check_sealed_stream,
    frame_bytes,
    wire,
)

# On top of the session's profile (tests/conftest.py), not instead of it: its example database is
# kept, so each run tries new inputs and first replays those that failed before. A run tries few
# of them (runs add up, in CI too): the single corner cases are the deterministic tests' job
# (test_protocol.py, and test_protocol_meddling.py for each alteration of each handshake frame),
# and benchmarks/fuzz.py fuzzes for as long as wanted.
FUZZ = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def reads(cuts: list[int]):
    """Reads of the sizes in ``cuts``, cycled; all at once without cuts."""
    return itertools.cycle(cuts or [1 << 62])


# -- bytes that look like frames ------------------------------------------------------------------------


@st.composite
def headers(draw) -> bytes:
    nparts = draw(st.sampled_from(NPARTS))
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
    st.sampled_from(NOISE),
)
wire_bytes = st.lists(pieces, max_size=12).map(b"".join)
cuts = st.lists(st.integers(1, 3000), max_size=8)


# -- (a) arbitrary bytes into the decoders ------------------------------------------------------------


@FUZZ
@given(data=wire_bytes, cuts=cuts, one_frame=st.booleans())
def test_handshake_decoder_on_arbitrary_bytes(data, cuts, one_frame):
    check_handshake_decoder(one_frame, data, reads(cuts))


@FUZZ
@given(data=wire_bytes, cuts=cuts)
def test_sealed_decoder_on_arbitrary_bytes(data, cuts):
    """Nothing without a tag of the key comes out; what an announced frame costs is bounded by the limit."""
    check_sealed_decoder(data, reads(cuts))


frame_specs = st.lists(
    st.tuples(
        st.sampled_from(sorted(KIND_NAMES)),
        st.integers(0, 255),
        st.sampled_from(MAIN_SIZES),
        st.lists(st.sampled_from(PART_SIZES), max_size=3),
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
    check_sealed_stream(sent, sealed, mutate(sealed, frame_ops, byte_ops), reads(cuts))


# -- (b) a meddler between two handshakes ----------------------------------------------------------------


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
    st.tuples(st.just("forge"), st.sampled_from(FORGED_KINDS),
              st.binary(max_size=60)),
    st.tuples(st.just("replay"), st.integers(0, 20)),
)
meddling = st.tuples(names, actions).map(lambda t: (t[1][0], t[0], *t[1][1:]))
# an action on the frame of a kind from one side, when it is about to be delivered
targeted = st.tuples(names, st.sampled_from(TARGET_KINDS), actions)


@settings(FUZZ, max_examples=40)
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


@settings(FUZZ, max_examples=40)
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


@FUZZ
@given(ops=st.lists(st.tuples(st.just("deliver"), names, st.integers(1, 200)), max_size=40),
       case=st.sampled_from(sorted((k for k in UNDISTURBED if not all(k)), key=str)))
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
    check_handshake_on_junk(role, hello, data, reads(cuts))


def test_the_fuzzers_keep_their_examples():
    """Every fuzzer of the protocol runs on the session's example database (.hypothesis/ of the repo,
    which CI keeps) and is not derandomized: each run tries new inputs and replays the failing ones."""
    fuzzers = [f for module in (globals(), vars(test_protocol)) for f in module.values()
               if is_hypothesis_test(f)]
    assert len(fuzzers) >= 8
    for fuzzer in fuzzers:
        chosen = fuzzer._hypothesis_internal_use_settings  # what @settings gave the test
        assert not chosen.derandomize, fuzzer.__name__
        assert isinstance(chosen.database, DirectoryBasedExampleDatabase), fuzzer.__name__
        assert os.path.abspath(chosen.database.path) == os.path.join(ROOT, ".hypothesis", "examples")
