"""Authentication before any pickle, clear refusals, and bad bytes that close one connection only."""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import ssl
import subprocess

import pytest

from bndl_like.rmi import HandshakeError, Node, NotConnected, protocol

from ..conftest import TEST_SECRET, wait_for_condition
from .rawclient import RawClient


class LeavesAFile:
    """Unpickling this creates a file: proof that a pickle was (not) loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
async def cluster(make_node, spawn_peer):
    driver = await make_node("driver")
    worker = spawn_peer("worker-1", seeds=[driver.addresses[0]])
    await wait_for_condition(lambda: "worker-1" in driver.peers)
    return driver, worker


async def still_serves(driver) -> bool:
    return await driver.peers["worker-1"].call("test", "echo", "alive") == "alive"


def evil_frame(path) -> list:
    return protocol.encode(protocol.MESSAGE, pickle.dumps(LeavesAFile(path), protocol=5))


async def test_wrong_secret_refused_before_unpickling(cluster, tmp_path):
    driver, worker = cluster
    marker = tmp_path / "unpickled"

    def attack():
        client = RawClient(worker.address)
        client.upgrade()
        error = client.handshake(b"not-the-secret")
        client.send(evil_frame(marker))  # after the failed AUTH
        closed = client.is_closed_by_peer()
        client.close()
        return error, closed

    error, closed = await asyncio.to_thread(attack)
    assert isinstance(error, HandshakeError)
    assert "authentication failed" in str(error)
    assert closed
    assert not marker.exists()
    assert await still_serves(driver)


async def test_pickle_before_handshake_is_never_loaded(cluster, tmp_path):
    driver, worker = cluster
    marker = tmp_path / "unpickled"

    def attack():
        client = RawClient(worker.address)
        client.upgrade()
        client.send(evil_frame(marker))  # no HELLO at all
        closed = client.is_closed_by_peer()
        client.close()
        return closed

    assert await asyncio.to_thread(attack)
    assert not marker.exists()
    assert await still_serves(driver)


async def test_node_with_wrong_secret_gets_a_clear_refusal(cluster, make_node):
    driver, worker = cluster
    intruder = await make_node("intruder", secret="wrong-secret-of-32-bytes-at-least")
    with pytest.raises(HandshakeError, match="authentication failed"):
        await intruder.connect(worker.address)
    assert "intruder" not in await driver.peers["worker-1"].call("test", "peers")
    assert await still_serves(driver)


async def test_cluster_and_version_mismatch_name_both_values(cluster, make_node):
    driver, worker = cluster
    other = await make_node("other", cluster="staging")
    with pytest.raises(HandshakeError, match="'staging'.*'default'|'default'.*'staging'"):
        await other.connect(worker.address)

    def wrong_version():
        client = RawClient(worker.address)
        client.upgrade()
        error = client.handshake(TEST_SECRET.encode(), version=99)
        client.close()
        return error

    error = await asyncio.to_thread(wrong_version)
    assert "version" in str(error) and "99" in str(error) and str(protocol.PROTOCOL_VERSION) in str(error)
    assert await still_serves(driver)


@pytest.mark.parametrize("payload", [
    b"\x00\xff garbage that is not HTTP \r\n\r\n" * 10,
    b"GET /rmi HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    os.urandom(4096),
])
async def test_garbage_before_upgrade_closes_only_that_connection(cluster, payload):
    driver, worker = cluster

    def attack():
        client = RawClient(worker.address)
        client.sock.sendall(payload)
        client.sock.settimeout(5)
        try:
            while client.sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
        client.close()

    await asyncio.to_thread(attack)
    assert await still_serves(driver)


async def test_garbage_after_upgrade_closes_only_that_connection(cluster):
    driver, worker = cluster

    def attack():
        client = RawClient(worker.address)
        client.upgrade()
        client.sock.sendall(b"\xee" * 64)  # unknown frame kind
        closed = client.is_closed_by_peer()
        client.close()
        return closed

    assert await asyncio.to_thread(attack)
    assert await still_serves(driver)


async def test_truncated_frame_closes_only_that_connection(cluster):
    driver, worker = cluster

    def attack():
        client = RawClient(worker.address)
        client.upgrade()
        assert client.handshake(TEST_SECRET.encode()) is None
        frame = b"".join(client.sealer.seal(protocol.MESSAGE, pickle.dumps(("x",) * 1000)))
        client.sock.sendall(frame[: len(frame) // 2])
        client.close()  # the peer sees EOF in the middle of a frame

    await asyncio.to_thread(attack)
    await wait_for_condition(lambda: "raw-client" not in driver.peers)
    assert await still_serves(driver)
    # the worker dropped it too
    assert "raw-client" not in await driver.peers["worker-1"].call("test", "peers")


async def test_oversized_frame_header_closes_only_that_connection(cluster):
    driver, worker = cluster

    def attack():
        client = RawClient(worker.address)
        client.upgrade()
        assert client.handshake(TEST_SECRET.encode()) is None
        # announce 1 TiB: refused from the header, nothing allocated
        client.sock.sendall(protocol.PREFIX.pack(protocol.MESSAGE, 0, 0, 1 << 40))
        closed = client.is_closed_by_peer()
        client.close()
        return closed

    assert await asyncio.to_thread(attack)
    assert await still_serves(driver)


async def test_handshake_that_never_comes_is_timed_out(make_node):
    node = await make_node("n", connect_timeout=0.5)

    def idle():
        client = RawClient(node.addresses[0])
        client.upgrade()
        closed = client.is_closed_by_peer(timeout=5)
        client.close()
        return closed

    assert await asyncio.to_thread(idle)


def _make_cert(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_tls(make_node, tmp_path):
    cert, key = _make_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    a = await make_node("a", ssl_context=server_ctx, client_ssl_context=client_ctx)
    b = await make_node("b", ssl_context=server_ctx, client_ssl_context=client_ctx,
                        seeds=[a.addresses[0]])
    await wait_for_condition(lambda: "b" in a.peers and "a" in b.peers)
    assert a.peers["b"].connection.transport.get_extra_info("ssl_object") is not None
    payload = os.urandom(3 << 20)
    assert await a.peers["b"].call("_rmi", "ping") == "b"
    b.add_service("echo", type("Echo", (), {"echo": staticmethod(lambda x: x)})())
    assert await a.peers["b"].call("echo", "echo", payload) == payload
    # a plain-text node cannot talk to a TLS node
    plain = await make_node("plain")
    with pytest.raises((NotConnected, HandshakeError)):
        await plain.connect(a.addresses[0])


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("BNDL_LIKE_SECRET", "from-env-0123456789abcdef")
    assert Node("x").secret == b"from-env-0123456789abcdef"
    assert Node("y", secret="explicit-0123456789abcdef").secret == b"explicit-0123456789abcdef"
