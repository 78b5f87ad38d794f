"""Attacks on the RMI layer with real sockets and processes on the loopback interface.

A relay in the middle injects, alters, replays and reorders frames; floods of idle
connections, parsing limits before authentication, log flooding, malformed envelopes
and a pipelined HELLO. Every socket opened here is closed in a ``finally``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import os
import pickle
import socket
import struct
import time

import numpy
import pytest

from bndl_like.rmi import HandshakeError, NotConnected, protocol, serialize
from bndl_like.rmi.connection import FAILURE, NOTICE, REQUEST, RESPONSE, Connection
from bndl_like.rmi.protocol import HELLO, MESSAGE, PING, PREFIX, REJECT, Handshake

from ..conftest import TEST_SECRET, wait_for_condition
from .rawclient import UPGRADE_REQUEST, RawClient
from .relay import TO_CLIENT, TO_SERVER, Relay
from .test_security import LeavesAFile

WORKER = "worker-1"
NODE_LOG = "bndl_like.rmi"
FLOOD = 800  # idle connections: > 3x the node's cap of unauthenticated ones (256), > 6x per source (64)
REFUSALS = 200  # refused attempts, of which the refusal log makes a handful of lines


def source(i: int) -> str:
    """The loopback address connection ``i`` of a flood comes from: half from 127.0.0.1 (which
    meets the per-source cap), the rest from 127.0.0.2-8 (the whole 127/8 is loopback), so that
    the total cap is met too."""
    return "127.0.0.1" if i % 2 else f"127.0.0.{2 + (i // 2) % 7}"


def raw_client(address: str) -> RawClient:
    """A RawClient whose small writes go out at once (no Nagle delay between HELLO and AUTH)."""
    client = RawClient(address)
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def host_port(address: str) -> tuple[str, int]:
    host, port = address[len("tcp://"):].rsplit(":", 1)
    return host, int(port)


class Echo:
    def echo(self, value):
        return value


# -- a driver talking to a worker process through a relay --------------------------------------------


@pytest.fixture
async def relayed(make_node, spawn_peer):
    """(driver, worker process, relay, link, peer): the driver reaches the worker through the relay."""
    driver = await make_node("driver")
    worker = spawn_peer(WORKER)
    async with Relay(worker.address) as relay:
        peer = await asyncio.wait_for(driver.connect(relay.address), 10)
        assert peer.name == WORKER
        assert len(relay.links) == 1
        link = relay.links[0]
        assert await asyncio.wait_for(peer.call("test", "echo", 1), 10) == 1
        # the handshake went through as it came, frame by frame and byte for byte
        assert link.kinds(TO_SERVER)[:3] == [protocol.HELLO, protocol.AUTH, protocol.AUTH_OK]
        assert link.kinds(TO_CLIENT)[:2] == [protocol.HELLO, protocol.AUTH]
        assert link.untouched()
        yield driver, worker, relay, link, peer


async def assert_cut_off(driver, link, closer: str) -> None:
    """The side the relay tampered towards (``closer``) closed; the driver lost the peer."""
    await asyncio.wait_for(link.done.wait(), 10)
    assert link.first_closed == closer, f"the {link.first_closed} closed first, not the {closer}"
    await wait_for_condition(lambda: WORKER not in driver.peers, message="the driver losing the worker")


async def assert_cluster_works(driver, worker, relay) -> None:
    """The driver reconnects to the worker directly, not through the relay, and calls succeed."""
    peer = await asyncio.wait_for(driver.peer(WORKER), 10)
    host, port = host_port(worker.address)
    assert peer.connection.remote == f"{host}:{port}"
    assert len(relay.links) == 1  # not through the relay
    assert await asyncio.wait_for(peer.call("test", "echo", "alive"), 10) == "alive"
    assert await asyncio.wait_for(peer.call("test", "peers"), 10) == ["driver"]


@pytest.mark.parametrize("towards", [TO_SERVER, TO_CLIENT], ids=["to-worker", "to-driver"])
@pytest.mark.parametrize("sealing", ["unsealed", "made-up-key"])
async def test_relay_cannot_inject_a_pickle(relayed, tmp_path, towards, sealing):
    driver, worker, relay, link, peer = relayed
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(LeavesAFile(marker), protocol=5)
    if sealing == "unsealed":
        chunks = protocol.encode(MESSAGE, payload)
    else:
        chunks = protocol.FrameSealer(os.urandom(32)).seal(MESSAGE, payload)
    link.inject(towards, chunks)
    # a call behind it: its bytes follow the injected frame (an unsealed frame's receiver
    # takes them for its tag); it must fail, as nothing behind the bad frame is read
    with pytest.raises(NotConnected):
        await asyncio.wait_for(peer.call("test", "echo", 2), 10)
    await assert_cut_off(driver, link, "server" if towards == TO_SERVER else "client")
    assert not marker.exists()
    await assert_cluster_works(driver, worker, relay)
    assert not marker.exists()


@pytest.mark.parametrize("towards", [TO_SERVER, TO_CLIENT], ids=["request", "response"])
@pytest.mark.parametrize("kind", ["bytes", "numpy"])
async def test_relay_flipping_a_bit_in_a_large_part(relayed, towards, kind):
    driver, worker, relay, link, peer = relayed
    if kind == "bytes":
        payload = os.urandom(3 << 20)
    else:
        payload = numpy.frombuffer(os.urandom(3 << 20), numpy.float64).copy()
    flipped = []

    def flip(frame):
        if frame.kind != MESSAGE or len(frame.lengths) < 2 or frame.lengths[1] < (1 << 20):
            return None
        link.rewrites[towards] = None
        raw = bytearray(frame.raw)
        at = frame.part_offset(0) + frame.lengths[1] // 2
        raw[at] ^= 0x10
        flipped.append(at)
        return [bytes(raw)]

    link.rewrites[towards] = flip
    with pytest.raises(NotConnected):
        await asyncio.wait_for(peer.call("test", "echo", payload), 20)
    assert flipped, "the relay saw no large part to alter"
    await assert_cut_off(driver, link, "server" if towards == TO_SERVER else "client")
    await assert_cluster_works(driver, worker, relay)


@pytest.mark.parametrize("towards", [TO_SERVER, TO_CLIENT], ids=["request", "response"])
async def test_relay_replaying_a_frame(relayed, tmp_path, towards):
    driver, worker, relay, link, peer = relayed
    ran = tmp_path / "ran"
    # a call that leaves a trace each time it runs
    assert await asyncio.wait_for(peer.call("test", "block", 0, str(ran)), 10) == 0
    assert ran.exists()
    ran.unlink()
    frame = link.last_sealed(towards)  # the request of that call, or its response
    link.inject(towards, [frame.raw])
    await assert_cut_off(driver, link, "server" if towards == TO_SERVER else "client")
    assert not ran.exists(), "the replayed request ran again"
    await assert_cluster_works(driver, worker, relay)


@pytest.mark.parametrize("towards", [TO_SERVER, TO_CLIENT], ids=["requests", "responses"])
async def test_relay_reordering_two_frames(relayed, towards):
    driver, worker, relay, link, peer = relayed
    held = []

    def swap(frame):
        if not held:
            if frame.kind != MESSAGE:
                return None
            held.append(frame)
            return []  # held back until the next frame has gone
        link.rewrites[towards] = None
        return [frame.raw, held[0].raw]

    link.rewrites[towards] = swap
    results = await asyncio.wait_for(asyncio.gather(
        peer.call("test", "echo", "first"), peer.call("test", "echo", "second"),
        return_exceptions=True), 10)
    assert held
    assert all(isinstance(r, NotConnected) for r in results), results
    await assert_cut_off(driver, link, "server" if towards == TO_SERVER else "client")
    await assert_cluster_works(driver, worker, relay)


# -- floods of idle connections ------------------------------------------------------------------------


@pytest.fixture
def open_files():
    """Raise this process's soft limit of open files to the hard one (restored after)."""
    import resource

    def need(count: int) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < count:
            pytest.skip(f"needs {count} open files; the hard limit is {hard}")
        if soft != resource.RLIM_INFINITY and soft < count:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield need
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


