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
from collections import Counter

from bndl_like.rmi.protocol import KIND_NAMES, LARGE_PART, PREFIX, FrameSealer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.rmi import protocol_drive as drive  # noqa: E402


class Violation(Exception):
    """An invariant of the protocol does not hold."""


def check(condition, message: str) -> None:
    if not condition:
        raise Violation(message)


def junk(rng: random.Random) -> bytes:
    """Bytes that look like frames now and then: headers with odd lengths, plain frames, noise."""
    out = []
    for _ in range(rng.randint(0, 12)):
        what = rng.randrange(4)
        if what == 0:
            out.append(rng.randbytes(rng.randint(0, 64)))
        elif what == 1:
            nparts = rng.choice(drive.NPARTS)
            head = PREFIX.pack(rng.randint(0, 9), rng.randint(0, 255), nparts, rng.choice(drive.LENGTHS))
            lengths = [rng.choice(drive.LENGTHS) for _ in range(min(nparts, 3))]
            out.append(head + b"".join(struct.pack("<Q", n) for n in lengths))
        elif what == 2:
            out.append(drive.frame_bytes(rng.randint(0, 9), rng.randbytes(rng.randint(0, 200))))
        else:
            out.append(rng.choice(drive.NOISE))
    return b"".join(out)


def reads(rng: random.Random):
    """Reads of random sizes, up to a bound drawn now."""
    most = rng.choice([1, 7, 100, 3000, 70_000, 1 << 22])
    return iter(lambda: rng.randint(1, most), None)


# -- the fuzzers --------------------------------------------------------------------------------------


def fuzz_handshake_decoder(rng: random.Random) -> str:
    return drive.check_handshake_decoder(rng.random() < 0.5, junk(rng), reads(rng))


def fuzz_sealed_decoder(rng: random.Random) -> str:
    return drive.check_sealed_decoder(junk(rng), reads(rng))


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
    sealer = FrameSealer(drive.KEY)
    sent = []
    for _ in range(rng.randint(1, 5)):
        main = rng.randbytes(rng.choice(drive.MAIN_SIZES))
        parts = [rng.randbytes(rng.choice(drive.PART_SIZES))
                 for _ in range(rng.choice([0, 0, 1, 2, 3]))]
        sent.append((rng.choice(sorted(KIND_NAMES)), rng.randint(0, 255), main, parts))
    sealed = []
    for kind, flags, main, parts in sent:
        if flags == 0 and rng.random() < 0.3:
            step = rng.choice([1000, 4096, LARGE_PART])
            sealed.append(drive.wire(sealer.seal_stream(kind, main, parts, step)))
        else:
            sealed.append(drive.wire(sealer.seal(kind, main, parts, flags)))
    return drive.check_sealed_stream(sent, sealed, _mutate(rng, sealed), reads(rng))


def fuzz_handshake_junk(rng: random.Random) -> str:
    role = rng.choice(["client", "server"])
    hello = rng.random() < 0.7
    pieces = iter(lambda: rng.randint(1, rng.choice([1, 50, 5000])), None)
    return drive.check_handshake_on_junk(role, hello, junk(rng), pieces)


def _meddle(rng: random.Random, m: drive.Meddler, name: str | None = None) -> None:
    name = name or rng.choice("cs")
    queue = m.queues[name]
    what = rng.choice(["deliver"] * 6 + ["flip", "drop", "dup", "reflect", "swap", "truncate", "inject",
                                          "forge", "replay"])
    if what == "inject":
        args = (rng.randbytes(rng.randint(0, 40)),)
    elif what == "forge":
        kind = rng.choice(drive.FORGED_KINDS)
        args = (kind, rng.randbytes(rng.randint(0, 60)))
    elif what == "replay":
        args = (rng.randrange(len(m.seen)),)
    elif not queue:
        return
    elif what == "deliver":
        args = (rng.choice([None, rng.randint(1, 200)]),)
    elif what == "flip":
        args = (rng.randrange(len(queue[0])), rng.randrange(8)) if queue[0] else (0, 0)
    elif what == "truncate":
        args = (rng.randint(0, 120),)
    else:
        args = ()
    m.apply((what, name, *args))


def fuzz_meddled_handshake(rng: random.Random) -> str:
    wrong_secret = rng.random() < 0.2
    refuse = rng.choice([None] * 8 + ["c", "s"])
    # free: random alterations anywhere; targeted: an alteration of one frame of a given sender and kind
    mode = rng.choice(["free", "free", "targeted", "targeted", "none"])
    meddle = mode != "none"
    m = drive.Meddler(server_secret=b"x" if wrong_secret else b"k", refuse=refuse)
    queues = m.queues
    step_rate = rng.random()
    if mode == "targeted":
        targets = [(rng.choice("cs"), rng.choice(drive.TARGET_KINDS))
                   for _ in range(rng.randint(1, 3))]
        for _ in range(100):
            ready = [name for name in rng.sample("cs", 2) if queues[name]]
            if not ready:
                break
            name = ready[0]
            for target in [t for t in targets if t[0] == name and queues[name][0][:1] == bytes([t[1]])]:
                targets.remove(target)
                _meddle(rng, m, name)
            if queues[name]:
                m.deliver(name)
    for _ in range(rng.randint(0, 25) if mode != "targeted" else 0):
        if meddle:
            _meddle(rng, m)
            if rng.random() < step_rate:  # and a whole frame as sent: the handshake moves on
                ready = [name for name in rng.sample("cs", 2) if queues[name]]
                if ready:
                    m.deliver(ready[0])
        else:
            name = rng.choice("cs")
            if queues[name]:
                m.deliver(name, rng.choice([None, rng.randint(1, 200)]))
    m.drain()
    outcome = drive.check_outcome(m, wrong_secret)
    c, s = m.sides["c"], m.sides["s"]
    if not meddle:
        expected = drive.UNDISTURBED[wrong_secret, refuse]
        check([c.error and str(c.error), s.error and str(s.error)] == list(expected),
              f"undisturbed, the handshake ended with {c.error!r} and {s.error!r}")
    if outcome == "done":
        check(not wrong_secret and refuse is None, "done although refused")
        if not meddle:
            check([f.main for f in c.received] == [b"from b"] and [f.main for f in s.received] == [b"from a"],
                  "the first sealed messages did not arrive")
    return outcome


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
