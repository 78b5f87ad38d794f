"""The figures behind the choice of frame MAC (bndl_like.rmi.protocol), measured in one process.

Each candidate authenticates what a sealed frame needs: a 100-byte frame with a sequence
number (the cost per small call, paid twice per message: seal and open), and 64 MiB fed in
1 MiB steps (as a large out-of-band part streams). Keys are set up once per connection,
as the protocol does; per-frame work (a one-time key for Poly1305, a new GCM nonce) is counted.

Candidates: HMAC-SHA256 (hashlib/hmac), keyed BLAKE2b (hashlib), Poly1305 with a one-time
key per frame derived with BLAKE2b (cryptography), AES-256-GMAC (cryptography's GCM with the
frame as associated data), and the protocol's own FrameSealer as used on the wire.

    python benchmarks/mac.py            # a table
    python benchmarks/mac.py --json
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import struct
import sys
import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

MIB = 1 << 20
SEQ = struct.Struct("<Q")
KEY = os.urandom(32)
SMALL = os.urandom(100)
STEP = MIB


def best_of(fn, repeat: int, number: int) -> float:
    """Best seconds per call of ``fn`` over ``repeat`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def candidates(big: memoryview) -> dict:
    steps = [big[o:o + STEP] for o in range(0, big.nbytes, STEP)]
    hmac_base = hmac.new(KEY, digestmod="sha256")
    blake_base = hashlib.blake2b(key=KEY, digest_size=16)
    otk_base = hashlib.blake2b(key=KEY, digest_size=32, person=b"bndl-poly1305")
    counter = iter(range(1 << 62))

    def copied_state(base):
        def frame(chunks) -> bytes:
            h = base.copy()
            h.update(SEQ.pack(next(counter)))
            for chunk in chunks:
                h.update(chunk)
            return h.digest()
        return frame

    hmac_frame, blake_frame = copied_state(hmac_base), copied_state(blake_base)

    def poly_frame(chunks) -> bytes:
        otk = otk_base.copy()
        otk.update(SEQ.pack(next(counter)))
        mac = Poly1305(otk.digest())
        for chunk in chunks:
            mac.update(chunk)
        return mac.finalize()

    def gmac_frame(chunks) -> bytes:
        encryptor = Cipher(algorithms.AES(KEY), modes.GCM(struct.pack("<4xQ", next(counter)))).encryptor()
        for chunk in chunks:
            encryptor.authenticate_additional_data(chunk)
        encryptor.finalize()
        return encryptor.tag

    from bndl_like.rmi import protocol

    sealer = protocol.FrameSealer(KEY)

    def protocol_small():
        return sealer.seal(protocol.MESSAGE, SMALL)

    def protocol_large():
        for _ in sealer.seal_stream(protocol.MESSAGE, b"", [big], STEP):
            pass

    table = {}
    for name, frame in (("HMAC-SHA256", hmac_frame), ("keyed BLAKE2b", blake_frame),
                        ("Poly1305, one-time key", poly_frame), ("AES-256-GMAC", gmac_frame)):
        table[name] = (lambda f=frame: f((SMALL,)), lambda f=frame: f(steps))
    table["protocol FrameSealer (as used)"] = (protocol_small, protocol_large)
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    big = memoryview(os.urandom(64 * MIB))
    results = {}
    for name, (small, large) in candidates(big).items():
        small_us = best_of(small, 5, 20_000) * 1e6
        large_s = best_of(large, 3, 1)
        results[name] = {"frame_100B_us": small_us, "mib_s_64MiB": 64 / large_s}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'MAC':<34} {'100-byte frame':>15} {'64 MiB':>14}")
    for name, figures in results.items():
        print(f"{name:<34} {figures['frame_100B_us']:>12.2f} µs {figures['mib_s_64MiB']:>8,.0f} MiB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
