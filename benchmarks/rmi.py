"""Benchmark of the bndl_like RMI layer between two processes on loopback, with baselines.

The client side runs in this process; every server runs in a subprocess of its own
(``--serve KIND``, started and reaped by this script). What it measures:

1. bndl_like RMI: round-trip time of an empty call (``await peer.call("bench", "noop")``,
   sequential, median and p99 in µs); pipelined empty calls per second (50,000 calls issued
   with ``asyncio.gather`` in windows of 1,000, calls / wall time, median of 3 rounds); MiB/s of
   sending a 64 MiB numpy array to a method that returns ``arr.nbytes`` (one-way bulk) and of an
   echo that sends it and gets it back (counted as 2 x 64 MiB), best and median of 5 repeats.
2. Baselines: a raw asyncio streams echo (length-prefixed 1-byte messages; sequential RTT and
   pipelined messages/s) and a blocking ``socket`` echo (sequential RTT, and 64 MiB sent with
   ``sendall`` into a preallocated ``bytearray`` on the server, which replies with an ack).
   The RMI and asyncio echo round trips alternate in blocks of 100 in one event loop, so that
   their ratio compares like with like on a machine whose speed drifts.
3. The rejected option, for the record: one 64 MiB binary aiohttp websocket message from an
   aiohttp client to an aiohttp server (client frames are masked).
4. Sections 1 and the asyncio echo again with uvloop in both processes, when uvloop imports.

Then it prints every figure and the ratios the targets are stated in: RMI RTT p50 / asyncio
echo RTT p50 (target <= 2x), pipelined calls/s (target >= 50,000), 64 MiB one-way MiB/s
(target >= 1,000) and its ratio to the blocking socket.

Run from the repository root::

    python benchmarks/rmi.py            # full run, a readable table (well under 90 s)
    python benchmarks/rmi.py --quick    # smaller counts, a smoke run (< 20 s)
    python benchmarks/rmi.py --json     # one JSON object with every figure instead of the table
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import platform
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

MIB = 1 << 20
BULK_ELEMENTS = 8 * 1024 * 1024  # np.ones(...) of float64: 64 MiB
SMALL = struct.Struct("<I")  # the asyncio echo: u32 length, then the payload
BLOCKING = struct.Struct("<BQ")  # the blocking echo: u8 kind, u64 length, then the payload
BLOCKING_ECHO, BLOCKING_SINK = 0, 1
ACK = struct.Struct("<Q")
READY_TIMEOUT = 30.0
RTT_BLOCK = 100  # round trips per probe before switching to the next one

TARGET_RTT_RATIO = 2.0
TARGET_MAC_RTT_RATIO = 1.05
TARGET_CALLS_PER_S = 50_000
TARGET_BULK_MIB_S = 1_500


@dataclass(frozen=True)
class Counts:
    warmup: int
    rtt: int
    pipelined: int
    window: int
    pipelined_rounds: int
    bulk_repeats: int
    ws_repeats: int


FULL = Counts(warmup=500, rtt=3000, pipelined=50_000, window=1000, pipelined_rounds=3, bulk_repeats=5,
              ws_repeats=3)
QUICK = Counts(warmup=100, rtt=500, pipelined=5_000, window=1000, pipelined_rounds=1, bulk_repeats=2,
               ws_repeats=1)


# -- helpers ---------------------------------------------------------------------------------------


def new_loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop]:
    if use_uvloop:
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(coro, use_uvloop: bool = False):
    with asyncio.Runner(loop_factory=new_loop_factory(use_uvloop)) as runner:
        return runner.run(coro)


def uvloop_version() -> str | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.__version__


def aiohttp_version() -> str:
    import aiohttp

    return aiohttp.__version__


def rtt_stats(samples: list[float]) -> dict:
    """Median and p99 of round-trip times given in seconds, in µs."""
    us = np.asarray(samples) * 1e6
    return {"rtt_p50_us": float(np.median(us)), "rtt_p99_us": float(np.percentile(us, 99))}


def bulk_stats(prefix: str, nbytes: int, seconds: list[float]) -> dict:
    rates = [nbytes / MIB / s for s in seconds]
    return {f"{prefix}_best_mib_s": max(rates), f"{prefix}_median_mib_s": statistics.median(rates)}


def bulk_array() -> np.ndarray:
    return np.ones(BULK_ELEMENTS)


def quiet_logging() -> None:
    # a peer going away at the end of a run is logged as a warning; that is expected here
    logging.basicConfig(level=logging.ERROR)


# -- servers (run in the subprocess) ---------------------------------------------------------------


def announce(address: str) -> None:
    """Tell the parent where we listen, and exit when it closes our stdin (or dies)."""

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"READY {address}", flush=True)


class Bench:
    """The service the RMI benchmark calls."""

    def noop(self) -> None:
        return None

    def nbytes(self, arr) -> int:
        return arr.nbytes

    def echo(self, x):
        return x


# -- the MAC switched off, for comparison only -------------------------------------------------------
# Frames still carry a (zero) tag and a sequence number, but nothing is hashed or checked: the
# difference to the real run is the cost of authenticating every frame. Never used outside this file.


class _NullMac:
    """Stands in for the hashes: takes every byte, checks nothing, gives a zero tag."""

    def copy(self) -> _NullMac:
        return self

    def update(self, data) -> None:
        pass

    def digest(self) -> bytes:
        return bytes(16)

    def finalize(self) -> bytes:
        return bytes(16)

    def verify(self, tag) -> None:
        pass


def unsealed_node_class():
    from bndl_like.rmi import Node, protocol

    class NoMacSealer(protocol.FrameSealer):
        def __init__(self, key: bytes):
            super().__init__(key)
            self._small = _NullMac()

        def large_mac(self):
            self.seq += 1
            return _NullMac()

    class NoMacOpener(protocol.FrameOpener):
        def __init__(self, key: bytes):
            super().__init__(key)
            self._small = _NullMac()

        def check_small(self, frame, tag) -> None:
            self.seq += 1

        def large_mac(self):
            self.seq += 1
            return _NullMac()

    def null_hashed(name: str, cls) -> property:
        """A Handshake attribute that turns every sealer/opener set on it into ``cls``."""
        def set_(self, value) -> None:
            self.__dict__[name] = None if value is None else cls(bytes(32))
        return property(lambda self: self.__dict__.get(name), set_)

    class NoMacHandshake(protocol.Handshake):
        """Seals and opens with the null hashes from the first sealed frame on."""

        sealer = null_hashed("_sealer", NoMacSealer)
        opener = null_hashed("_opener", NoMacOpener)

    class UnsealedNode(Node):
        def _handshake(self, role):
            real = super()._handshake(role)
            return NoMacHandshake(role, self.secret, self.cluster, real.info)

    return UnsealedNode


async def serve_rmi(mac: bool = True) -> None:
    from bndl_like.rmi import Node

    node = (Node if mac else unsealed_node_class())("bench-server", "worker", listen="tcp://127.0.0.1:0")
    node.add_service("bench", Bench())
    await node.start()
    announce(node.addresses[0])
    await asyncio.Event().wait()


async def serve_asyncio_echo() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readexactly(SMALL.size)
                body = await reader.readexactly(SMALL.unpack(head)[0])
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    announce("tcp://127.0.0.1:%d" % server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if not n:
            raise ConnectionError("closed by the peer")
        view = view[n:]


def serve_blocking() -> None:
    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = bytearray(BLOCKING.size)
        sink = bytearray(0)
        with conn:
            try:
                while True:
                    recv_exact(conn, memoryview(head))
                    kind, length = BLOCKING.unpack(head)
                    if len(sink) < length:
                        sink = bytearray(length)  # allocated once per size, then reused
                    body = memoryview(sink)[:length]
                    recv_exact(conn, body)
                    if kind == BLOCKING_ECHO:
                        conn.sendall(bytes(head) + body)
                    else:
                        conn.sendall(ACK.pack(length))
            except ConnectionError:
                pass

    listener = socket.create_server(("127.0.0.1", 0))
    announce("tcp://127.0.0.1:%d" % listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


async def serve_websocket() -> None:
    from aiohttp import WSMsgType, web

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_str(str(len(msg.data)))
        return ws

    app = web.Application()
    app.router.add_get("/ws", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    announce(f"http://127.0.0.1:{port}/ws")
    await asyncio.Event().wait()


async def serve_rmi_without_mac() -> None:
    await serve_rmi(mac=False)


SERVERS = {"rmi": serve_rmi, "rmi-nomac": serve_rmi_without_mac, "echo": serve_asyncio_echo,
           "ws": serve_websocket}


def serve(kind: str, use_uvloop: bool) -> None:
    quiet_logging()
    if kind == "socket":
        serve_blocking()
    else:
        run(SERVERS[kind](), use_uvloop)


# -- the server subprocess, from the client's side -------------------------------------------------


@contextlib.contextmanager
def server_process(kind: str, use_uvloop: bool = False) -> Iterator[str]:
    """Start a server subprocess, yield its address; terminate and reap it (by pid) at the end."""
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", kind]
    if use_uvloop:
        cmd.append("--uvloop")
    # its own session: Ctrl-C reaches only us, and we stop the server ourselves
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    try:
        yield read_ready(proc)
    finally:
        stop_process(proc)


def read_ready(proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"server pid {proc.pid} did not start within {READY_TIMEOUT}s")
        readable, _, _ = select.select([proc.stdout], [], [], remaining)
        if readable:
            chunk = os.read(proc.stdout.fileno(), 4096)  # unbuffered: select sees what is left
            if not chunk:
                raise RuntimeError(f"server pid {proc.pid} exited with {proc.wait()} before it was ready")
            line += chunk
    text = line.decode().strip()
    if not text.startswith("READY "):
        raise RuntimeError(f"unexpected line from server pid {proc.pid}: {text!r}")
    return text.split(" ", 1)[1]


def stop_process(proc: subprocess.Popen) -> None:
    """Close its stdin (it exits on EOF); else SIGTERM, then SIGKILL; always reap it."""
    for stream in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            stream.close()
    try:
        proc.wait(timeout=2)
        return
    except subprocess.TimeoutExpired:
        pass
    proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- clients -----------------------------------------------------------------------------------------


async def timed_round_trips(probes: dict[str, Callable[[], Awaitable]], counts: Counts) -> dict:
    """Sequential round trips of every probe, alternating in blocks of RTT_BLOCK.

    Interleaving makes the probes share the machine's state (CPU frequency, scheduling of the
    two processes), so that their ratio is stable even when the absolute figures drift.
    """
    for probe in probes.values():
        for _ in range(counts.warmup):
            await probe()
    samples: dict[str, list[float]] = {name: [] for name in probes}
    for _ in range(0, counts.rtt, RTT_BLOCK):
        for name, probe in probes.items():
            for _ in range(RTT_BLOCK):
                t0 = time.perf_counter()
                await probe()
                samples[name].append(time.perf_counter() - t0)
    return {name: rtt_stats(times) for name, times in samples.items()}


async def pipelined_rates(window: Callable[[int], Awaitable], counts: Counts, key: str) -> dict:
    """``counts.pipelined`` calls issued ``counts.window`` at a time: calls / wall time, per round."""
    await window(counts.window)  # warm-up
    rates = []
    for _ in range(counts.pipelined_rounds):
        t0 = time.perf_counter()
        for start in range(0, counts.pipelined, counts.window):
            await window(min(counts.window, counts.pipelined - start))
        rates.append(counts.pipelined / (time.perf_counter() - t0))
    return {key: statistics.median(rates), f"{key}_best": max(rates)}


class EchoClient:
    """Client of the asyncio streams echo server."""

    MESSAGE = SMALL.pack(1) + b"x"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, address: str) -> EchoClient:
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def round_trip(self) -> None:
        self.writer.write(self.MESSAGE)
        await self.writer.drain()
        await self.reader.readexactly(len(self.MESSAGE))

    async def window(self, n: int) -> None:
        for _ in range(n):
            self.writer.write(self.MESSAGE)
        await self.writer.drain()
        for _ in range(n):
            await self.reader.readexactly(len(self.MESSAGE))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def bench_rmi_and_echo(addresses: dict, counts: Counts) -> dict:
    """bndl_like RMI with and without the MAC, and the asyncio echo, their round trips interleaved."""
    from bndl_like.rmi import Node

    node = Node("bench-client", "driver", listen="tcp://127.0.0.1:0")
    unsealed = unsealed_node_class()("bench-client-nomac", "driver", listen="tcp://127.0.0.1:0")
    await node.start()
    await unsealed.start()
    echo = None
    try:
        peers = {"rmi": await node.connect(addresses["rmi"]),
                 "rmi_nomac": await unsealed.connect(addresses["rmi-nomac"])}
        echo = await EchoClient.connect(addresses["echo"])

        def probes(peer):
            async def noop() -> None:
                await peer.call("bench", "noop")

            async def window(n: int) -> None:
                await asyncio.gather(*[peer.call("bench", "noop") for _ in range(n)])
            return noop, window

        rtts = await timed_round_trips({"rmi": probes(peers["rmi"])[0],
                                        "rmi_nomac": probes(peers["rmi_nomac"])[0],
                                        "asyncio_echo": echo.round_trip}, counts)
        results = {"asyncio_echo": {**rtts["asyncio_echo"],
                                    **await pipelined_rates(echo.window, counts, "pipelined_msgs_s")}}
        arr = bulk_array()
        for name, peer in peers.items():
            figures = {**rtts[name], **await pipelined_rates(probes(peer)[1], counts, "pipelined_calls_s")}
            for method, prefix, factor in (("nbytes", "bulk", 1), ("echo", "echo", 2)):
                times = []
                for i in range(counts.bulk_repeats + 1):  # the first one warms up
                    t0 = time.perf_counter()
                    reply = await peer.call("bench", method, arr)
                    elapsed = time.perf_counter() - t0
                    if i:
                        times.append(elapsed)
                expected = arr.nbytes if method == "nbytes" else arr
                if not np.array_equal(reply, expected):
                    raise AssertionError(f"bench.{method} returned a wrong result")
                del reply
                figures.update(bulk_stats(prefix, factor * arr.nbytes, times))
            results[name] = figures
        return results
    finally:
        if echo is not None:
            await echo.close()
        await node.stop()
        await unsealed.stop()


def bench_blocking(addresses: dict, counts: Counts) -> dict:
    host, port = addresses["socket"].removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = BLOCKING.pack(BLOCKING_ECHO, 1) + b"x"
        reply = memoryview(bytearray(len(message)))

        for _ in range(counts.warmup):
            sock.sendall(message)
            recv_exact(sock, reply)
        samples = []
        for _ in range(counts.rtt):
            t0 = time.perf_counter()
            sock.sendall(message)
            recv_exact(sock, reply)
            samples.append(time.perf_counter() - t0)
        result = rtt_stats(samples)

        arr = bulk_array()
        payload = memoryview(arr).cast("B")
        ack = memoryview(bytearray(ACK.size))
        times = []
        for i in range(counts.bulk_repeats + 1):
            t0 = time.perf_counter()
            sock.sendall(BLOCKING.pack(BLOCKING_SINK, arr.nbytes))
            sock.sendall(payload)
            recv_exact(sock, ack)
            elapsed = time.perf_counter() - t0
            if ACK.unpack(ack)[0] != arr.nbytes:
                raise AssertionError("wrong ack from the blocking server")
            if i:
                times.append(elapsed)
        result.update(bulk_stats("bulk", arr.nbytes, times))
        return {"socket": result}


async def bench_websocket(addresses: dict, counts: Counts) -> dict:
    import aiohttp

    payload = memoryview(bulk_array()).cast("B")
    times = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(addresses["ws"], max_msg_size=0) as ws:
            for _ in range(counts.ws_repeats):
                t0 = time.perf_counter()
                await ws.send_bytes(payload)
                reply = await ws.receive()
                times.append(time.perf_counter() - t0)
                if reply.type != aiohttp.WSMsgType.TEXT or int(reply.data) != payload.nbytes:
                    raise AssertionError(f"unexpected websocket reply {reply!r}")
    return {"websocket": bulk_stats("bulk", payload.nbytes, times)}


# -- the run -----------------------------------------------------------------------------------------


def section(report: dict, title: str, kinds: list[str], fn: Callable, counts: Counts,
            use_uvloop: bool = False, suffix: str = "", log: Callable = print) -> None:
    """Start the servers of ``kinds``, run ``fn`` against them; record its results or its error."""
    log(f"  {title} ...")
    t0 = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            addresses = {kind: stack.enter_context(server_process(kind, use_uvloop)) for kind in kinds}
            if asyncio.iscoroutinefunction(fn):
                results = run(fn(addresses, counts), use_uvloop)
            else:
                results = fn(addresses, counts)
    except Exception as exc:
        report["errors"][title] = f"{type(exc).__name__}: {exc}"
        log(f"  {title} failed: {report['errors'][title]}")
    else:
        report["results"].update({name + suffix: figures for name, figures in results.items()})
        log(f"  {title} done in {time.perf_counter() - t0:.1f}s")


def run_all(counts: Counts, log: Callable) -> dict:
    report: dict = {"results": {}, "errors": {}, "notes": []}
    section(report, "bndl_like RMI + asyncio echo", ["rmi", "rmi-nomac", "echo"], bench_rmi_and_echo,
            counts, log=log)
    section(report, "blocking socket", ["socket"], bench_blocking, counts, log=log)
    section(report, "aiohttp websocket", ["ws"], bench_websocket, counts, log=log)
    if uvloop_version():
        section(report, "uvloop: bndl_like RMI + asyncio echo", ["rmi", "rmi-nomac", "echo"],
                bench_rmi_and_echo,
                counts, use_uvloop=True, suffix="_uvloop", log=log)
    else:
        report["notes"].append("uvloop is not installed (pip install -e .[bench]): uvloop sections skipped")
    report["ratios"] = ratios(report["results"])
    return report


def ratios(results: dict) -> dict:
    """The figures the targets are stated in, for the default loop and for uvloop."""
    out = {}
    for suffix in ("", "_uvloop"):
        rmi, echo = results.get("rmi" + suffix), results.get("asyncio_echo" + suffix)
        sock = results.get("socket")
        if rmi is None:
            continue
        figures = {"pipelined_calls_s": rmi["pipelined_calls_s"], "bulk_mib_s": rmi["bulk_best_mib_s"]}
        if echo is not None:
            figures["rtt_p50_vs_asyncio_echo"] = rmi["rtt_p50_us"] / echo["rtt_p50_us"]
        nomac = results.get("rmi_nomac" + suffix)
        if nomac is not None:
            figures["rtt_p50_vs_no_mac"] = rmi["rtt_p50_us"] / nomac["rtt_p50_us"]
            figures["pipelined_vs_no_mac"] = rmi["pipelined_calls_s"] / nomac["pipelined_calls_s"]
            figures["bulk_vs_no_mac"] = rmi["bulk_best_mib_s"] / nomac["bulk_best_mib_s"]
        if sock is not None:
            figures["bulk_vs_blocking_socket"] = rmi["bulk_best_mib_s"] / sock["bulk_best_mib_s"]
        out["rmi" + suffix] = figures
    return out


# -- output ------------------------------------------------------------------------------------------

LABELS = {
    "rtt_p50_us": ("RTT p50", "µs"),
    "rtt_p99_us": ("RTT p99", "µs"),
    "pipelined_calls_s": ("pipelined calls, median round", "/s"),
    "pipelined_calls_s_best": ("pipelined calls, best round", "/s"),
    "pipelined_msgs_s": ("pipelined messages, median round", "/s"),
    "pipelined_msgs_s_best": ("pipelined messages, best round", "/s"),
    "bulk_best_mib_s": ("64 MiB one-way, best", "MiB/s"),
    "bulk_median_mib_s": ("64 MiB one-way, median", "MiB/s"),
    "echo_best_mib_s": ("64 MiB echo (2 x 64 MiB), best", "MiB/s"),
    "echo_median_mib_s": ("64 MiB echo (2 x 64 MiB), median", "MiB/s"),
}
TITLES = {
    "rmi": "bndl_like RMI",
    "asyncio_echo": "asyncio streams echo (baseline)",
    "socket": "blocking socket echo (baseline)",
    "websocket": "aiohttp websocket, 1 message (rejected option)",
    "rmi_nomac": "bndl_like RMI, MAC off (for comparison only)",
    "rmi_uvloop": "bndl_like RMI + uvloop",
    "rmi_nomac_uvloop": "bndl_like RMI + uvloop, MAC off (for comparison only)",
    "asyncio_echo_uvloop": "asyncio streams echo + uvloop (baseline)",
}


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def print_table(report: dict) -> None:
    print()
    print(f"bndl_like RMI benchmark, {report['date']}, {report['machine']}")
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items() if version)
    print(f"{versions}; command: {report['command']}")
    for name, title in TITLES.items():
        if name in report["results"]:
            print(f"\n{title}")
            for key, value in report["results"][name].items():
                label, unit = LABELS[key]
                print(f"  {label:<36} {number(value):>12} {unit}")
    for title, error in report["errors"].items():
        print(f"\n{title}\n  FAILED: {error}")
    for name, figures in report["ratios"].items():
        print(f"\ntargets, {TITLES[name]}")
        checks = [
            ("RTT p50 / asyncio echo RTT p50", figures.get("rtt_p50_vs_asyncio_echo"), "x",
             f"<= {TARGET_RTT_RATIO:g}x", lambda v: v <= TARGET_RTT_RATIO),
            ("RTT p50 / RTT p50 without the MAC", figures.get("rtt_p50_vs_no_mac"), "x",
             f"<= {TARGET_MAC_RTT_RATIO:g}x", lambda v: v <= TARGET_MAC_RTT_RATIO),
            ("pipelined calls/s / without the MAC", figures.get("pipelined_vs_no_mac"), "x", "-", None),
            ("64 MiB one-way / without the MAC", figures.get("bulk_vs_no_mac"), "x", "-", None),
            ("pipelined calls/s", figures["pipelined_calls_s"], "/s", f">= {TARGET_CALLS_PER_S:,}",
             lambda v: v >= TARGET_CALLS_PER_S),
            ("64 MiB one-way MiB/s (best)", figures["bulk_mib_s"], "MiB/s", f">= {TARGET_BULK_MIB_S:,}",
             lambda v: v >= TARGET_BULK_MIB_S),
            ("64 MiB one-way / blocking socket", figures.get("bulk_vs_blocking_socket"), "x", "-",
             None),
        ]
        for label, value, unit, target, ok in checks:
            if value is None:
                continue
            verdict = "" if ok is None else ("met" if ok(value) else "MISSED")
            print(f"  {label:<36} {number(value):>12} {unit:<6} target {target:<10} {verdict}")
    for note in report["notes"]:
        print(f"\nnote: {note}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--quick", action="store_true", help="smaller counts, a smoke run (< 20 s)")
    parser.add_argument("--serve", choices=["rmi", "rmi-nomac", "echo", "socket", "ws"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.uvloop)
        return 0

    quiet_logging()
    counts = QUICK if args.quick else FULL

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    log("running (servers are subprocesses, clients run here) ...")
    t0 = time.perf_counter()
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "versions": {"numpy": np.__version__, "aiohttp": aiohttp_version(), "uvloop": uvloop_version()},
        "command": " ".join(["python", "benchmarks/rmi.py", *(argv if argv is not None else sys.argv[1:])]),
        "counts": asdict(counts),
        **run_all(counts, log),
    }
    report["wall_s"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
        print(f"total {report['wall_s']:.1f}s")
    return 0 if "rmi" in report["results"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
