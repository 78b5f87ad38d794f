"""Every alteration a meddler can make, on every frame of an undisturbed handshake, once each.

The deterministic counterpart of the meddler fuzzers of test_protocol_fuzz.py: there hypothesis
combines alterations at random; here each of them lands on each frame either side sends (both
HELLOs, both AUTHs, the client's sealed AUTH_OK and the sealed greeting each side sends once done),
and each run must keep the invariants of ``check_outcome``. What alters the bytes of the frame
always keeps the handshake from completing.
"""

from __future__ import annotations

import pytest

from bndl_like.rmi.protocol import AUTH, AUTH_OK, CLOSE, HELLO, MESSAGE, PING, REJECT

from .protocol_drive import FORGED_KINDS, Meddler, check_outcome, frame_bytes

# what each side sends when nothing is altered
SENT = {"c": [HELLO, AUTH, AUTH_OK, MESSAGE], "s": [HELLO, AUTH, MESSAGE]}

ALTERING = {  # what alters the frame it lands on: the handshake may not complete over it
    "flip the kind": ("flip", 0, 0),
    "flip the flags": ("flip", 1, 0),
    "flip the part count": ("flip", 2, 0),
    "flip the length": ("flip", 4, 1),
    "flip the length's top bit": ("flip", 11, 7),
    "flip the first main byte": ("flip", 12, 5),
    "flip the last byte": ("flip", -1, 0),
    "truncate to nothing": ("truncate", 0),
    "truncate to the header": ("truncate", 12),
    "truncate by one byte": ("truncate", -1),
    "inject junk": ("inject", b"\x00" * 20),
    "inject a PING": ("inject", frame_bytes(PING)),
    "inject a CLOSE": ("inject", frame_bytes(CLOSE)),
    "inject a REJECT": ("inject", frame_bytes(REJECT, b'{"reason": "forged"}')),
    "drop": ("drop",),
    "dup": ("dup",),
    "reflect": ("reflect",),
    **{f"forge a {kind}": ("forge", kind, b'{"a": 1}') for kind in FORGED_KINDS},
    **{f"replay frame {i}": ("replay", i) for i in range(6)},
}
HARMLESS = {  # the frame as sent, in pieces or behind the next one: the handshake completes
    "deliver 1 byte": ("deliver", 1),
    "deliver 13 bytes": ("deliver", 13),
    "deliver it whole": ("deliver", 1 << 20),
}


def run(side: str, kind: int, action: tuple) -> tuple[Meddler, bool]:
    """The handshake frame by frame (the client's first), ``action`` applied once to the first
    frame of ``kind`` that ``side`` is about to deliver. Returns the meddler and whether it fired."""
    m = Meddler()
    fired = False
    for _ in range(100):
        ready = [name for name in "cs" if m.queues[name]]
        if not ready:
            break
        name = ready[0]
        if not fired and name == side and m.queues[name][0][:1] == bytes([kind]):
            fired = True
            what, *args = action
            if what == "truncate" and args[0] < 0:
                args = [len(m.queues[name][0]) + args[0]]
            m.apply((what, name, *args))
        if m.queues[name]:
            m.deliver(name)
    m.drain()
    return m, fired


NAMES = {HELLO: "HELLO", AUTH: "AUTH", AUTH_OK: "AUTH_OK", MESSAGE: "greeting"}


@pytest.mark.parametrize("side, kind", [
    pytest.param(side, kind, id=f"{'client' if side == 'c' else 'server'} {NAMES[kind]}")
    for side in SENT for kind in SENT[side]])
def test_each_alteration_of_each_frame(side, kind):
    for name, action in {**ALTERING, **HARMLESS}.items():
        m, fired = run(side, kind, action)
        assert fired, f"{name}: no {kind} frame from {side}"
        outcome = check_outcome(m, False)  # the invariants of every run
        c, s = m.sides["c"], m.sides["s"]
        if name in HARMLESS:
            assert outcome == "done", name
            assert [f.main for f in c.received] == [b"from b"] and [f.main for f in s.received] == [b"from a"]
        elif kind == MESSAGE:  # after the handshake: the greeting as sent, once, or nothing
            receiver, greeting = (s, b"from a") if side == "c" else (c, b"from b")
            got = [f.main for f in receiver.received]
            assert got in ([], [greeting]), name
            if action[0] in ("flip", "truncate", "inject", "forge", "drop"):
                assert got == [], name
        else:
            assert outcome != "done", f"{name}: the handshake completed without an error"
