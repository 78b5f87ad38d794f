"""The commands and the secret: never on the command line, never inherited further than a worker;
the local secret on one host; TLS options."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bndl_like import FuncTask, Job
from bndl_like.cli import _worker_argv, build_parser

from ..conftest import wait_until
from ..execute import helpers
from .test_cli import ROOT, SECRET, stop

VALUE = "hunter2-do-not-print-me"


def clean_env(runtime_dir, **extra) -> dict:
    """The environment without any secret or option of ours, with its own runtime dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNDL_LIKE_")}
    return {**env, "XDG_RUNTIME_DIR": str(runtime_dir), **extra}


def run(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bndl_like.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def runtime_dir(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    return runtime


@pytest.mark.parametrize("argv", [["worker", "--secret", VALUE], ["status", f"--secret={VALUE}"],
                                  [f"--secret={VALUE}", "supervisor"]])
def test_a_secret_on_the_command_line_is_refused_without_echoing_it(argv, runtime_dir):
    result = run(*argv, env=clean_env(runtime_dir))
    assert result.returncode == 2
    assert result.stderr.startswith("bndl-like: --secret is not an option: a secret on the command line "
                                    "is visible to every user in ps")
    assert "hunter2" not in result.stdout + result.stderr


def test_an_abbreviation_is_not_taken_for_an_option(tmp_path, runtime_dir):
    path = tmp_path / "secret"
    path.write_text(SECRET)
    os.chmod(path, 0o600)
    result = run("worker", "--secret-f", str(path), env=clean_env(runtime_dir))
    assert result.returncode == 2 and "unrecognized arguments: --secret-f" in result.stderr
    result = run("supervisor", "--work", "2", env=clean_env(runtime_dir))
    assert result.returncode == 2 and "unrecognized arguments: --work" in result.stderr


def test_tls_options_are_in_every_help(runtime_dir):
    for command in ("worker", "supervisor", "status", "shell"):
        text = run(command, "--help", env=clean_env(runtime_dir)).stdout
        for option in ("tls-cert", "tls-key", "tls-ca"):
            assert f"--{option}" in text and "BNDL_LIKE_" + option.replace("-", "_").upper() in text
    assert "tcp://host:5000+" in run("worker", "--help", env=clean_env(runtime_dir)).stdout


def test_the_supervisor_gives_its_workers_a_walking_port_and_no_secret_argument():
    args = build_parser().parse_args(["supervisor", "--listen", "tcp://10.0.0.6:5000", "--secret-file",
                                      "/etc/secret", "--tls-cert", "/c.pem", "--tls-key", "/k.pem",
                                      "--tls-ca", "/ca.pem"])
    argv = _worker_argv(args)
    assert argv[argv.index("--listen") + 1] == "tcp://10.0.0.6:5000+"
    assert "--secret-file" not in argv and "/etc/secret" not in argv
    assert argv[argv.index("--tls-ca") + 1] == "/ca.pem"
    for listen in ("tcp://127.0.0.1:0", "tcp://10.0.0.6:5000+"):
        args = build_parser().parse_args(["supervisor", "--listen", listen])
        assert _worker_argv(args)[1] == listen


def test_a_weak_or_missing_secret_is_one_clear_line(runtime_dir):
    weak = run("worker", env=clean_env(runtime_dir, BNDL_LIKE_SECRET="tiny-s3cr3t"))
    assert weak.returncode == 2
    assert weak.stderr.startswith("bndl-like worker: the secret from BNDL_LIKE_SECRET is 11 bytes")
    assert "tiny-s3cr3t" not in weak.stderr
    empty = run("worker", env=clean_env(runtime_dir, BNDL_LIKE_SECRET=""))
    assert empty.returncode == 2 and "BNDL_LIKE_SECRET is set but empty" in empty.stderr
    remote = run("worker", "--listen", "tcp://0.0.0.0:0", env=clean_env(runtime_dir))
    assert remote.returncode == 2 and remote.stderr.startswith("bndl-like worker: no cluster secret")


def test_incomplete_tls_options_are_one_clear_line(tmp_path, runtime_dir):
    cert = tmp_path / "cert.pem"
    cert.write_text("whatever")
    result = run("worker", "--tls-cert", str(cert), env=clean_env(runtime_dir, BNDL_LIKE_SECRET=SECRET))
    assert result.returncode == 2
    assert result.stderr.startswith("bndl-like worker: TLS needs")
    assert "missing: tls_key, tls_ca" in result.stderr


def test_a_worker_on_loopback_uses_the_local_secret_that_status_finds(runtime_dir, tmp_path):
    env = clean_env(runtime_dir)
    worker = subprocess.Popen([sys.executable, "-m", "bndl_like.cli", "worker", "--name", "local-worker"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        address = None
        for line in worker.stderr:
            if " ready on " in line:
                address = line.split(" ready on ")[1].split(",")[0].strip()
                break
        assert address, "the worker did not start"
        assert os.path.exists(runtime_dir / "bndl-like" / "secret")
        result = run("status", "--seeds", address, "--timeout", "5", env=env)
        assert result.returncode == 0, result.stderr
        assert "local-worker" in result.stdout
        # another user's (here: another runtime dir's) local secret does not get in
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        refused = run("status", "--seeds", address, "--timeout", "1", env=clean_env(other))
        assert refused.returncode == 1 and "no worker answered" in refused.stderr
    finally:
        stop(worker)


def test_the_supervisor_hands_the_secret_to_its_workers_by_environment_only(seed_ctx, tmp_path,
                                                                            runtime_dir):
    path = tmp_path / "secret"
    path.write_text(SECRET)
    os.chmod(path, 0o600)
    sup = subprocess.Popen([sys.executable, "-m", "bndl_like.cli", "supervisor", "--workers", "1",
                            "--seeds", seed_ctx.node.addresses[0], "--secret-file", str(path)],
                           cwd=ROOT, env=clean_env(runtime_dir), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        assert seed_ctx.await_workers(worker_count=1, stable_timeout=20) == 1
        [worker] = seed_ctx.workers
        with open(f"/proc/{worker.pid}/cmdline", "rb") as f:
            cmdline = f.read().decode()
        assert SECRET not in cmdline and "secret" not in cmdline
        # the worker dropped it from its environment: its tasks and their processes never see it
        assert list(seed_ctx.execute(Job(seed_ctx, [FuncTask(seed_ctx, 0, helpers.secret_in_env)]))) == [
            (False, False)]
    finally:
        stop(sup)
    wait_until(lambda: sup.poll() is not None, message="the supervisor stops")
