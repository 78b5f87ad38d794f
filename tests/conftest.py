"""Shared fixtures: real nodes in this process and real peer processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bndl_like.rmi import Node
from bndl_like.rmi import secrets as rmi_secrets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_SECRET = "test-secret-of-the-rmi-tests-0123456789"


@pytest.fixture(scope="session")
def _runtime_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("runtime"))


@pytest.fixture(autouse=True)
def _fresh_env_secret(monkeypatch, _runtime_dir):
    """A BNDL_LIKE_SECRET read by one test is not remembered for the next; the local secret
    of nodes on loopback given none lives in the test session's own runtime dir."""
    monkeypatch.setattr(rmi_secrets, "_env_secret", None)
    monkeypatch.setattr(rmi_secrets, "_warned", set())
    monkeypatch.setenv("XDG_RUNTIME_DIR", _runtime_dir)


async def wait_for_condition(predicate, timeout: float = 10.0, interval: float = 0.01,
                             message: str = "condition") -> None:
    """Wait until ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def wait_until(predicate, timeout: float = 15.0, message: str = "condition") -> None:
    """Poll ``predicate()`` until true; fail the test after ``timeout`` seconds (sync code)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)


class PeerProcess:
    """A node in a child process running tests/rmi/peer_process.py."""

    def __init__(self, name: str, seeds=(), secret: str | None = TEST_SECRET, **options):
        cmd = [sys.executable, "-m", "tests.rmi.peer_process", "--name", name]
        if seeds:
            cmd += ["--seeds", ",".join(seeds)]
        for key, value in options.items():
            cmd += ["--" + key.replace("_", "-"), str(value)]
        env = dict(os.environ)
        env.pop("BNDL_LIKE_SECRET", None)
        if secret is not None:
            env["BNDL_LIKE_SECRET"] = secret
        self.name = name
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"peer process {name} did not start: {line!r}")
        self.addresses = json.loads(line[6:])
        self.address = self.addresses[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def spawn_peer():
    started: list[PeerProcess] = []

    def spawn(name: str, seeds=(), **options) -> PeerProcess:
        peer = PeerProcess(name, seeds, **options)
        started.append(peer)
        return peer

    yield spawn
    for peer in started:
        peer.stop()


@pytest.fixture
async def make_node():
    nodes: list[Node] = []

    async def make(name: str | None = None, node_type: str = "driver", **options) -> Node:
        options.setdefault("secret", TEST_SECRET)
        options.setdefault("listen", "tcp://127.0.0.1:0")
        node = Node(name, node_type, **options)
        await node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.stop()
