"""A supervisor started without seeds makes a cluster found whole through any of its workers,
also after a worker was killed and restarted, with no warning repeated while all works."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest

from bndl_like import ExecutionContext

from ..conftest import wait_until
from .test_cli import ROOT, SECRET, cli, stop

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Supervisor:
    """``bndl-like supervisor`` in a subprocess; its stderr (all its workers' logs) collected."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "bndl_like.cli", "supervisor", *args],
                                     cwd=ROOT, env={**os.environ, "BNDL_LIKE_SECRET": SECRET},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def ready_addresses(self) -> list[str]:
        """The address of each worker that said it is ready, in order."""
        return [m.group(1) for line in list(self.lines)
                if (m := re.search(r" ready on (tcp://\S+?),? ", line))]

    def stop(self) -> str:
        stop(self.proc)
        self._reader.join(10)
        return "\n".join(self.lines)


def names(ctx) -> set[str]:
    return {w.name for w in ctx.workers}


def quiet_driver(ctx) -> None:
    """Redial and look for peers often, so a repeated warning would show within a second."""
    ctx.node.redial_max = 0.1
    ctx.node.discovery_interval = 0.05


def assert_no_repeated_warnings(records: list[logging.LogRecord], log: str) -> None:
    """No "already connected" warning, and no warning twice: a seed down while its worker
    restarts is said once (and once more at the start, when the workers were not up yet)."""
    driver = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    workers = [line.split(" ", 2)[2] for line in log.splitlines() if " WARNING " in line]
    for messages in (driver, workers):
        assert not [m for m in messages if "already connected" in m], messages
        others = [m for m in messages if "cannot reach" not in m]
        assert len(others) == len(set(others)), messages
    assert len([m for m in driver if "cannot reach" in m]) <= 2, driver
    assert "cannot reach" not in log, log


def test_a_supervisor_without_seeds_is_found_whole_through_one_worker(caplog):
    caplog.set_level(logging.INFO, logger="bndl_like.rmi")
    port = free_port()
    seed = f"tcp://127.0.0.1:{port}"
    sup = Supervisor("--workers", "2", "--listen", seed, "--heartbeat-timeout", "2")
    try:
        with ExecutionContext(seeds=[seed], secret=SECRET, heartbeat_timeout=2.0,
                              heartbeat_interval=0.25) as ctx:
            quiet_driver(ctx)
            assert ctx.await_workers(worker_count=2, stable_timeout=30) == 2
            result = cli("status", "--seeds", seed)
            assert result.returncode == 0, result.stderr
            listed = {line.split()[0] for line in result.stdout.strip().splitlines()[1:]}
            assert listed == names(ctx)
            # the worker on the seed's port is killed; the supervisor restarts it on that port
            victim = next(w for w in ctx.workers if w.addresses[0] == seed)
            os.kill(victim.pid, signal.SIGKILL)
            wait_until(lambda: len(names(ctx) - {victim.name}) == 2, timeout=30,
                       message="the restarted worker is found again")
            assert any(w.addresses[0] == seed for w in ctx.workers)
            rounds = ctx.node.discovery_rounds
            wait_until(lambda: ctx.node.discovery_rounds >= rounds + 40, message="40 discovery rounds")
            assert ctx.await_workers(worker_count=2) == 2
    finally:
        log = sup.stop()
    assert_no_repeated_warnings(caplog.records, log)


def test_a_restarted_worker_on_a_new_port_is_found_through_its_siblings(caplog):
    """Port 0: the restarted worker listens elsewhere, nobody's seed; its live sibling
    leads the driver to it."""
    caplog.set_level(logging.INFO, logger="bndl_like.rmi")
    sup = Supervisor("--workers", "2", "--heartbeat-timeout", "2")
    try:
        wait_until(lambda: len(sup.ready_addresses()) == 2, timeout=30, message="two workers ready")
        first = sup.ready_addresses()[0]
        with ExecutionContext(seeds=[first], secret=SECRET, heartbeat_timeout=2.0,
                              heartbeat_interval=0.25) as ctx:
            quiet_driver(ctx)
            assert ctx.await_workers(worker_count=2, stable_timeout=30) == 2
            victim = next(w for w in ctx.workers if w.addresses[0] != first)
            os.kill(victim.pid, signal.SIGKILL)
            wait_until(lambda: len(names(ctx) - {victim.name}) == 2, timeout=30,
                       message="the restarted worker is found again")
            assert victim.addresses[0] not in [w.addresses[0] for w in ctx.workers]
    finally:
        log = sup.stop()
    assert_no_repeated_warnings(caplog.records, log)
