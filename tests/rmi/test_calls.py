"""Calls between real processes: both ways, many in flight, errors, bulk arrays."""

from __future__ import annotations

import asyncio
import logging
import traceback

import numpy as np
import pytest

from bndl_like.rmi import MessageTooLarge, NotConnected, RemoteError, SerializationError

from ..conftest import wait_for_condition


class DriverService:
    def __init__(self):
        self.calls = []

    def hello(self, who):
        self.calls.append(who)
        return f"hello {who}"


@pytest.fixture
async def driver_and_worker(make_node, spawn_peer):
    driver = await make_node("driver")
    driver.add_service("driver", DriverService())
    worker = spawn_peer("worker-1", seeds=[driver.addresses[0]])
    await wait_for_condition(lambda: "worker-1" in driver.peers, message="worker joins")
    return driver, driver.peers["worker-1"], worker


async def test_calls_both_ways(driver_and_worker):
    driver, peer, worker = driver_and_worker
    assert await peer.call("test", "pid") == worker.pid
    assert await peer.service("test").echo({"a": [1, 2]}) == {"a": [1, 2]}
    # the worker calls the driver back over the same connection while serving our call
    assert await peer.call("test", "call_back", "driver", "hello", "worker") == "hello worker"
    assert driver.services["driver"].calls == ["worker"]


async def test_thousand_concurrent_calls_on_one_connection(driver_and_worker):
    driver, peer, _ = driver_and_worker
    results = await asyncio.gather(*[peer.call("test", "echo", i) for i in range(1000)])
    assert results == list(range(1000))
    # out of order completion: slow and fast calls interleaved
    slow = [peer.call("test", "sleep", 0.2 - i * 0.001) for i in range(100)]
    assert await asyncio.gather(*slow) == [pytest.approx(0.2 - i * 0.001) for i in range(100)]
    assert len(peer.connections) == 1


async def test_remote_exception_has_type_and_traceback(driver_and_worker):
    _, peer, _ = driver_and_worker
    with pytest.raises(RemoteError) as info:
        await peer.call("test", "boom", "the message")
    error = info.value
    assert isinstance(error.__cause__, KeyError)
    assert error.__cause__.args == ("the message",)
    assert error.exc_type == "builtins.KeyError"
    assert "in boom" in error.remote_traceback and "peer_process.py" in error.remote_traceback
    assert "worker-1" in str(error)
    # the cause carries the remote frames as a real traceback
    frames = traceback.extract_tb(error.__cause__.__traceback__)
    assert any(f.name == "boom" for f in frames)


async def test_unpicklable_remote_exception_still_reports(driver_and_worker):
    _, peer, _ = driver_and_worker
    with pytest.raises(RemoteError) as info:
        await peer.call("test", "unpicklable_error")
    assert info.value.__cause__ is None
    assert "cannot travel" in str(info.value)
    assert "LocalError" in info.value.exc_type


async def test_unknown_service_and_method(driver_and_worker):
    _, peer, _ = driver_and_worker
    with pytest.raises(RemoteError, match="no service 'nope'"):
        await peer.call("nope", "x")
    with pytest.raises(RemoteError, match="no method 'nope'"):
        await peer.call("test", "nope")
    with pytest.raises(RemoteError, match="private"):
        await peer.call("test", "__init__")
    assert await peer.call("test", "echo", 1) == 1


async def test_unpicklable_argument_is_a_clear_local_error(driver_and_worker):
    _, peer, _ = driver_and_worker
    import threading
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="lock"):
        await peer.call("test", "echo", lock)
    assert await peer.call("test", "echo", 2) == 2


async def test_lambda_and_closure_travel_by_value(driver_and_worker):
    _, peer, _ = driver_and_worker
    offset = 40
    func = await peer.call("test", "echo", lambda x: x + offset)
    assert func(2) == 42


async def test_64_mib_array_round_trips_intact(driver_and_worker):
    _, peer, _ = driver_and_worker
    array = np.random.default_rng(1).integers(0, 2**60, size=8 * 1024 * 1024, dtype=np.int64)
    assert array.nbytes == 64 * 1024 * 1024
    assert await peer.call("test", "nbytes", array) == array.nbytes
    back = await peer.call("test", "echo", array)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)
    back[0] = 1  # received buffers are writable
    big = bytes(range(256)) * (1 << 16)
    assert await peer.call("test", "echo", big) == big


async def test_oversized_message_refused_before_sending(make_node, spawn_peer):
    driver = await make_node("driver", max_message_size=1 << 20)
    spawn_peer("worker-1", seeds=[driver.addresses[0]], max_message_size=1 << 20)
    await wait_for_condition(lambda: "worker-1" in driver.peers)
    peer = driver.peers["worker-1"]
    with pytest.raises(MessageTooLarge, match="maximum message size"):
        await peer.call("test", "echo", b"x" * (2 << 20))
    # a response that is too large fails the call, not the connection
    with pytest.raises(RemoteError, match="MessageTooLarge"):
        await peer.call("test", "make_bytes", 2 << 20)
    assert await peer.call("test", "echo", 3) == 3


async def test_call_on_lost_peer_raises_not_connected(driver_and_worker):
    driver, peer, worker = driver_and_worker
    worker.stop()
    await wait_for_condition(lambda: not peer.connected, message="peer lost")
    with pytest.raises(NotConnected):
        await peer.call("test", "noop")


async def test_connections_send_small_frames_at_once(make_node):
    # TCP_NODELAY on both ends: a node's accepted sockets (its listener is a plain
    # socket.socket(), which asyncio does not set it for) held every small answer ~40 ms
    import socket

    a = await make_node("a")
    b = await make_node("b", seeds=[a.addresses[0]])
    await wait_for_condition(lambda: "b" in a.peers and "a" in b.peers, message="nodes meet")
    conns = [c for node, other in ((a, "b"), (b, "a")) for c in node.peers[other].connections]
    assert {c.role for c in conns} >= {"client", "server"}
    for conn in conns:
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), conn


async def test_a_notice_for_a_service_a_node_lacks_is_one_warning_line(make_node, caplog):
    class Echo:
        def __init__(self):
            self.seen = []

        def note(self, value):
            self.seen.append(value)

    caplog.set_level(logging.WARNING, logger="bndl_like.rmi.connection")
    driver = await make_node("driver", "driver")
    worker = await make_node("worker", "worker", seeds=[driver.addresses[0]])
    echo = Echo()
    worker.add_service("echo", echo)
    await wait_for_condition(lambda: "worker" in driver.peers, message="the worker joins")
    peer = driver.peers["worker"]
    peer.notify("absent", "anything", 1)
    peer.notify("echo", "nope", 2)
    peer.notify("echo", "note", 3)  # after them, on the same connection: still handled
    await wait_for_condition(lambda: echo.seen == [3], message="the notice after them")
    lines = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert [r.getMessage().split(" ignored: ")[1] for r in lines] == [
        "node worker has no service 'absent'", "service 'echo' on node worker has no method 'nope'"]
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in lines)
