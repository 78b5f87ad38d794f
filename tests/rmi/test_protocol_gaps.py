"""The protocol core's corners that mutation testing found untested (tools/mutate.py): each test here
fails for some small change to bndl_like/rmi/protocol.py that the other protocol tests let pass."""

from __future__ import annotations

import hashlib
import sys
import weakref

import numpy as np
import pytest

from bndl_like.rmi import protocol
from bndl_like.rmi.errors import ProtocolError
from bndl_like.rmi.protocol import (
    AUTH_OK,
    HANDSHAKE_BUFFER,
    HANDSHAKE_MAX_MESSAGE,
    HELLO,
    LARGE_PART,
    MESSAGE,
    PING,
    PREFIX,
    TAG_SIZE,
    UNINITIALIZED_PART,
    Frame,
    FrameDecoder,
    FrameOpener,
    FrameSealer,
    encode,
)

from .protocol_drive import BIG, KEY, frame_bytes, handshake_decoder, sealed_decoder, wire
from .test_protocol import connect, make_pair

pytestmark = pytest.mark.timeout(20)


def test_the_wire_numbers_are_pinned():
    """What two nodes of different versions must agree on: a change here is a new protocol version."""
    assert (protocol.HELLO, protocol.AUTH, protocol.AUTH_OK, protocol.REJECT, protocol.MESSAGE,
            protocol.PING, protocol.RETIRE, protocol.CLOSE) == (1, 2, 3, 4, 5, 6, 7, 8)
    assert protocol.KIND_NAMES == {1: "HELLO", 2: "AUTH", 3: "AUTH_OK", 4: "REJECT", 5: "MESSAGE",
                                   6: "PING", 7: "RETIRE", 8: "CLOSE"}
    assert protocol.PROTOCOL_VERSION == 3 and protocol.UPGRADE_TOKEN == "bndl-like-rmi"
    assert PREFIX.format == "<BBHQ" and protocol.SEQ.format == "<Q" and TAG_SIZE == 16
    assert LARGE_PART == 1 << 16 and protocol.MAX_PARTS == 4096 and protocol.MAX_NAME == 200


def test_the_pre_authentication_bounds_are_pinned():
    """What an unauthenticated peer can make a node hold: 8 KiB frames in a 16 KiB buffer."""
    assert HANDSHAKE_MAX_MESSAGE == 8 * 1024 and HANDSHAKE_BUFFER == 16 * 1024
    decoder = handshake_decoder()
    assert len(decoder.get_buffer()) == HANDSHAKE_BUFFER
    decoder.feed(frame_bytes(HELLO, b"x" * HANDSHAKE_MAX_MESSAGE))
    with pytest.raises(ProtocolError, match="exceeds the maximum message size of 8192 bytes"):
        handshake_decoder().feed(PREFIX.pack(HELLO, 0, 0, HANDSHAKE_MAX_MESSAGE + 1))


def test_golden_unsealed_frame():
    assert wire(encode(HELLO, b"hi")) == bytes.fromhex("0100000002000000000000006869")
    assert wire(encode(MESSAGE, b"m", [b"ab"], flags=3)) == bytes.fromhex(
        "050301000100000000000000" "0200000000000000" "6d" "6162")


def test_golden_sealed_small_frame():
    """BLAKE2b keyed with the direction key, personalised, over the sequence number then the frame."""
    sealer = FrameSealer(KEY)
    sealer.seq = 5
    (chunk,) = sealer.seal(MESSAGE, b"abc")
    frame = bytes.fromhex("0500000003000000000000") + b"\x00" + b"abc"
    h = hashlib.blake2b(key=KEY, person=b"bndl-frame", digest_size=16)
    h.update((5).to_bytes(8, "little"))
    h.update(frame)
    assert chunk == frame + h.digest() and sealer.seq == 6


@pytest.mark.parametrize("size, numpy_backed", [(UNINITIALIZED_PART - 1, False), (UNINITIALIZED_PART, True)])
def test_parts_from_1_mib_are_received_into_memory_not_zero_filled(size, numpy_backed):
    assert UNINITIALIZED_PART == 1 << 20
    decoder = FrameDecoder(BIG)
    (frame,) = decoder.feed(frame_bytes(MESSAGE, b"m", [b"\x07" * size]))
    (part,) = frame.parts
    assert isinstance(part, memoryview) == numpy_backed
    assert isinstance(getattr(part, "obj", None), np.ndarray) == numpy_backed
    assert len(part) == size and bytes(part[-1:]) == b"\x07"


