"""Why a node does not find its cluster, said at once and once: each seed's own error
(refused, wrong secret, no secret given, another cluster), a warning logged once and its
repeats counted, and no redial of a node already connected through another address."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from bndl_like import ExecutionContext
from bndl_like.rmi import NotConnected
from bndl_like.rmi import node as rmi_node

from ..conftest import TEST_SECRET, wait_for_condition, wait_until

pytestmark = pytest.mark.timeout(30)
NODE_LOG = "bndl_like.rmi.node"


def quick_discovery(monkeypatch) -> None:
    """Nodes made from now on (in this test) look whom to dial every 10 ms and redial an address
    that failed every 20 ms at most (instead of every 0.25 s and 5 s): the repeated dials these
    tests count, and those they must not see, come within a fraction of a second."""
    monkeypatch.setattr(rmi_node, "DISCOVERY_INTERVAL", 0.01)
    monkeypatch.setattr(rmi_node, "REDIAL_MAX", 0.02)


def closed_port_address() -> str:
    """An address nothing listens on: a port bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def warnings_about(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


CASES = {
    "refused": ({}, "connection refused: nothing listens on that port"),
    "wrong-secret": ({"secret": "another-secret-of-the-tests-0123456789"},
                     "authentication failed: the secrets of the two nodes differ"),
    "no-secret": ({"secret": None}, "authentication failed: no secret given, so this node used "
                                    "the local secret of this user"),
    "another-cluster": ({"cluster": "elsewhere"}, "another cluster: cluster name mismatch: this node "
                                                  "is in cluster 'elsewhere', the peer is in cluster"),
}


@pytest.mark.parametrize("case", CASES)
async def test_a_seed_not_reached_says_why_once(make_node, caplog, monkeypatch, case):
    caplog.set_level(logging.DEBUG, logger=NODE_LOG)
    monkeypatch.delenv("BNDL_LIKE_SECRET", raising=False)  # no-secret: the local secret
    options, expected = CASES[case]
    worker = await make_node("worker", "worker")
    seed = closed_port_address() if case == "refused" else worker.addresses[0]
    quick_discovery(monkeypatch)  # the driver redials often: a repeated warning would show at once
    driver = await make_node("driver", seeds=[seed], **options)
    await wait_for_condition(lambda: driver.dial_log.repeats(seed) >= 5, timeout=15,
                             message="five redials of the seed")
    assert expected in driver.seed_errors()[seed]
    assert expected in driver.unreachable_report() and seed in driver.unreachable_report()
    # once at WARNING, naming the seed and the error; the repeats only counted, at DEBUG
    lines = warnings_about(caplog, seed)
    assert len(lines) == 1 and expected in lines[0], lines
    assert any("(repeated 5 times)" in r.getMessage() and r.levelno == logging.DEBUG
               for r in caplog.records)
    assert not driver.peers and not worker.peers


async def test_a_seed_that_comes_up_is_news_again_when_it_fails_again(make_node, caplog, monkeypatch):
    """Once dialled successfully, a later failure of the seed is logged again."""
    caplog.set_level(logging.INFO, logger=NODE_LOG)
    seed = closed_port_address()
    quick_discovery(monkeypatch)
    driver = await make_node("driver", seeds=[seed])
    await wait_for_condition(lambda: driver.dial_log.repeats(seed) >= 2, message="redials")
    worker = await make_node("worker", "worker", listen=seed)
    await wait_for_condition(lambda: "worker" in driver.peers, message="the seed comes up")
    assert driver.seed_errors() == {} and driver.unreachable_report() == ""
    await worker.stop()
    await wait_for_condition(lambda: len(warnings_about(caplog, f"cannot reach seed {seed}")) == 2,
                             message="the new failure logged")


async def test_seeding_with_localhost_does_not_redial_a_connected_node(make_node, caplog, monkeypatch):
    """A node is the same node whatever address reached it: seeded as localhost, found as
    127.0.0.1, it is dialled once."""
    caplog.set_level(logging.DEBUG, logger=NODE_LOG)
    worker = await make_node("worker", "worker")
    port = worker.addresses[0].rsplit(":", 1)[1]
    seed = f"tcp://localhost:{port}"
    quick_discovery(monkeypatch)
    driver = await make_node("driver", seeds=[seed])
    await wait_for_condition(lambda: "worker" in driver.peers, message="connected")
    rounds = driver.discovery_rounds
    # a redial would come every other round (its backoff is 20 ms at most)
    await wait_for_condition(lambda: driver.discovery_rounds >= rounds + 25, timeout=15,
                             message="25 rounds of discovery")
    refused = [r for r in caplog.records if "already connected" in r.getMessage()]
    assert len(refused) <= 2, [r.getMessage() for r in refused]  # one crossing dial at most
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert driver.seed_errors() == {}
    assert len(worker.peers) == 1 and len(worker.peers["driver"].connections) == 1


# -- ExecutionContext.await_workers ---------------------------------------------------------------


def test_await_workers_names_each_seed_and_its_error(spawn_peer):
    worker = spawn_peer("w1")
    closed = closed_port_address()
    with ExecutionContext(seeds=[closed, worker.address], secret="wrong-secret-of-the-tests-0123456",
                          connect_timeout=2) as ctx:
        with pytest.raises(TimeoutError) as info:
            ctx.await_workers(connect_timeout=1)
        message = str(info.value)
        assert message.startswith("no worker joined within")
        assert f"seed {closed}: connection refused" in message
        assert f"seed {worker.address}: authentication failed: the secrets of the two nodes differ" \
            in message
        with pytest.raises(TimeoutError, match="0 of 2 workers joined"):
            ctx.await_workers(worker_count=2, stable_timeout=1)


def test_await_workers_gives_up_at_once_on_a_wrong_secret(spawn_peer):
    worker = spawn_peer("w1")
    with ExecutionContext(seeds=[worker.address], secret="wrong-secret-of-the-tests-0123456") as ctx:
        started = ctx._loop.time()
        with pytest.raises(TimeoutError, match="secrets of the two nodes differ"):
            ctx.await_workers(worker_count=1, stable_timeout=20)
        assert ctx._loop.time() - started < 5  # not the 20 s: waiting does not cure it


def test_await_workers_with_fewer_than_asked_names_who_joined(spawn_peer):
    worker = spawn_peer("w1")
    with ExecutionContext(seeds=[worker.address], secret=TEST_SECRET) as ctx:
        assert ctx.await_workers() == 1
        with pytest.raises(TimeoutError, match=r"^1 of 2 workers joined within 0\.[0-9]s through "):
            ctx.await_workers(worker_count=2, stable_timeout=0.5)


def test_a_driver_without_seeds_just_waits(spawn_peer):
    with ExecutionContext(seeds=[], listen="tcp://127.0.0.1:0", secret=TEST_SECRET) as ctx:
        assert ctx.await_workers(connect_timeout=0.3) == 0  # nobody came yet: no error
        spawn_peer("w1", seeds=[ctx.node.addresses[0]])
        wait_until(lambda: ctx.worker_count == 1, message="the worker joins")
        assert ctx.await_workers(worker_count=1) == 1


@pytest.mark.parametrize("answer, expected", [
    (b"HTTP/1.1 503 Service Unavailable", "is stopping (answered 'HTTP/1.1 503 Service Unavailable')"),
    (b"HTTP/1.1 404 Not Found", "is not a bndl-like node or refused the upgrade (answered "
                                "'HTTP/1.1 404 Not Found')"),
])
async def test_a_seed_that_answers_http_says_whether_it_is_stopping(make_node, answer, expected):
    async def answer_http(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer + b"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_http, "127.0.0.1", 0)
    try:
        node = await make_node("driver", "driver")
        with pytest.raises(NotConnected) as info:
            await node.connect(f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        assert expected in str(info.value) + str(info.value.__cause__ or "")
    finally:
        server.close()
        await server.wait_closed()
