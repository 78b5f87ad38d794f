"""Lost peers: SIGKILL and SIGSTOP fail calls in flight with NotConnected; stop leaves nothing behind."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time

import pytest

from bndl_like.rmi import Node, NotConnected

from ..conftest import wait_for_condition

TIMEOUT = 1.5


@pytest.fixture
async def driver_and_worker(make_node, spawn_peer):
    driver = await make_node("driver", heartbeat_interval=0.25, heartbeat_timeout=TIMEOUT)
    worker = spawn_peer("worker-1", seeds=[driver.addresses[0]], heartbeat_interval=0.25,
                        heartbeat_timeout=TIMEOUT)
    await wait_for_condition(lambda: "worker-1" in driver.peers)
    return driver, driver.peers["worker-1"], worker


async def _calls_fail_after(peer, action) -> float:
    calls = [asyncio.ensure_future(peer.call("test", "sleep", 30)) for _ in range(20)]
    # in flight once the worker answers a call sent after them (one connection, in order)
    assert await peer.call("test", "noop") is None
    assert not any(c.done() for c in calls)
    started = time.monotonic()
    action()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), TIMEOUT + 5)
    took = time.monotonic() - started
    assert all(isinstance(r, NotConnected) for r in results), results
    return took


async def test_sigkill_fails_calls_in_flight_at_once(driver_and_worker):
    driver, peer, worker = driver_and_worker
    lost = []
    driver.on_peer_lost.append(lost.append)
    took = await _calls_fail_after(peer, lambda: worker.signal(signal.SIGKILL))
    assert took < TIMEOUT  # the closed socket tells at once, no heartbeat needed
    assert lost == [peer] and "worker-1" not in driver.peers


async def test_sigstop_is_declared_lost_within_the_heartbeat_timeout(driver_and_worker):
    driver, peer, worker = driver_and_worker
    lost = []
    driver.on_peer_lost.append(lost.append)
    took = await _calls_fail_after(peer, lambda: worker.signal(signal.SIGSTOP))
    assert TIMEOUT * 0.5 < took < TIMEOUT + 1.0
    assert lost == [peer]
    with pytest.raises(NotConnected, match="heartbeat"):
        await peer.call("test", "noop")
    # once resumed, the worker rejoins through its seed and is usable again
    worker.signal(signal.SIGCONT)
    await wait_for_condition(lambda: "worker-1" in driver.peers, timeout=10, message="rejoin")
    assert await driver.peers["worker-1"].call("test", "echo", 5) == 5


async def test_late_response_after_loss_is_ignored(driver_and_worker, tmp_path):
    driver, peer, worker = driver_and_worker
    started = tmp_path / "started"
    call = asyncio.ensure_future(peer.call("test", "block", 1.0, str(started)))  # blocks the worker's loop
    await wait_for_condition(started.exists, message="the worker runs the call")
    peer.connection.close("test declares it lost", abort=False)
    with pytest.raises(NotConnected):
        await call
    await wait_for_condition(lambda: "worker-1" in driver.peers, timeout=10, message="rejoin")
    assert await driver.peers["worker-1"].call("test", "echo", 6) == 6


def _open_fds() -> set:
    return set(os.listdir(f"/proc/{os.getpid()}/fd"))


def test_stop_leaves_nothing_behind():
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()

    async def scenario():
        a = Node("a", "driver", secret="liveness-test-secret-0123456789")
        b = Node("b", "worker", secret="liveness-test-secret-0123456789")
        await a.start()
        b.seeds = [__import__("bndl_like.rmi", fromlist=["parse_address"]).parse_address(a.addresses[0])]
        await b.start()
        await wait_for_condition(lambda: "b" in a.peers and "a" in b.peers)
        b.add_service("svc", type("S", (), {"f": staticmethod(lambda: 1)})())
        assert await a.peers["b"].call("svc", "f") == 1
        await b.stop()
        await a.stop()
        await a.stop()  # idempotent
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    leftover_tasks = asyncio.run(scenario())
    gc.collect()
    assert leftover_tasks == []
    assert set(threading.enumerate()) - threads_before == set()
    assert _open_fds() - fds_before == set()
