"""Start-up and shut-down of a local cluster: workers forked from a pre-imported fork server.

Real worker processes on 127.0.0.1. What each test reads of a process comes from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bndl_like import ExecutionContext
from bndl_like.deploy import forkserver
from bndl_like.local import LocalWorkers

from ..conftest import alive, wait_until
from .test_cli import ROOT

pytestmark = pytest.mark.timeout(60)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def worker_pids(ctx) -> list[int]:
    return sorted(w.pid for w in ctx.workers)


def test_clusters_of_a_process_share_one_single_threaded_server_without_numpy():
    with ExecutionContext.local(workers=2) as ctx:
        pids = worker_pids(ctx)
        servers = {parent_of(pid) for pid in pids}
        assert len(servers) == 1 and os.getpid() not in servers, servers
        server = servers.pop()
        assert b"bndl_like.deploy._forkserve" in cmdline(server)
        assert parent_of(server) == os.getpid()
        assert os.listdir(f"/proc/{server}/task") == [str(server)]  # no thread but its main one
        with open(f"/proc/{server}/maps") as f:
            maps = f.read()
        assert "numpy" not in maps and "blas" not in maps.lower()  # BLAS loads in each worker
        started = time.monotonic()
    assert time.monotonic() - started < 2.0  # close() waits on exits, no fixed timeout
    assert not any(alive(pid) for pid in pids)
    assert alive(server)  # kept for the next cluster
    with ExecutionContext.local(workers=1) as ctx:
        (pid,) = worker_pids(ctx)
        assert parent_of(pid) == server
        assert ctx.run_function(os.getpid) == pid


def test_forked_workers_lead_sessions_of_their_own():
    with ExecutionContext.local(workers=2) as ctx:
        for pid in worker_pids(ctx):
            server = parent_of(pid)
            assert os.getsid(pid) == os.getpgid(pid) == pid
            assert os.getpgid(server) != pid
        assert sorted(ctx.run_each_worker(os.getpgrp).values()) == worker_pids(ctx)


def test_the_secret_is_in_no_command_line_and_not_in_the_servers_environment():
    secret = LocalWorkers.new_secret()
    with ExecutionContext.local(workers=2, secret=secret) as ctx:
        pids = worker_pids(ctx)
        server = parent_of(pids[0])
        for pid in (server, *pids):
            assert secret not in cmdline(pid)
            with open(f"/proc/{pid}/environ", "rb") as f:  # as the process was exec'd
                assert secret not in f.read()
        # the workers have it nonetheless (they joined), and removed it from their environment
        assert set(ctx.run_each_worker(os.environ.get, "BNDL_LIKE_SECRET").values()) == {None}


def test_a_sigkilled_forked_worker_is_restarted_and_its_exit_status_told():
    with ExecutionContext.local(workers=2) as ctx:
        victim, other = worker_pids(ctx)
        server = parent_of(victim)
        os.kill(victim, signal.SIGKILL)
        assert ctx._local.exit_status(victim, timeout=10) == "killed by SIGKILL"
        wait_until(lambda: len(ctx.workers) == 2 and victim not in worker_pids(ctx), 20,
                   "the replacement worker")
        (new,) = set(worker_pids(ctx)) - {other}
        assert parent_of(new) == server and os.getsid(new) == new
        assert sorted(ctx.run_each_worker(os.getpid).values()) == sorted([other, new])
        assert ctx._local.exit_status(other, timeout=0) is None  # still running


DRIVER = """
import os, sys, time
from bndl_like import ExecutionContext
ctx = ExecutionContext.local(workers=2)
pids = sorted(w.pid for w in ctx.workers)
with open(f"/proc/{pids[0]}/stat") as f:
    server = int(f.read().rsplit(")", 1)[1].split()[1])
print(server, *pids, flush=True)
time.sleep(60)
"""


def test_the_driver_dying_stops_its_fork_server_and_workers():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        pids = [int(pid) for pid in driver.stdout.readline().split()]
        assert len(pids) == 3 and all(alive(pid) for pid in pids), pids
        driver.kill()
        driver.wait()
        wait_until(lambda: not any(alive(pid) for pid in pids), 10, "the server and workers to exit")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def test_an_idle_server_is_stopped_and_a_new_one_started_on_demand(monkeypatch):
    monkeypatch.setattr(forkserver, "IDLE_TIMEOUT", 0.3)
    with ExecutionContext(seeds=[], listen="tcp://127.0.0.1:0", secret=LocalWorkers.new_secret()) as ctx:
        # another environment than other tests' clusters: a server of its own
        env = {"BNDL_LIKE_TEST_STARTUP": str(os.getpid())}
        first = LocalWorkers(1, ctx.node.addresses[0], ctx.node.secret, extra_env=env)
        try:
            ctx.await_workers(worker_count=1, stable_timeout=30)
            server = first.supervisor._server
            assert server is not None and server.alive and server.idle_timeout == 0.3
        finally:
            first.stop()
        wait_until(lambda: not alive(server.process.pid), 10, "the idle server to exit")
        assert not server.alive
        second = LocalWorkers(1, ctx.node.addresses[0], ctx.node.secret, extra_env=env)
        try:
            ctx.await_workers(worker_count=1, stable_timeout=30)
            assert second.supervisor._server is not server
            assert parent_of(second.processes[0].pid) == second.supervisor._server.process.pid
        finally:
            second.stop()


def test_a_process_forked_from_the_driver_does_not_hold_the_servers_socket():
    with ExecutionContext.local(workers=1) as ctx:
        server = parent_of(worker_pids(ctx)[0])
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                inodes = set()
                for fd in os.listdir("/proc/self/fd"):
                    try:
                        inodes.add(os.readlink(f"/proc/self/fd/{fd}"))
                    except OSError:  # the listing's own descriptor, closed by now
                        pass
                sockets = [i for i in inodes if i.startswith("socket:")]
                os.write(write, "\n".join(["listed", *sockets]).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            child_sockets = set(f.read().split())
        os.waitpid(child, 0)
        # the driver's end of the control socket (the server holds the other end)
        (ours,) = {s for s in forkserver._servers.values() if s.process.pid == server}
        driver_end = os.readlink(f"/proc/self/fd/{ours.sock.fileno()}")
        assert "listed" in child_sockets  # the child did list its descriptors
        assert driver_end not in child_sockets, (driver_end, child_sockets)