class Flood:
    """Idle connections to one port, from several loopback sources, opened concurrently."""

    def __init__(self, port: int, concurrency: int = 128):
        self.port = port
        self.socks: list[socket.socket] = []
        self.limit = asyncio.Semaphore(concurrency)
        self.opened = 0
        self.upgraded = 0  # answered 101 before the node dropped them
        self.dropped_early = 0  # reset while being opened (evicted at once)

    async def open(self, i: int, send: bytes = b"", upgrade: bool = False) -> None:
        loop = asyncio.get_running_loop()
        async with self.limit:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.socks.append(sock)
            sock.setblocking(False)
            try:
                sock.bind((source(i), 0))
                await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", self.port)), 10)
                if upgrade:
                    await loop.sock_sendall(sock, UPGRADE_REQUEST)
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
                        if not chunk:
                            break
                        head += chunk
                    if head.startswith(b"HTTP/1.1 101"):
                        self.upgraded += 1
                elif send:
                    await loop.sock_sendall(sock, send)
            except OSError:
                self.dropped_early += 1
            self.opened += 1

    async def wait_all_closed(self, timeout: float) -> None:
        """Every connection is closed by the other end (EOF or reset) within ``timeout``."""
        loop = asyncio.get_running_loop()

        async def closed(sock):
            while True:
                try:
                    if not await loop.sock_recv(sock, 1 << 16):
                        return
                except OSError:
                    return

        await asyncio.wait_for(asyncio.gather(*(closed(s) for s in self.socks)), timeout)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def watch_guard(guard) -> dict:
    """Record the most connections the pre-authentication guard ever held, in total and per source."""
    seen = {"total": 0, "per_source": 0}
    admit = guard.admit

    def counting_admit(transport, close):
        admit(transport, close)
        seen["total"] = max(seen["total"], len(guard))
        seen["per_source"] = max(seen["per_source"], max(guard._per_source.values(), default=0))

    guard.admit = counting_admit
    return seen


