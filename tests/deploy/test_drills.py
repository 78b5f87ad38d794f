"""Failure drills on one host: a hung worker, a dead driver, hostile bytes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bndl_like import ExecutionContext, FuncTask, Job
from bndl_like.rmi import HandshakeError, Node

from ..execute import helpers
from .test_cli import ROOT, SECRET, start, stop, wait_until


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def size(path) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


@pytest.mark.timeout(90)
def test_sigstop_worker_is_lost_its_tasks_rerun_and_it_rejoins_after_sigcont(seed_ctx):
    workers = [start("worker", "--seeds", seed_ctx.node.addresses[0], "--heartbeat-timeout", "2")
               for _ in range(2)]
    try:
        assert seed_ctx.await_workers(worker_count=2, stable_timeout=20) == 2
        by_pid = {w.pid: w.name for w in seed_ctx.workers}
        frozen = workers[0]
        first = [FuncTask(seed_ctx, ("a", i), helpers.sleep_then, (0.02, i)) for i in range(60)]
        second = [FuncTask(seed_ctx, ("b", i), helpers.add, (first[i], first[-1 - i])) for i in range(60)]
        results = seed_ctx.execute(Job(seed_ctx, first + second), order_results=False)
        got = [next(results) for _ in range(20)]
        frozen.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        got += list(results)
        took = time.monotonic() - stopped_at
        assert len(got) == 120
        assert sorted(got) == sorted(list(range(60)) + [i + 59 - i for i in range(60)])
        assert took < 2.0 + 5.0  # lost within the heartbeat timeout, the rest re-ran elsewhere
        assert by_pid[frozen.pid] not in {w.name for w in seed_ctx.workers}
        frozen.send_signal(signal.SIGCONT)
        wait_until(lambda: seed_ctx.worker_count == 2, timeout=20, message="the worker rejoins")
        again = [FuncTask(seed_ctx, i, helpers.pid_of) for i in range(40)]
        assert frozen.pid in set(seed_ctx.execute(Job(seed_ctx, again)))
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
            stop(proc)


@pytest.mark.timeout(90)
def test_killing_the_driver_frees_the_worker_which_serves_the_next_driver(tmp_path):
    worker = start("worker", "--heartbeat-timeout", "2", env={"BNDL_LIKE_NAME": "drill-worker"})
    try:
        address = None
        deadline = time.monotonic() + 20
        while address is None and time.monotonic() < deadline:
            line = worker.stderr.readline()
            if "ready on" in line:
                address = line.split("ready on ")[1].split(",")[0].strip()
        assert address, "the worker did not start"
        ticks = str(tmp_path / "ticks")
        env = {**os.environ, "BNDL_LIKE_SECRET": SECRET}
        driver = subprocess.Popen([sys.executable, "-m", "tests.deploy.drill_driver", address, ticks],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: size(ticks) > 10, timeout=30, message="the job runs")
            loaded = rss(worker.pid)
            assert loaded > 150 << 20  # three 64 MiB outputs are held for the driver
        finally:
            driver.kill()
            driver.wait()
        killed_at = time.monotonic()
        # the worker notices within its heartbeat timeout, cancels the task and drops the outputs
        wait_until(lambda: rss(worker.pid) < loaded - (150 << 20), timeout=15, message="memory freed")
        before = size(ticks)
        time.sleep(0.3)
        assert size(ticks) == before, "the orphaned task kept running"
        assert time.monotonic() - killed_at < 2.0 + 5.0
        with ExecutionContext(seeds=[address], secret=SECRET) as ctx:
            assert ctx.await_workers(worker_count=1, stable_timeout=20) == 1
            status = ctx._portal.run(lambda: ctx.workers[0].call("tasks", "status"))
            assert status["jobs"] == 0 and status["running"] == 0
            assert list(ctx.execute(Job(ctx, [FuncTask(ctx, 0, helpers.add, (2, 3))]))) == [5]
    finally:
        _, err = stop(worker)
    assert "lost" in err  # the loss of the driver is in the worker's log


@pytest.mark.timeout(60)
def test_wrong_secret_and_garbage_on_a_worker_port(seed_ctx):
    worker = start("worker", "--seeds", seed_ctx.node.addresses[0])
    try:
        assert seed_ctx.await_workers(worker_count=1, stable_timeout=20) == 1
        address = seed_ctx.workers[0].addresses[0]
        host, port = address[len("tcp://"):].rsplit(":", 1)
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(os.urandom(2048))
                sock.settimeout(5)
                try:
                    while sock.recv(4096):
                        pass
                except ConnectionResetError:
                    pass

        async def intrude():
            node = Node("intruder", "driver", secret="wrong-secret-of-32-bytes-at-least")
            await node.start()
            try:
                with pytest.raises(HandshakeError, match="authentication failed"):
                    await node.connect(address)
            finally:
                await node.stop()

        seed_ctx._portal.run(intrude())
        tasks = [FuncTask(seed_ctx, i, helpers.add, (i, i)) for i in range(20)]
        assert list(seed_ctx.execute(Job(seed_ctx, tasks))) == [2 * i for i in range(20)]
    finally:
        _, err = stop(worker)
    # the intruder never proved the secret, so its name is not taken from it: the address is logged
    refusals = [line for line in err.splitlines() if "refused connection from 127.0.0.1" in line]
    assert len(refusals) == 1 and "authentication failed" in refusals[0]
    assert "Traceback" not in err
