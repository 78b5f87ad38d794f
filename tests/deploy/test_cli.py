"""The bndl-like commands as an operator runs them: real processes, loopback only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bndl_like import FuncTask, Job

from ..conftest import alive, wait_until
from ..execute import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "deploy-test-secret-0123456789abcdef"


def cli(*args, env=None, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "BNDL_LIKE_SECRET": SECRET, **(env or {})}
    return subprocess.run([sys.executable, "-m", "bndl_like.cli", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=60, **kw)


def start(*args, env=None) -> subprocess.Popen:
    full_env = {**os.environ, "BNDL_LIKE_SECRET": SECRET, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "bndl_like.cli", *args], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout=15) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out, err




def worker_pids(ctx) -> dict:
    return {w.name: w.pid for w in ctx.workers}


def test_help_documents_every_option_and_its_variable():
    for command in ("worker", "supervisor", "status", "shell"):
        result = cli(command, "--help")
        assert result.returncode == 0
        for line in result.stdout.split("--")[1:]:
            flag = line.split()[0]
            if flag in ("help",):
                continue
            assert "BNDL_LIKE_" in result.stdout
        assert "--seeds" in result.stdout and "BNDL_LIKE_SEEDS" in result.stdout
    text = cli("worker", "--help").stdout
    for option in ("listen", "seeds", "cluster", "secret-file", "concurrency", "heartbeat-timeout"):
        assert f"--{option}" in text and "BNDL_LIKE_" + option.replace("-", "_").upper() in text
    assert "--secret " not in text  # never on the command line


def test_secret_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET)
    os.chmod(path, 0o644)
    result = cli("worker", "--secret-file", str(path), env={"BNDL_LIKE_SECRET": ""})
    assert result.returncode == 2
    assert "open to group or others" in result.stderr and f"chmod 600 {path}" in result.stderr


def test_worker_from_environment_joins_and_logs_parseably(seed_ctx, tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    os.chmod(path, 0o600)
    proc = start("worker", env={"BNDL_LIKE_SEEDS": seed_ctx.node.addresses[0],
                                "BNDL_LIKE_SECRET_FILE": str(path), "BNDL_LIKE_SECRET": "",
                                "BNDL_LIKE_NAME": "env-worker"})
    try:
        assert seed_ctx.await_workers(worker_count=1, stable_timeout=20) == 1
        assert seed_ctx.workers[0].name == "env-worker"
        assert list(seed_ctx.execute(Job(seed_ctx, [FuncTask(seed_ctx, 0, helpers.add, (1, 2))]))) == [3]
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0
    lines = [line for line in err.splitlines() if " INFO " in line]
    assert lines, err
    # time, level, node name, logger: message
    stamp, level, node, logger = lines[0].split(" ", 4)[:4]
    assert stamp[:4].isdigit() and "T" in stamp and level == "INFO" and node == "env-worker"
    assert logger.endswith(":")


def test_supervisor_restarts_a_killed_worker_and_stops_cleanly(seed_ctx):
    sup = start("supervisor", "--workers", "2", "--seeds", seed_ctx.node.addresses[0],
                "--heartbeat-timeout", "2")
    try:
        assert seed_ctx.await_workers(worker_count=2, stable_timeout=20) == 2
        before = worker_pids(seed_ctx)
        tasks = [FuncTask(seed_ctx, i, helpers.sleep_then, (0.02, i)) for i in range(120)]
        results = seed_ctx.execute(Job(seed_ctx, tasks), order_results=False)
        got = [next(results) for _ in range(10)]
        victim_name, victim_pid = sorted(before.items())[0]
        os.kill(victim_pid, signal.SIGKILL)
        got += list(results)
        assert sorted(got) == list(range(120))
        # the supervisor starts a new worker; the driver sees it join and uses it
        wait_until(lambda: seed_ctx.worker_count == 2 and victim_name not in worker_pids(seed_ctx),
                   message="the replacement worker joins")
        replacement = (set(worker_pids(seed_ctx)) - set(before)).pop()
        again = [FuncTask(seed_ctx, i, helpers.pid_of) for i in range(40)]
        list(seed_ctx.execute(Job(seed_ctx, again)))
        assert replacement in {t.executed_on_last() for t in again}
        pids = list(worker_pids(seed_ctx).values())
    finally:
        started = time.monotonic()
        out, err = stop(sup)
    assert sup.returncode == 0
    assert time.monotonic() - started < 10
    assert not any(alive(pid) for pid in pids), "a worker outlived its supervisor"
    assert "SIGKILL" in err and "restarting" in err


def test_supervisor_gives_up_on_a_crash_loop():
    # a port out of range: every worker exits at once
    started = time.monotonic()
    result = cli("supervisor", "--workers", "1", "--listen", "tcp://127.0.0.1:99999", "--max-restarts", "2")
    assert result.returncode == 1
    assert "crash loop" in result.stderr and "giving up" in result.stderr
    assert time.monotonic() - started < 30


def test_killing_the_supervisor_leaves_no_worker():
    # not start(): its pipes would stay open in the workers while they stop
    sup = subprocess.Popen([sys.executable, "-m", "bndl_like.cli", "supervisor", "--workers", "2"],
                           cwd=ROOT, env={**os.environ, "BNDL_LIKE_SECRET": SECRET},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _children(sup.pid) and len(_children(sup.pid)) == 2, message="workers start")
        children = _children(sup.pid)
    finally:
        sup.kill()
        sup.wait()
    wait_until(lambda: not any(alive(pid) for pid in children), timeout=20,
               message="workers follow their supervisor")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def test_status_lists_workers_and_fails_without_any(seed_ctx):
    sup = start("supervisor", "--workers", "2", "--seeds", seed_ctx.node.addresses[0])
    try:
        assert seed_ctx.await_workers(worker_count=2, stable_timeout=20) == 2
        result = cli("status", "--seeds", seed_ctx.node.addresses[0])
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert lines[0].split()[:3] == ["WORKER", "HOST", "ADDRESS"]
        names = {line.split()[0] for line in lines[1:]}
        assert names == {w.name for w in seed_ctx.workers}
        for line in lines[1:]:
            name, host, address, running, queued, uptime = line.split()[:6]
            assert host == "127.0.0.1" and address.startswith("tcp://127.0.0.1:")
            assert running == "0" and queued == "0" and uptime.endswith("s")
    finally:
        stop(sup)
    nobody = cli("status", "--seeds", seed_ctx.node.addresses[0], "--timeout", "1")
    assert nobody.returncode == 1 and "no worker answered" in nobody.stderr


def test_shell_has_a_connected_ctx(seed_ctx):
    sup = start("supervisor", "--workers", "1", "--seeds", seed_ctx.node.addresses[0])
    try:
        assert seed_ctx.await_workers(worker_count=1, stable_timeout=20) == 1
        worker = seed_ctx.workers[0].addresses[0]
        script = ("from tests.execute import helpers\n"
                  "print('RESULT', list(ctx.execute(Job(ctx, [FuncTask(ctx, 0, helpers.add, (20, 22))]))))\n")
        result = cli("shell", "--seeds", worker, input=script)
        assert result.returncode == 0, result.stderr
        assert "RESULT [42]" in result.stdout
    finally:
        stop(sup)


def _closed_port_address() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.timeout(60)
def test_status_and_shell_say_why_they_find_no_worker(seed_ctx):
    """Exit 1 at once with each seed and its error: a closed port, a wrong secret, no secret
    (the local one), another cluster."""
    driver = seed_ctx.node.addresses[0]
    closed = _closed_port_address()
    refused = cli("status", "--seeds", closed, "--timeout", "1")
    assert refused.returncode == 1
    assert f"seed {closed}: connection refused: nothing listens on that port" in refused.stderr

    started = time.monotonic()
    wrong = cli("status", "--seeds", driver, "--timeout", "20",
                env={"BNDL_LIKE_SECRET": "a-wrong-secret-0123456789abcdefgh"})
    assert wrong.returncode == 1
    assert f"seed {driver}: authentication failed: the secrets of the two nodes differ" in wrong.stderr
    assert time.monotonic() - started < 15  # not the 20 s: waiting does not cure a wrong secret

    other = cli("shell", "--seeds", driver, "--cluster", "other", input="")
    assert other.returncode == 1 and "bndl-like shell: no worker joined within" in other.stderr
    assert "another cluster: cluster name mismatch: this node is in cluster 'other'" in other.stderr

    env = {k: v for k, v in os.environ.items() if k != "BNDL_LIKE_SECRET"}
    none = subprocess.run([sys.executable, "-m", "bndl_like.cli", "shell", "--seeds", driver],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, input="")
    assert none.returncode == 1
    assert "authentication failed: no secret given" in none.stderr
    # said once as it happened, once as the reason to exit; not repeated while waiting
    assert none.stderr.count("no secret given") == 2, none.stderr
