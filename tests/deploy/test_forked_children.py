"""What a task forks or starts neither holds the worker's sockets nor outlives it.

Real worker processes on 127.0.0.1. The task functions are importable by the workers; a forked
child always ends with ``os._exit`` and never returns into the worker's code. Every process a
test makes a task start is killed by pid in a ``finally`` (only while it is still in the group
it was started in, so a reused pid is never hit).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from bndl_like import ExecutionContext, NotConnected, RemoteError

from ..conftest import wait_until
from .test_cli import ROOT, SECRET

pytestmark = pytest.mark.timeout(60)


# -- run by the workers ---------------------------------------------------------------------------

def fork_sleeper(seconds: float = 60.0, own_session: bool = False) -> int:
    """Fork a child that sleeps ``seconds``; its pid. ``own_session``: the child leaves the
    worker's process group, so only the release of the sockets at fork can help."""
    pid = os.fork()
    if pid == 0:
        try:
            if own_session:
                os.setsid()
            time.sleep(seconds)
        finally:
            os._exit(0)
    return pid


def start_escapees(seconds: int = 60) -> tuple[int, int]:
    """A ``sleep`` subprocess and a double-forked grandchild (an orphan, no longer a descendant
    of the worker): their pids."""
    sleeper = subprocess.Popen(["sleep", str(seconds)])
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read)
            grandchild = os.fork()
            if grandchild == 0:
                os.close(write)
                time.sleep(seconds)
            else:
                os.write(write, str(grandchild).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        grandchild = int(f.read())
    os.waitpid(child, 0)
    return sleeper.pid, grandchild


# -- helpers of the tests -------------------------------------------------------------------------

def group_of(pid: int) -> int | None:
    """The process group of live ``pid``; None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state, _, pgrp = f.read().rsplit(b")", 1)[1].split()[:3]
    except (OSError, IndexError, ValueError):
        return None
    return None if state == b"Z" else int(pgrp)


def session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def kill_if_in(pid: int, group: int) -> None:
    """SIGKILL ``pid`` if it still lives in process ``group`` (not a reused pid)."""
    if group_of(pid) == group:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_gone(pids, timeout: float = 5.0) -> None:
    wait_until(lambda: not any(group_of(pid) for pid in pids), timeout=timeout,
               message=f"pids {pids} to be gone")


def port_free(port: int) -> bool:
    """Whether nobody listens on ``port`` of 127.0.0.1."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_worker(seed: str, log_path, argv=(), **popen) -> subprocess.Popen:
    """``bndl-like worker`` joining ``seed``; stderr to a file, as a forked child inherits
    the worker's pipes and would hold them open."""
    env = {**os.environ, "BNDL_LIKE_SECRET": SECRET, "BNDL_LIKE_SEEDS": seed,
           "BNDL_LIKE_LOG_LEVEL": "INFO"}
    with open(log_path, "wb") as log:
        return subprocess.Popen([*argv, sys.executable, "-m", "bndl_like.cli", "worker"], cwd=ROOT,
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log, **popen)


def end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


# -- the tests ------------------------------------------------------------------------------------

def test_a_killed_worker_is_lost_at_once_though_its_forked_child_lives_on():
    """The child left the worker's group (nothing kills it): the worker's sockets were
    released in it at fork, so the driver reads EOF at once and the port is free."""
    with ExecutionContext.local(workers=1) as ctx:
        assert ctx.await_workers() == 1
        [worker] = ctx.workers
        port = int(worker.addresses[0].rsplit(":", 1)[1])
        lost = threading.Event()
        ctx.node.on_peer_lost.append(lambda peer: peer.name == worker.name and lost.set())
        child = None
        try:
            child = ctx.run_function(fork_sleeper, 60.0, True)
            wait_until(lambda: session_of(child) == child, timeout=5, message="the child's setsid")
            os.kill(worker.pid, signal.SIGKILL)
            killed = time.monotonic()
            assert lost.wait(ctx.node.heartbeat_timeout + 5), "the driver never noticed"
            noticed = time.monotonic() - killed
            assert noticed < 3.0, (f"the loss was noticed after {noticed:.1f}s: no EOF, the forked "
                                   "child holds the connection")
            assert group_of(child) == child  # still alive: it was not what helped
            # the dying worker's own descriptors may close just after its connection's
            wait_until(lambda: port_free(port), timeout=3, message=f"port {port} to be free")
        finally:
            if child is not None:
                kill_if_in(child, child)


def test_nothing_a_task_started_outlives_the_context():
    ctx = ExecutionContext.local(workers=1)
    pids, group = (), None
    try:
        assert ctx.await_workers() == 1
        group = ctx.workers[0].pid
        pids = ctx.run_function(start_escapees)
        assert [group_of(pid) for pid in pids] == [group, group]
        ctx.close()
        wait_gone(pids)
    finally:
        ctx.close()
        for pid in pids:
            kill_if_in(pid, group)


def test_a_dead_workers_group_is_killed_when_it_is_restarted():
    with ExecutionContext.local(workers=1) as ctx:
        assert ctx.await_workers() == 1
        victim = ctx.workers[0].pid
        child = None
        try:
            child = ctx.run_function(fork_sleeper, 60.0)
            assert group_of(child) == victim
            os.kill(victim, signal.SIGKILL)
            wait_gone([child])
            wait_until(lambda: [w.pid for w in ctx.workers if w.pid != victim], timeout=20,
                       message="the restarted worker")
        finally:
            if child is not None:
                kill_if_in(child, victim)


def test_a_worker_stopping_cleanly_stops_its_process_group(seed_ctx, tmp_path):
    """No supervisor: the worker itself ends what its tasks started, orphans included."""
    proc = start_worker(seed_ctx.node.addresses[0], tmp_path / "worker.log", start_new_session=True)
    pids = ()
    try:
        assert seed_ctx.await_workers(worker_count=1, stable_timeout=20) == 1
        assert seed_ctx.workers[0].pid == proc.pid
        pids = (*seed_ctx.run_function(start_escapees), seed_ctx.run_function(fork_sleeper))
        assert [group_of(pid) for pid in pids] == [proc.pid] * 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        wait_gone(pids, timeout=3)
        log = (tmp_path / "worker.log").read_text()
        assert "stopping 3 processes that tasks started" in log, log
    finally:
        end(proc)
        for pid in pids:
            kill_if_in(pid, proc.pid)


def test_a_worker_that_does_not_lead_its_group_leaves_the_group_alone(seed_ctx, tmp_path):
    """Started by a shell that leads the group: the worker must not signal the shell's group."""
    shell = start_worker(seed_ctx.node.addresses[0], tmp_path / "worker.log",
                         argv=["sh", "-c", '"$@"; exit $?', "sh"], start_new_session=True)
    child = None
    try:
        assert seed_ctx.await_workers(worker_count=1, stable_timeout=20) == 1
        worker = seed_ctx.workers[0].pid
        assert worker != shell.pid and group_of(worker) == shell.pid
        child = seed_ctx.run_function(fork_sleeper)
        assert group_of(child) == shell.pid
        os.kill(worker, signal.SIGTERM)
        assert shell.wait(15) == 0
        assert group_of(child) == shell.pid  # still there
    finally:
        end(shell)
        if child is not None:
            kill_if_in(child, shell.pid)


def test_exit_status_names_the_signal_or_the_code():
    with ExecutionContext.local(workers=1) as ctx:
        assert ctx.await_workers() == 1
        local = ctx._local
        first = ctx.workers[0].pid
        assert local.exit_status(first, timeout=0.2) is None  # still running
        started = time.monotonic()
        assert local.exit_status(os.getpid(), timeout=5) is None  # not a worker: no wait
        assert time.monotonic() - started < 1
        os.kill(first, signal.SIGKILL)
        assert local.exit_status(first, timeout=5) == "killed by SIGKILL"
        wait_until(lambda: [w.pid for w in ctx.workers if w.pid != first], timeout=20,
                   message="the restarted worker")
        [second] = [w.pid for w in ctx.workers]
        with pytest.raises((NotConnected, RemoteError)):
            ctx.run_function(os._exit, 3)
        assert local.exit_status(second, timeout=5) == "exited with code 3"
        assert local.exit_status(first) == "killed by SIGKILL"  # remembered