@pytest.mark.parametrize("sealed", [False, True])
def test_a_main_part_of_exactly_the_large_part_size_is_read_from_the_small_buffer(sealed):
    main = bytes(range(256)) * (LARGE_PART // 256)
    assert len(main) == LARGE_PART
    if sealed:
        (data,) = FrameSealer(KEY).seal(MESSAGE, main)  # one chunk: tagged with BLAKE2b
        decoder = FrameDecoder(BIG)
        decoder.seal(FrameOpener(KEY))
    else:
        data = frame_bytes(MESSAGE, main)
        decoder = FrameDecoder(BIG)
    (frame,) = decoder.feed(data)
    assert type(frame.main) is bytes and frame.main == main and frame.parts == []
    assert not decoder.pending and decoder._large is None


def test_one_frame_mode_through_the_buffer_interface_until_the_buffer_is_full():
    """How a connection reads the handshake: whatever fits in the buffer, one frame per call, then
    buffer_updated(0) for the frames already received; the buffer fills up and is compacted."""
    decoder = handshake_decoder()
    mains = [bytes([i]) * (200 + 37 * i) for i in range(60)]  # ~75 KiB, several buffers' worth
    data = memoryview(b"".join(frame_bytes(HELLO, m) for m in mains))
    got, full = [], 0
    while data or decoder.pending:
        view = decoder.get_buffer(-1)
        assert len(view) > 0 and len(view) <= HANDSHAKE_BUFFER
        n = min(len(view), len(data))
        full += n == len(view)
        view[:n] = data[:n]
        data = data[n:]
        frames = decoder.buffer_updated(n)
        while frames:
            assert len(frames) == 1
            got.append(frames[0].main)
            frames = decoder.buffer_updated(0)
        if not n:
            break
    assert got == mains and full > 3
    assert decoder.bytes_received == sum(len(frame_bytes(HELLO, m)) for m in mains)


@pytest.mark.parametrize("parts", [[], [b"p"], [b"\x01" * (LARGE_PART + 1)]],
                         ids=["main only", "small part", "large part"])
def test_an_authentication_failure_names_the_frame_that_failed(parts):
    """Each way a frame is checked (inlined, BLAKE2b with parts, Poly1305) counts the frames it read."""
    sealer = FrameSealer(KEY)
    good = b"".join(wire(sealer.seal(MESSAGE, b"m%d" % i, parts)) for i in range(3))
    bad = bytearray(wire(sealer.seal(MESSAGE, b"bad", parts)))
    bad[-1] ^= 1
    decoder = sealed_decoder()
    assert [bytes(f.main) for f in decoder.feed(good)] == [b"m0", b"m1", b"m2"]
    with pytest.raises(ProtocolError, match=r"frame authentication failed \(frame 3\)"):
        decoder.feed(bytes(bad))


def test_without_numpy_large_parts_arrive_in_a_bytearray(monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", None)  # `import numpy` raises ImportError
    (frame,) = FrameDecoder(BIG).feed(frame_bytes(MESSAGE, b"m", [b"\x07" * UNINITIALIZED_PART]))
    (part,) = frame.parts
    assert type(part) is bytearray and part == b"\x07" * UNINITIALIZED_PART


@pytest.mark.parametrize("size", [16, 17, 64])
def test_nonces_of_16_bytes_or_more_are_accepted(size):
    """16 bytes is the shortest nonce a peer may send (15 is refused: test_malformed_hello_...)."""
    client, server = make_pair(client_nonce=b"c" * size, server_nonce=b"s" * size)
    c, s = connect(client, server)
    assert c.error is None and s.error is None and client.done and server.done
    assert client.peer_nonce == b"s" * size and server.peer_nonce == b"c" * size


def test_clean_text_escapes_control_characters_and_cuts():
    assert protocol.clean_text("a plain line: é, ü, 中") == "a plain line: é, ü, 中"
    assert protocol.clean_text("evil\nINFO forged\x1b[31m\t\x00") == "evil\\nINFO forged\\x1b[31m\\t\\x00"
    assert protocol.clean_text("x" * 50, 10) == "x" * 10
    # cut first, then escaped: a line of at most ``limit`` characters of the peer's, each shown
    assert protocol.clean_text("\n" * 50, 10) == "\\n" * 10


def test_receive_always_returns_a_list_of_chunks():
    """Handshake.receive returns what to send as a list, an empty one when there is nothing to send
    (the server on the client's HELLO, on its AUTH_OK): the transport iterates it."""
    client, server = make_pair()
    (c_hello,), (s_hello,) = client.start(), server.start()
    to_server = server.receive(Frame(HELLO, bytes(c_hello)[PREFIX.size:]))
    assert to_server == []
    (auth,) = client.receive(Frame(HELLO, bytes(s_hello)[PREFIX.size:]))
    (answer,) = server.receive(handshake_decoder().feed(auth)[0])
    (auth_ok,) = client.receive(handshake_decoder().feed(answer)[0])
    opened = sealed_decoder(server._keys[1]).feed(auth_ok)  # (send, receive) keys
    assert [f.kind for f in opened] == [AUTH_OK]
    assert server.receive(opened[0]) == [] and server.done and client.done


def test_the_decoder_keeps_no_reference_to_a_frame_it_handed_out():
    """Once the application drops a received frame, its parts are freed (a part can be GiBs), before
    and after the decoder reads the next frame."""
    sealer = FrameSealer(KEY)
    decoder = sealed_decoder()
    (frame,) = decoder.feed(wire(sealer.seal(MESSAGE, b"m", [b"\x07" * UNINITIALIZED_PART])))
    received = weakref.ref(frame.parts[0].obj)  # the numpy array under the part
    del frame
    assert received() is None, "the decoder still holds the part of a frame it handed out"
    (frame,) = decoder.feed(wire(sealer.seal(MESSAGE, b"m", [b"\x07" * UNINITIALIZED_PART])))
    received = weakref.ref(frame.parts[0].obj)
    del frame
    assert [f.main for f in decoder.feed(wire(sealer.seal(PING, b"next")))] == [b"next"]
    assert received() is None, "the decoder still holds the part of a frame it handed out"
