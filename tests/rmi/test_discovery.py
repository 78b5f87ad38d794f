"""Discovery through seeds and gossip, late joiners, one connection per pair."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from bndl_like.rmi import Node, protocol

from ..conftest import TEST_SECRET, wait_for_condition


async def test_driver_and_three_workers_each_knowing_one_seed(make_node, spawn_peer, monkeypatch):
    monkeypatch.setenv("BNDL_LIKE_MESH", "full")  # everyone sees everyone: the full mesh
    driver = await make_node("driver")
    # a chain: each worker knows only the previous node
    w1 = spawn_peer("w1", seeds=[driver.addresses[0]])
    w2 = spawn_peer("w2", seeds=[w1.address])
    w3 = spawn_peer("w3", seeds=[w2.address])
    await wait_for_condition(lambda: set(driver.peers) == {"w1", "w2", "w3"}, timeout=15,
                             message="driver sees all workers")
    for name in ("w1", "w2", "w3"):
        seen = await driver.peers[name].call("test", "peers")
        assert set(seen) == {"driver", "w1", "w2", "w3"} - {name}
    # a late joiner that knows only the last worker is found by everyone
    spawn_peer("w4", seeds=[w3.address])
    await wait_for_condition(lambda: "w4" in driver.peers, timeout=15, message="late joiner")

    async def everyone_sees_w4():
        return all(["w4" in await driver.peers[n].call("test", "peers") for n in ("w1", "w2", "w3")])

    for _ in range(200):
        if await everyone_sees_w4():
            break
        await asyncio.sleep(0.05)
    assert await everyone_sees_w4()
    assert set(await driver.peers["w4"].call("test", "peers")) == {"driver", "w1", "w2", "w3"}


async def test_worker_that_knows_only_the_driver_is_found(make_node, spawn_peer):
    driver = await make_node("driver")
    spawn_peer("w1", seeds=[driver.addresses[0]])
    await wait_for_condition(lambda: "w1" in driver.peers)
    assert driver.peers["w1"].node_type == "worker"
    assert driver.peers["w1"].host == "127.0.0.1"


async def test_seed_started_after_the_node_is_found(make_node):
    late = Node("late", "worker", listen="tcp://127.0.0.1:0", secret=TEST_SECRET)
    await late.start()
    address = late.addresses[0]
    await late.stop()
    driver = await make_node("driver", seeds=[address])
    await asyncio.sleep(0)  # the seed is down; the driver keeps trying
    again = await make_node("late", "worker", listen=address)
    await wait_for_condition(lambda: "late" in driver.peers, timeout=10, message="seed comes up")
    assert again.addresses[0] == address


async def test_one_connection_when_both_dial_at_once(make_node):
    for attempt in range(5):
        a = await make_node(f"a{attempt}")
        b = await make_node(f"b{attempt}")
        await asyncio.gather(a.connect(b.addresses[0]), b.connect(a.addresses[0]),
                             return_exceptions=True)
        await wait_for_condition(
            lambda a=a, b=b: len(a.peers[b.name].connections) == 1
            and len(b.peers[a.name].connections) == 1,
            timeout=5, message="duplicate connection retired")
        ca, cb = a.peers[b.name].connection, b.peers[a.name].connection
        assert ca.preference_key == cb.preference_key  # both kept the same connection
        assert await a.peers[b.name].call("_rmi", "ping") == b.name
        assert await b.peers[a.name].call("_rmi", "ping") == a.name


async def test_duplicate_connection_keeps_calls_in_flight(make_node):
    class Slow:
        started = 0

        async def wait(self, t):
            Slow.started += 1
            await asyncio.sleep(t)
            return t

    a = await make_node("a")
    b = await make_node("b")
    b.add_service("slow", Slow())
    a.add_service("slow", Slow())
    await b.connect(a.addresses[0])  # b is the client: key ("b", ...)
    calls = [asyncio.ensure_future(a.peers["b"].call("slow", "wait", 0.3)) for _ in range(10)]
    calls += [asyncio.ensure_future(b.peers["a"].call("slow", "wait", 0.3)) for _ in range(10)]
    await wait_for_condition(lambda: Slow.started == 20, message="calls in flight")
    await a.connect(b.addresses[0])  # a dials too: ("a", ...) wins, the first is retired
    assert await asyncio.gather(*calls) == [0.3] * 20
    await wait_for_condition(lambda: len(a.peers["b"].connections) == 1
                             and len(b.peers["a"].connections) == 1, timeout=5)
    assert a.peers["b"].connection.role == "client"


async def test_status_endpoint(make_node):
    import json
    import urllib.request

    from bndl_like.rmi.secrets import status_token

    driver = await make_node("driver")
    worker = await make_node("w", "worker", seeds=[driver.addresses[0]])
    await wait_for_condition(lambda: "w" in driver.peers)
    host, port = driver.addresses[0][len("tcp://"):].rsplit(":", 1)

    def fetch(token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"http://{host}:{port}/status", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], json.loads(resp.read())

    status, ctype, body = await asyncio.to_thread(fetch, status_token(driver.secret))
    assert status == 200 and ctype.startswith("application/json")
    assert body["name"] == "driver" and body["node_type"] == "driver"
    assert [p["name"] for p in body["peers"]] == ["w"]
    assert body["peers"][0]["addresses"] == worker.addresses
    # without the token, or with another secret's, only the protocol version
    for token in (None, status_token(b"another secret of 16+ bytes")):
        status, _, body = await asyncio.to_thread(fetch, token)
        assert status == 200 and body == {"protocol": protocol.PROTOCOL_VERSION}


async def test_a_taken_port_walks_up_only_when_asked(make_node, caplog):
    caplog.set_level("INFO", logger="bndl_like.rmi.node")
    first = await make_node("first")
    port = int(first.addresses[0].rsplit(":", 1)[1])
    second = await make_node("second", listen=f"tcp://127.0.0.1:{port}+")
    assert int(second.addresses[0].rsplit(":", 1)[1]) > port
    assert f"port {port} is taken, listening on port" in caplog.text


async def test_an_explicit_port_is_bound_exactly_or_names_its_holder(make_node):
    first = await make_node("first")
    port = int(first.addresses[0].rsplit(":", 1)[1])
    with pytest.raises(OSError) as info:
        await make_node("second", listen=f"tcp://127.0.0.1:{port}")
    message = str(info.value)
    assert f"cannot listen on tcp://127.0.0.1:{port}" in message
    assert f"pid {os.getpid()}" in message  # this test process holds it
    assert f"tcp://127.0.0.1:{port}+" in message  # and how to walk instead


async def test_a_second_process_cannot_take_a_workers_explicit_port(spawn_peer):
    worker = spawn_peer("worker-1")
    port = int(worker.address.rsplit(":", 1)[1])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import socket; s = socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('127.0.0.1', {port})); s.listen()",
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0 and b"Address already in use" in err


def test_a_seed_cannot_walk():
    with pytest.raises(ValueError, match="drop the"):
        Node("x", seeds=["tcp://127.0.0.1:5000+"], secret=TEST_SECRET)


@pytest.mark.parametrize("listen", ["tcp://0.0.0.0:0", "tcp://10.1.2.3:0"])
def test_non_loopback_listen_without_secret_is_refused(listen, monkeypatch):
    monkeypatch.delenv("BNDL_LIKE_SECRET", raising=False)
    with pytest.raises(ValueError, match="no cluster secret"):
        Node("x", listen=listen)


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        Node("x", heartbeat_timeout=-1)
    with pytest.raises(ValueError, match="node_type"):
        Node("x", "boss")
    with pytest.raises(ValueError, match="no port"):
        Node("x", listen="tcp://127.0.0.1")
