"""Long-running fuzzer of the RMI protocol cores (bndl_like.rmi.protocol), without a network.

The fuzzers of tests/rmi/test_protocol_fuzz.py, driven by ``random.Random(seed)`` instead of
hypothesis, for as many cases as asked:

* ``handshake-decoder``: frame-like junk into the decoder a connection reads with before the peer
  is authenticated: frames within the limits or ProtocolError, nothing allocated beyond its buffer.
* ``sealed-decoder``: the same junk into a sealed decoder: no frame at all, ProtocolError or waiting,
  at most ``max_message_size`` allocated.
* ``sealed-stream``: valid sealed frames, then bits flipped, bytes inserted, deleted or repeated:
  a prefix of the frames sent comes out, in order, then at most a ProtocolError.
* ``handshake-junk``: a client or a server that gets junk (after a valid HELLO or not): refused,
  never verified, never a proof from the server.
* ``meddled-handshake``: a client and a server through a wire that delivers frames split anyhow and
  may flip bits, drop, duplicate, reflect, swap, truncate, inject, forge or replay frames: both
  done with the same keys (only over the frames as sent), or HandshakeError / ProtocolError, or
  waiting; never done on one side with keys the other does not hold.

Any other exception, or a broken invariant, stops the run with the seed that reproduces the case::

    python benchmarks/fuzz.py 100000            # 100,000 cases from a random base seed
    python benchmarks/fuzz.py 100000 --seed 7   # cases 7, 8, ... (case i uses seed + i)
    python benchmarks/fuzz.py 1 --seed 1234     # just the case of seed 1234

It prints cases/s and how the cases ended, per fuzzer. Exit status 1 on a failure.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import time
import traceback
from collections import Counter, deque

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
    MAX_PARTS,
    MESSAGE,
    PING,
    PREFIX,
    REJECT,
    Frame,
    FrameDecoder,
    FrameOpener,
    FrameSealer,
    Handshake,
    encode,
)

MiB = 1 << 20
LIMIT = 2 * MiB  # max_message_size once authenticated
KEY = bytes(range(32))
NONCE_C = bytes(range(32))
NONCE_S = bytes(range(100, 132))
LENGTHS = [0, 1, 31, 32, 33, 100, HANDSHAKE_MAX_MESSAGE, HANDSHAKE_MAX_MESSAGE + 1, LARGE_PART,
           LARGE_PART + 1, MiB, LIMIT, LIMIT + 1, 2**63, 2**64 - 1]


class Violation(Exception):
    """An invariant of the protocol does not hold."""


def check(condition, message: str) -> None:
    if not condition:
        raise Violation(message)


# every large part buffer the decoders allocate, per case
ALLOCATED: list[int] = []
_allocate = protocol._allocate


def _recording_allocate(size):
    ALLOCATED.append(size)
    return _allocate(size)


protocol._allocate = _recording_allocate


def wire(chunks) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def frame_bytes(kind: int, main: bytes = b"") -> bytes:
    return wire(encode(kind, main))


def kinds(written) -> set:
    return {KIND_NAMES.get(data[0], data[0]) for data in written}


def junk(rng: random.Random) -> bytes:
    """Bytes that look like frames now and then: headers with odd lengths, plain frames, noise."""
    out = []
    for _ in range(rng.randint(0, 12)):
        what = rng.randrange(4)
        if what == 0:
            out.append(rng.randbytes(rng.randint(0, 64)))
        elif what == 1:
            nparts = rng.choice([0, 0, 1, 2, 3, 0xFFFF])
            head = PREFIX.pack(rng.randint(0, 9), rng.randint(0, 255), nparts, rng.choice(LENGTHS))
            out.append(head + b"".join(struct.pack("<Q", rng.choice(LENGTHS)) for _ in range(min(nparts, 3))))
        elif what == 2:
            out.append(frame_bytes(rng.randint(0, 9), rng.randbytes(rng.randint(0, 200))))
        else:
            out.append(rng.choice([b"\x00" * 1000, b"\xff" * 1000, b'{"nonce": "' + b"ab" * 16 + b'"}']))
    return b"".join(out)


def receive(decoder: FrameDecoder, data: bytes, rng: random.Random, frames: list) -> None:
    """Receive through get_buffer / buffer_updated in random reads, draining one-frame decoders;
    the frames go to ``frames`` as they come."""
    view = memoryview(data)
    most = rng.choice([1, 7, 100, 3000, 70_000, 1 << 22])
    least = len(data) // 256
    while view:
        buf = decoder.get_buffer(-1)
        check(len(buf) > 0 and not buf.readonly, "get_buffer offered no writable room")
        n = min(len(buf), len(view), max(least, rng.randint(1, most)))
        buf[:n] = view[:n]
        view = view[n:]
        got = decoder.buffer_updated(n)
        while got:
            frames += got
            got = decoder.buffer_updated(0) if decoder.one_frame else []


def handshake_decoder() -> FrameDecoder:
    decoder = FrameDecoder(HANDSHAKE_MAX_MESSAGE, HANDSHAKE_BUFFER, kinds=HANDSHAKE_KINDS, max_parts=0)
    decoder.one_frame = True
    return decoder


class Side:
    """One end of a connection, driven the way the transport drives the cores."""

    def __init__(self, hs: Handshake, greeting: bytes | None = None):
        self.hs = hs
        self.greeting = greeting
        self.decoder = handshake_decoder()
        self.out: list[bytes] = []
        self.written: list[bytes] = []
        self.got: list[Frame] = []
        self.received: list[Frame] = []
        self.sealed_in: list[Frame] = []  # read through the sealed decoder
        self.sealed_out: list[bytes] = []  # written sealed
        self.error: Exception | None = None
        self._sealed = 0
        self._write(hs.start())

    def deliver(self, data) -> None:
        if self.error is not None:
            return
        data = memoryview(data)
        try:
            while data:
                buf = self.decoder.get_buffer(-1)
                check(len(buf) > 0, "get_buffer offered no room")
                n = min(len(buf), len(data))
                buf[:n] = data[:n]
                data = data[n:]
                frames = self.decoder.buffer_updated(n)
                while frames:
                    one_at_a_time = self.decoder.one_frame
                    for frame in frames:
                        self.got.append(frame)
                        if self.decoder.opener is not None:
                            self.sealed_in.append(frame)
                        self._on_frame(frame)
                    frames = self.decoder.buffer_updated(0) if one_at_a_time else []
        except HandshakeError as exc:
            self.error = exc
            if exc.reject:
                self._write(exc.reject)
        except ProtocolError as exc:
            self.error = exc

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
            decoder.max_message_size = LIMIT
            decoder.kinds = frozenset(KIND_NAMES)
            decoder.max_parts = MAX_PARTS
            decoder.resize(1 << 18)
        if hs.done:
            decoder.one_frame = False
            if self.greeting is not None:
                self._write(hs.sealer.seal(MESSAGE, self.greeting))

    def _write(self, chunks) -> None:
        data = wire(chunks)
        self.out.append(data)
        self.written.append(data)
        sealed = self.hs.sealer.seq if self.hs.sealer else 0
        if sealed > self._sealed:
            self._sealed = sealed
            self.sealed_out.append(data)


# -- the fuzzers --------------------------------------------------------------------------------------


def fuzz_handshake_decoder(rng: random.Random) -> str:
    decoder = handshake_decoder()
    decoder.one_frame = rng.random() < 0.5
    buffer = decoder.get_buffer().obj
    frames: list = []
    outcome = "frames"
    try:
        receive(decoder, junk(rng), rng, frames)
    except ProtocolError:
        outcome = "ProtocolError"
    for frame in frames:
        check(frame.kind in HANDSHAKE_KINDS and not frame.parts, f"{frame!r} passed the handshake limits")
        check(len(frame.main) <= HANDSHAKE_MAX_MESSAGE, f"{frame!r} is over the handshake size")
    check(not ALLOCATED, f"allocated {ALLOCATED} before authentication")
    check(decoder.get_buffer().obj is buffer and len(buffer) == HANDSHAKE_BUFFER, "the buffer grew")
    return outcome


def fuzz_sealed_decoder(rng: random.Random) -> str:
    decoder = FrameDecoder(LIMIT)
    decoder.seal(FrameOpener(KEY))
    outcome = "waiting"
    frames: list = []
    try:
        receive(decoder, junk(rng), rng, frames)
    except ProtocolError:
        outcome = "ProtocolError"
    check(frames == [], "a sealed decoder handed out an unsealed frame")
    check(all(LARGE_PART < size <= LIMIT for size in ALLOCATED), f"allocated {ALLOCATED}")
    check(sum(ALLOCATED) <= LIMIT, f"allocated {sum(ALLOCATED)} bytes for frames that never completed")
    return outcome


def _mutate(rng: random.Random, frames: list[bytes]) -> bytes:
    frames = list(frames)
    for _ in range(rng.choice([0, 0, 1, 2])):
        if not frames:
            break
        i = rng.randrange(len(frames))
        what = rng.randrange(4)
        if what == 0:  # a frame again, elsewhere
            frames.insert(rng.randrange(len(frames) + 1), frames[i])
        elif what == 1:
            del frames[i]
        elif what == 2:
            if i + 1 < len(frames):
                frames[i], frames[i + 1] = frames[i + 1], frames[i]
        else:  # a bit near the start of a frame: its header
            data = bytearray(frames[i])
            data[rng.randrange(min(len(data), 16))] ^= 1 << rng.randrange(8)
            frames[i] = bytes(data)
    out = bytearray(b"".join(frames))
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        if not out:
            break
        pos = rng.randrange(len(out))
        what = rng.randrange(4)
        if what == 0:
            out[pos] ^= 1 << rng.randrange(8)
        elif what == 1:
            out[pos:pos] = rng.randbytes(rng.randint(1, 20))
        elif what == 2:
            del out[pos:pos + rng.randint(1, 40)]
        else:
            out[pos:pos] = out[pos:pos + rng.randint(1, 200)]
    if rng.random() < 0.1:
        del out[rng.randrange(len(out) + 1):]  # cut
    return bytes(out)


def fuzz_sealed_stream(rng: random.Random) -> str:
    sealer = FrameSealer(KEY)
    sent = []
    for _ in range(rng.randint(1, 5)):
        main = rng.randbytes(rng.choice([0, 1, 300, LARGE_PART, LARGE_PART + 1, 100_000]))
        parts = [rng.randbytes(rng.choice([0, 1, 100, LARGE_PART, LARGE_PART + 1, 150_000]))
                 for _ in range(rng.choice([0, 0, 1, 2, 3]))]
        sent.append((rng.choice(sorted(KIND_NAMES)), rng.randint(0, 255), main, parts))
    sealed = []
    for kind, flags, main, parts in sent:
        if flags == 0 and rng.random() < 0.3:
            sealed.append(wire(sealer.seal_stream(kind, main, parts, rng.choice([1000, 4096, LARGE_PART]))))
        else:
            sealed.append(wire(sealer.seal(kind, main, parts, flags)))
    data = b"".join(sealed)
    altered = _mutate(rng, sealed)
    decoder = FrameDecoder(LIMIT)
    decoder.seal(FrameOpener(KEY))
    frames: list = []
    error = None
    try:
        receive(decoder, altered, rng, frames)
    except ProtocolError as exc:
        error = exc
    got = [(f.kind, f.flags, bytes(f.main), [bytes(p) for p in f.parts]) for f in frames]
    check(got == sent[:len(got)], "a frame came out that was not sealed in this place")
    check(all(size <= LIMIT for size in ALLOCATED), f"allocated {ALLOCATED}")
    if altered == data:
        check(got == sent and error is None and not decoder.pending, "the unaltered stream was refused")
        return "intact"
    if data.startswith(altered):
        check(error is None, "a cut stream raised")
        return "cut"
    check(got != sent or decoder.pending or error is not None, "an altered stream passed")
    return "ProtocolError" if error is not None else "waiting"


def fuzz_handshake_junk(rng: random.Random) -> str:
    role = rng.choice(["client", "server"])
    side = Side(Handshake(role, b"k", "c", {"name": "me"}, nonce=NONCE_C))
    peer = Handshake("server" if role == "client" else "client", b"k", "c", {"name": "p"}, nonce=NONCE_S)
    data = (wire(peer.start()) if rng.random() < 0.7 else b"") + junk(rng)
    pos = 0
    while pos < len(data):
        n = rng.randint(1, rng.choice([1, 50, 5000]))
        side.deliver(data[pos:pos + n])
        pos += n
    check(not side.hs.verified and not side.hs.done, "verified a peer that sent junk")
    allowed = {"HELLO", "REJECT"} | ({"AUTH"} if role == "client" else set())
    check(kinds(side.written) <= allowed, f"a {role} wrote {kinds(side.written)} to junk")
    return type(side.error).__name__ if side.error else "waiting"


def _meddle(rng: random.Random, queues: dict, seen: list, deliver, name: str | None = None) -> None:
    name = name or rng.choice("cs")
    queue = queues[name]
    what = rng.choice(["deliver"] * 6 + ["flip", "drop", "dup", "reflect", "swap", "truncate", "inject",
                                          "forge", "replay"])
    if what == "inject":
        queue.appendleft(rng.randbytes(rng.randint(0, 40)))
    elif what == "forge":
        kind = rng.choice([HELLO, AUTH, AUTH_OK, REJECT, CLOSE, MESSAGE, PING])
        queue.appendleft(frame_bytes(kind, rng.randbytes(rng.randint(0, 60))))
    elif what == "replay":
        queue.appendleft(rng.choice(seen))
    elif not queue:
        return
    elif what == "deliver":
        deliver(name, rng.choice([None, rng.randint(1, 200)]))
    elif what == "flip":
        data = bytearray(queue[0])
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        queue[0] = bytes(data)
    elif what == "reflect":  # back to its sender
        queues["s" if name == "c" else "c"].appendleft(queue[0])
    elif what == "drop":
        queue.popleft()
    elif what == "dup":
        queue.appendleft(queue[0])
    elif what == "swap":
        if len(queue) > 1:
            queue[0], queue[1] = queue[1], queue[0]
    else:
        queue[0] = queue[0][:rng.randint(0, 120)]


def _frames_of(written: list[bytes]) -> list:
    out = []
    for data in written:
        kind, _, _, main_len = PREFIX.unpack_from(data)
        out.append((kind, data[PREFIX.size:PREFIX.size + main_len]))
    return out


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


def fuzz_meddled_handshake(rng: random.Random) -> str:
    wrong_secret = rng.random() < 0.2
    refuse = rng.choice([None] * 8 + ["c", "s"])
    # free: random alterations anywhere; targeted: an alteration of one frame of a given sender and kind
    mode = rng.choice(["free", "free", "targeted", "targeted", "none"])
    meddle = mode != "none"

    def check_peer(name):
        def check_peer(info):
            if refuse == name:
                raise HandshakeError(f"{name} refuses")
        return check_peer

    client = Handshake("client", b"k", "c", {"name": "a"}, nonce=NONCE_C, check_peer=check_peer("c"))
    server = Handshake("server", b"x" if wrong_secret else b"k", "c", {"name": "b"}, nonce=NONCE_S,
                       check_peer=check_peer("s"))
    sides = {"c": Side(client, greeting=b"from a"), "s": Side(server, greeting=b"from b")}
    queues: dict[str, deque] = {"c": deque(), "s": deque()}
    seen: list[bytes] = []

    def collect():
        for name, side in sides.items():
            queues[name].extend(side.out)
            seen.extend(side.out)
            side.out.clear()

    def deliver(name, n=None):
        data = queues[name].popleft()
        if n is not None and n < len(data):
            queues[name].appendleft(data[n:])
            data = data[:n]
        sides["s" if name == "c" else "c"].deliver(data)
        collect()

    collect()
    step_rate = rng.random()
    if mode == "targeted":
        targets = [(rng.choice("cs"), rng.choice([HELLO, AUTH, AUTH_OK, MESSAGE, REJECT]))
                   for _ in range(rng.randint(1, 3))]
        for _ in range(100):
            ready = [name for name in rng.sample("cs", 2) if queues[name]]
            if not ready:
                break
            name = ready[0]
            for target in [t for t in targets if t[0] == name and queues[name][0][:1] == bytes([t[1]])]:
                targets.remove(target)
                _meddle(rng, queues, seen, deliver, name)
            if queues[name]:
                deliver(name)
    for _ in range(rng.randint(0, 25) if mode != "targeted" else 0):
        if meddle:
            _meddle(rng, queues, seen, deliver)
            if rng.random() < step_rate:  # and a whole frame as sent: the handshake moves on
                ready = [name for name in rng.sample("cs", 2) if queues[name]]
                if ready:
                    deliver(ready[0])
        else:
            name = rng.choice("cs")
            if queues[name]:
                deliver(name, rng.choice([None, rng.randint(1, 200)]))
    for _ in range(1000):
        ready = [name for name in "cs" if queues[name]]
        if not ready:
            break
        deliver(ready[0])
    else:
        raise Violation("the wire did not settle")

    c, s = sides["c"], sides["s"]
    for side, peer in ((c, s), (s, c)):
        got = [(f.kind, bytes(f.main)) for f in side.sealed_in]
        check(got == _frames_of(peer.sealed_out)[:len(got)], "a sealed frame came out that was not sent so")
        check(not side.sealed_out or peer.hs._keys == side.hs._keys[::-1],
              "sealed frames went to a peer without the keys")
    if not server.verified:
        check(kinds(s.written) <= {"HELLO", "REJECT"}, "the server answered a client that proved nothing")
    if client.done:
        check(server.verified and server._keys == client._keys[::-1], "client done, server keys differ")
    if server.done:
        check(client.done and client._keys == server._keys[::-1], "server done, client keys differ")
    if wrong_secret:
        check(not client.verified and not server.verified, "verified without the secret")
    if not meddle:
        expected = UNDISTURBED[wrong_secret, refuse]
        check([c.error and str(c.error), s.error and str(s.error)] == list(expected),
              f"undisturbed, the handshake ended with {c.error!r} and {s.error!r}")
    if client.done and server.done and c.error is None and s.error is None:
        for side, peer in ((c, s), (s, c)):
            got = [(f.kind, bytes(f.main)) for f in side.got]
            check(got == _frames_of(peer.written)[:len(got)], "done over altered frames")
        check(not wrong_secret and refuse is None, "done although refused")
        if not meddle:
            check([f.main for f in c.received] == [b"from b"] and [f.main for f in s.received] == [b"from a"],
                  "the first sealed messages did not arrive")
        return "done"
    if isinstance(c.error, HandshakeError) or isinstance(s.error, HandshakeError):
        return "refused"
    if c.error is not None or s.error is not None:
        return "ProtocolError"
    return "waiting"


FUZZERS = {
    "handshake-decoder": fuzz_handshake_decoder,
    "sealed-decoder": fuzz_sealed_decoder,
    "sealed-stream": fuzz_sealed_stream,
    "handshake-junk": fuzz_handshake_junk,
    "meddled-handshake": fuzz_meddled_handshake,
}


def run_case(seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    name = rng.choice(list(FUZZERS))
    ALLOCATED.clear()
    return name, FUZZERS[name](rng)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", type=int, help="how many random cases to run")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first case (default: random)")
    args = parser.parse_args(argv)
    base = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    print(f"fuzzing the protocol cores: {args.cases} cases from seed {base}", flush=True)
    outcomes: Counter = Counter()
    start = time.perf_counter()
    last = start
    for i in range(args.cases):
        seed = base + i
        try:
            name, outcome = run_case(seed)
        except Exception:
            traceback.print_exc()
            print(f"\nFAILED at case {i + 1} (seed {seed}); reproduce with:\n"
                  f"    python benchmarks/fuzz.py 1 --seed {seed}", file=sys.stderr)
            return 1
        outcomes[name, outcome] += 1
        now = time.perf_counter()
        if now - last > 10:
            print(f"  {i + 1} cases, {(i + 1) / (now - start):,.0f} cases/s", file=sys.stderr, flush=True)
            last = now
    elapsed = time.perf_counter() - start
    print(f"{args.cases} cases in {elapsed:.1f} s: {args.cases / elapsed:,.0f} cases/s, no failure")
    for name in FUZZERS:
        counts = {outcome: n for (fuzzer, outcome), n in sorted(outcomes.items()) if fuzzer == name}
        total = sum(counts.values())
        detail = ", ".join(f"{outcome} {n}" for outcome, n in counts.items())
        print(f"  {name:18} {total:7}  {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