async def connect_and_call(driver, address: str, deadline: float) -> tuple[int, float]:
    """Connect and call until it works or ``deadline``; (attempts, seconds)."""
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            peer = await driver.connect(address)
            assert await asyncio.wait_for(peer.call("test", "echo", "through"), 5) == "through"
            return attempts, time.monotonic() - started
        except (NotConnected, HandshakeError):
            if time.monotonic() > deadline:
                raise


async def test_idle_connection_flood(make_node, open_files):
    """FLOOD idle connections, half of them from one address: three times the node's total cap of
    unauthenticated connections and six times its cap per source."""
    open_files(FLOOD * 2 + 1000)
    timeout = 0.5
    node = await make_node("target", node_type="worker", connect_timeout=timeout)
    node.add_service("test", Echo())
    guard = node._guard
    seen = watch_guard(guard)
    driver = await make_node("driver")
    flood = Flood(host_port(node.addresses[0])[1])
    halfway = asyncio.Event()

    async def run_flood():
        tasks = []
        for i in range(FLOOD):
            if i % 20 < 14:
                tasks.append(flood.open(i))
            elif i % 20 < 17:
                half = b"GET /rm" if i % 2 else b"GET /status HTTP/1."
                tasks.append(flood.open(i, send=half))
            else:
                tasks.append(flood.open(i, upgrade=True))
        pending = [asyncio.ensure_future(t) for t in tasks]
        await wait_for_condition(lambda: flood.opened >= FLOOD // 2, timeout=20, message="half the flood")
        halfway.set()
        await asyncio.gather(*pending)

    flooding = asyncio.ensure_future(run_flood())
    try:
        await asyncio.wait_for(halfway.wait(), 25)
        # in the middle of the flood a real node connects and calls
        attempts, took = await connect_and_call(driver, node.addresses[0], time.monotonic() + 5)
        assert took < 5, f"connecting took {took:.1f}s in {attempts} attempts"
        await asyncio.wait_for(flooding, 25)
        flood_done = time.monotonic()
        assert flood.opened == FLOOD
        # all open (as far as the flood knows): the driver still calls, a fresh dial works too
        assert await asyncio.wait_for(driver.peers["target"].call("test", "echo", 5), 5) == 5
        other = await make_node("other")
        attempts, took = await connect_and_call(other, node.addresses[0], time.monotonic() + 5)
        assert took < 5
        # the node closes every idle one: evicted at once or timed out after connect_timeout
        await flood.wait_all_closed(max(0.5, timeout + 3.0 - (time.monotonic() - flood_done)))
        await wait_for_condition(lambda: len(guard) == 0, timeout=5, message="the guard emptied")
    finally:
        flooding.cancel()
        await asyncio.gather(flooding, return_exceptions=True)
        flood.close()
    assert seen["total"] <= guard.max_total == 256
    assert seen["per_source"] <= guard.max_per_source == 64
    assert seen["total"] == guard.max_total, "the flood never reached the total cap"
    assert seen["per_source"] == guard.max_per_source, "the flood never reached the per-source cap"
    assert guard.evicted > 0 and guard.expired > 0
    assert flood.upgraded > 0
    assert await asyncio.wait_for(driver.peers["target"].call("test", "echo", 6), 5) == 6


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def test_upgraded_idle_connections_keep_memory_bounded(make_node, spawn_peer, open_files):
    if not os.path.exists(f"/proc/{os.getpid()}/status"):
        pytest.skip("needs /proc to read a process's resident memory")
    open_files(4000 + 1000)
    worker = spawn_peer(WORKER)
    driver = await make_node("driver")
    peer = await asyncio.wait_for(driver.connect(worker.address), 10)
    assert await asyncio.wait_for(peer.call("test", "echo", "warm"), 10) == "warm"
    before = rss_bytes(worker.pid)
    peak = before
    flood = Flood(host_port(worker.address)[1])
    try:
        for wave in range(8):
            await asyncio.wait_for(asyncio.gather(
                *(flood.open(wave * 500 + i, upgrade=True) for i in range(500))), 25)
            peak = max(peak, rss_bytes(worker.pid))
        assert flood.opened == 4000
        assert flood.upgraded > 0
        # the authenticated connection was never at risk
        assert await asyncio.wait_for(peer.call("test", "echo", "during"), 10) == "during"
    finally:
        flood.close()
    after = rss_bytes(worker.pid)
    growth = max(peak, after) - before
    assert growth < 32 << 20, f"the worker grew by {growth / (1 << 20):.1f} MiB"
    assert worker.proc.poll() is None
    assert await asyncio.wait_for(peer.call("test", "echo", "after"), 10) == "after"
    other = await make_node("other")
    fresh = await asyncio.wait_for(other.connect(worker.address), 10)
    assert await asyncio.wait_for(fresh.call("test", "echo", "new"), 10) == "new"


async def test_closed_unauthenticated_connections_are_freed_at_once(make_node, open_files):
    count = 400  # the node evicts at least 144 of them (its cap is 256)
    open_files(count * 2 + 1000)
    node = await make_node("target", node_type="worker")
    flood = Flood(host_port(node.addresses[0])[1])
    gc.collect()
    gc.disable()  # what is not freed by reference counting stays, and is counted below
    try:
        await asyncio.wait_for(asyncio.gather(*(flood.open(i, upgrade=True) for i in range(count))), 20)
        assert node._guard.evicted >= count - node._guard.max_total
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run
        closed = sum(1 for o in gc.get_objects()
                     if isinstance(o, Connection) and o.node is node and o.is_closed)
    finally:
        gc.enable()
        flood.close()
    assert closed <= 16, f"{closed} closed connections wait for the cyclic garbage collector"


# -- what an unauthenticated peer can make a node parse --------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("after_hello", [False, True], ids=["before-hello", "after-hello"])
async def test_pre_auth_frames_are_refused_from_the_header(spawn_peer, make_node, tmp_path, after_hello):
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("needs /proc to read a process's CPU time")
    worker = spawn_peer(WORKER)
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(LeavesAFile(marker), protocol=5)
    many = 4096
    cases = {
        "PING": protocol.encode(PING)[0],
        "MESSAGE header announcing 4096 parts": PREFIX.pack(MESSAGE, 0, many, len(evil)),
        "MESSAGE with 4096 parts of 1 GiB and a pickle": PREFIX.pack(MESSAGE, 0, many, len(evil))
        + struct.pack(f"<{many}Q", *[1 << 30] * many) + evil,
        "MESSAGE with 4096 small parts and a pickle": PREFIX.pack(MESSAGE, 0, many, len(evil))
        + struct.pack(f"<{many}Q", *[1] * many) + evil + b"x" * many,
        "HELLO header announcing 4096 parts": PREFIX.pack(HELLO, 0, many, 2),
        "HELLO of 1 TiB": PREFIX.pack(HELLO, 0, 0, 1 << 40),
    }

    def attack(data: bytes) -> tuple[bool, float]:
        client = raw_client(worker.address)
        try:
            client.upgrade()
            if after_hello:
                hs = Handshake("client", TEST_SECRET, "default", {"name": "raw-client"})
                client.send(hs.start())
            started = time.monotonic()
            client.sock.sendall(data)
            closed = client.is_closed_by_peer(timeout=4)
            return closed, time.monotonic() - started
        finally:
            client.close()

    cpu_before = cpu_seconds(worker.pid)
    for what, data in cases.items():
        closed, took = await asyncio.to_thread(attack, data)
        assert closed, f"{what}: the connection stayed open"
        # the node's connect_timeout is 5 s: closing well before is the header's doing
        assert took < 2.0, f"{what}: closed after {took:.2f}s"
    cpu = cpu_seconds(worker.pid) - cpu_before
    assert cpu < 0.5, f"the worker spent {cpu:.2f}s of CPU on {len(cases)} refused frames"
    assert not marker.exists()
    driver = await make_node("driver")
    peer = await asyncio.wait_for(driver.connect(worker.address), 10)
    assert await asyncio.wait_for(peer.call("test", "echo", "alive"), 10) == "alive"
    assert not marker.exists()


# -- the log under a flood of refusals, and peer text in it ---------------------------------------


def _wrong_secret(client):
    client.upgrade()
    error = client.handshake(b"wrong-secret-of-the-attacker-0123456789")
    assert isinstance(error, HandshakeError) and "authentication failed" in str(error), error


def _frame_before_auth(client):
    client.upgrade()
    client.send(protocol.encode(PING))
    assert client.is_closed_by_peer()


# what each attack makes the node log, once per attempt unless rate-limited
FLOODS = {"wrong-secret": (_wrong_secret, "refused connection from"),
          "frame-before-auth": (_frame_before_auth, "closing connection from")}


def attempts(address: str, count: int, attack, threads: int = 4) -> None:
    """``count`` connections running ``attack(client)``, from ``threads`` threads."""
    import concurrent.futures

    def one_thread(n):
        for _ in range(n):
            client = raw_client(address)
            try:
                attack(client)
            finally:
                client.close()

    share = [count // threads + (i < count % threads) for i in range(threads)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one_thread, share))


def log_lines(caplog, text: str = "refused connection from") -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def flood_refusals(make_node, caplog, flood: str, interval: float | None = None):
    """REFUSALS attempts of the ``flood`` at a fresh node (logging refusals every ``interval`` if given);
    the node, the lines it logged and how long it took."""
    attack, text = FLOODS[flood]
    caplog.set_level(logging.INFO, logger=NODE_LOG)
    node = await make_node("target", node_type="worker")
    if interval is not None:
        node.refusals.interval = node.refusals.max_interval = interval
    started = time.monotonic()
    await asyncio.to_thread(attempts, node.addresses[0], REFUSALS, attack)
    took = time.monotonic() - started
    return node, log_lines(caplog, text), took


@pytest.mark.parametrize("flood", FLOODS)
async def test_refusal_flood_logs_a_handful_of_lines(make_node, caplog, flood):
    node, lines, took = await flood_refusals(make_node, caplog, flood)
    # one line per source and 10 s: one line (two if the flood straddled a boundary)
    assert 1 <= len(lines) <= 1 + math.ceil(took / node.refusals.interval), \
        f"{len(lines)} lines for {REFUSALS} refusals in {took:.1f}s"


@pytest.mark.parametrize("flood", FLOODS)
async def test_refusal_log_reports_the_held_back_count(make_node, caplog, flood):
    attack, text = FLOODS[flood]
    node, lines, took = await flood_refusals(make_node, caplog, flood, interval=0.2)
    assert 1 <= len(lines) <= 2 + math.ceil(took / node.refusals.interval), \
        f"{len(lines)} lines for {REFUSALS} refusals in {took:.1f}s"
    # once the interval has passed, the next refusal is logged with the count held back
    last = lines[-1].created
    await wait_for_condition(lambda: time.time() - last > node.refusals.interval * 1.2,
                             message="the log interval to pass")
    await asyncio.to_thread(attempts, node.addresses[0], 1, attack, 1)
    lines = log_lines(caplog, text)
    final = lines[-1].getMessage()
    assert "(and " in final and "more from 127.0.0.1 " in final, final
    held = 0
    for record in lines:
        message = record.getMessage()
        if "(and " in message:
            held += int(message.split("(and ", 1)[1].split()[0])
    assert len(lines) + held == REFUSALS + 1, \
        f"{len(lines)} lines and {held} held back for {REFUSALS + 1} refusals"


def _forged_name(client):
    return client.handshake(TEST_SECRET.encode(), name="evil\nINFO forged line\x1b[31m")


def _forged_cluster(client):
    return client.handshake(TEST_SECRET.encode(), cluster="evil\nINFO forged line\x1b[31m")


def _forged_reject(client):
    client.send(protocol.encode(REJECT, json.dumps({"reason": "evil\nINFO forged line\x1b[31m"}).encode()))


@pytest.mark.parametrize("attack", [_forged_name, _forged_cluster, _forged_reject],
                         ids=["name", "cluster", "reject-reason"])
async def test_peer_text_with_control_characters_is_escaped_in_the_log(make_node, caplog, attack):
    caplog.set_level(logging.DEBUG, logger=NODE_LOG)
    node = await make_node("target", node_type="worker")

    def run():
        client = raw_client(node.addresses[0])
        try:
            client.upgrade()
            error = attack(client)
            return error, client.is_closed_by_peer()
        finally:
            client.close()

    error, closed = await asyncio.to_thread(run)
    assert closed
    if attack is not _forged_reject:
        assert isinstance(error, HandshakeError)
    assert "evil" not in node.peers and not any("evil" in name for name in node.peers)
    await wait_for_condition(lambda: log_lines(caplog), message="the refusal log line")
    for record in caplog.records:
        text = record.getMessage()
        assert "\n" not in text and "\r" not in text and "\x1b" not in text, repr(text)
    assert any("evil\\nINFO forged line" in r.getMessage() for r in log_lines(caplog))


# -- malformed envelopes from an authenticated peer --------------------------------------------------


@pytest.mark.parametrize("payload", [
    pickle.dumps("hello"),
    pickle.dumps((REQUEST, "not-an-int", "svc", "m", serialize.Payload(*serialize.dumps(((), {}))))),
    pickle.dumps((REQUEST, 1, "svc", "m", ((), {}))),
    pickle.dumps((REQUEST, 1, "svc", "m", (), {})),
    pickle.dumps((NOTICE, 7, "svc", "m", serialize.Payload(*serialize.dumps(((), {}))))),
    pickle.dumps((RESPONSE, "x", None)),
    pickle.dumps((RESPONSE, 1, "not a payload")),
    pickle.dumps((FAILURE, 1, "not-five-fields")),
    pickle.dumps((FAILURE, 1, ("not a payload", "t", "x", "", None))),
    pickle.dumps((99, 1, 2)),
    pickle.dumps(()),
], ids=["str", "id-str", "args-unpickled", "old-six-fields", "notice-with-id", "response-id-str",
        "response-no-payload", "failure-short", "failure-no-payload", "unknown-kind", "empty-tuple"])
async def test_malformed_envelope_closes_only_that_connection(make_node, caplog, payload):
    caplog.set_level(logging.INFO, logger=NODE_LOG)
    node = await make_node("target", node_type="worker")
    node.add_service("test", Echo())
    other = await make_node("other")
    peer = await asyncio.wait_for(other.connect(node.addresses[0]), 10)

    def attack():
        client = raw_client(node.addresses[0])
        try:
            client.upgrade()
            assert client.handshake(TEST_SECRET.encode()) is None
            client.send_sealed(MESSAGE, payload)
            return client.is_closed_by_peer()
        finally:
            client.close()

    assert await asyncio.to_thread(attack)
    await wait_for_condition(lambda: any("malformed message" in r.getMessage() for r in caplog.records),
                             message="a log line naming the malformed message")
    line = next(r.getMessage() for r in caplog.records if "malformed message" in r.getMessage())
    assert "raw-client" in line
    await wait_for_condition(lambda: "raw-client" not in node.peers, message="raw-client dropped")
    assert await asyncio.wait_for(peer.call("test", "echo", "still"), 5) == "still"


# -- a HELLO sent in the same segment as the upgrade request -----------------------------------------


def handshake_pipelined(address: str, pieces: int = 1) -> object:
    """Upgrade request and HELLO in one ``sendall`` (or dribbled in ``pieces``), then sealed calls:
    the answers of ``_rmi.ping`` and ``_rmi.status``."""
    client = raw_client(address)
    try:
        hs = Handshake("client", TEST_SECRET, "default",
                       {"name": "pipelined", "node_type": "driver", "addresses": []})
        data = UPGRADE_REQUEST + b"".join(hs.start())
        if pieces == 1:
            client.sock.sendall(data)
        else:  # in pieces that leave one at a time (raw_client sets TCP_NODELAY)
            step = math.ceil(len(data) / pieces)
            for offset in range(0, len(data), step):
                client.sock.sendall(data[offset:offset + step])
        client.read_upgrade()
        while not hs.done:
            frame = client.recv_frame()
            assert frame is not None, "closed during the handshake"
            client.send(hs.receive(frame))
            if hs.opener is not None and client.decoder.opener is None:
                client.decoder.seal(hs.opener)
        client.sealer = hs.sealer
        answers = {}
        for request_id, method in enumerate(["ping", "status"], 1):
            data, buffers = serialize.dump_envelope(
                (REQUEST, request_id, "_rmi", method, serialize.Payload(*serialize.dumps(((), {})))))
            client.send_sealed(MESSAGE, data, buffers)
        while len(answers) < 2:
            frame = client.recv_frame()
            assert frame is not None, "closed before answering"
            if frame.kind != MESSAGE:
                continue
            msg = serialize.loads(frame.main, frame.parts)
            if msg[0] == RESPONSE:
                answers[msg[1]] = msg[2].load()
        return answers[1], answers[2]
    finally:
        client.close()


@pytest.mark.parametrize("pieces", [1, 9], ids=["one-sendall", "dribbled"])
async def test_hello_pipelined_behind_the_upgrade_request(make_node, pieces):
    node = await make_node("target", node_type="worker")
    ping, status = await asyncio.wait_for(
        asyncio.to_thread(handshake_pipelined, node.addresses[0], pieces), 15)
    assert ping == "target"
    assert [p["name"] for p in status["peers"]] == ["pipelined"]



def test_a_source_that_goes_on_is_logged_at_doubling_spacings_with_its_count():
    # a misconfigured peer retrying for an hour: a handful of lines, not one every 10 s
    import logging as logging_

    from bndl_like.rmi.guard import RateLimitedLog

    class Records(logging_.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    now = [0.0]
    logger = logging_.getLogger("test.refusals")
    handler = Records()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        refusals = RateLimitedLog(logger, interval=10, max_interval=600, clock=lambda: now[0])
        logged = []
        for step in range(720):  # a refusal every 5 s for an hour
            now[0] = step * 5.0
            if refusals.log("10.0.0.9", "refused connection from %s", "10.0.0.9"):
                logged.append(now[0])
        assert logged[:5] == [0, 10, 30, 70, 150] and len(logged) <= 12, logged
        assert all(b - a <= 600 for a, b in zip(logged, logged[1:], strict=False)), logged
        # quiet for a while, then back: news again at once (with the count still held back),
        # spacing from the start
        now[0] += 10_000
        assert refusals.log("10.0.0.9", "refused connection from %s", "10.0.0.9")
        assert refusals.interval_for("10.0.0.9") == 10
        counts = [int(m.split("(and ", 1)[1].split()[0]) for m in handler.messages[1:]]
        assert len(handler.messages) + sum(counts) == 721  # every refusal logged or counted
    finally:
        logger.removeHandler(handler)
