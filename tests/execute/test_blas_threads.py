"""Workers started by a local cluster or a supervisor run numeric libraries with as many
threads as they run tasks, not a thread per core each; a value the user set is kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from bndl_like import ExecutionContext
from bndl_like.deploy.threads import THREAD_VARIABLES, thread_limits, worker_concurrency

from ..conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def thread_settings(_=None) -> dict:
    """On a worker: the variables as it sees them, and the threads of numpy's BLAS."""
    import numpy  # noqa: F401  loads the BLAS library

    env = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # the test extra is not installed: the variables only
        return {"env": env, "blas": None}
    blas = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    return {"env": env, "blas": sorted(blas)}


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*THREAD_VARIABLES, "BNDL_LIKE_CONCURRENCY", "BNDL_LIKE_EXECUTE_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_local_workers_get_one_thread_each_by_default(clean_env):
    with ExecutionContext.local(workers=2, progress=False) as ctx:
        assert ctx.await_workers() == 2
        seen = ctx.run_each_worker(thread_settings)
    assert len(seen) == 2
    for settings in seen.values():
        assert settings["env"] == dict.fromkeys(THREAD_VARIABLES, "1")
        if settings["blas"] is not None:
            assert settings["blas"] == [1]


def test_a_value_the_user_set_is_kept_and_the_rest_follow_the_concurrency(clean_env):
    clean_env.setenv("OPENBLAS_NUM_THREADS", "3")
    clean_env.setenv("BNDL_LIKE_EXECUTE_CONCURRENCY", "2")
    with ExecutionContext.local(workers=1, progress=False) as ctx:
        assert ctx.await_workers() == 1
        (settings,) = ctx.run_each_worker(thread_settings).values()
    assert settings["env"] == {**dict.fromkeys(THREAD_VARIABLES, "2"), "OPENBLAS_NUM_THREADS": "3"}
    if settings["blas"] is not None:  # OpenBLAS caps its threads at the cores it sees
        assert settings["blas"] == [min(3, os.cpu_count() or 1)]


def test_supervised_workers_follow_their_concurrency_option(clean_env):
    clean_env.setenv("MKL_NUM_THREADS", "5")
    with ExecutionContext(seeds=[], listen="tcp://127.0.0.1:0", progress=False) as ctx:
        sup = subprocess.Popen([sys.executable, "-m", "bndl_like.cli", "supervisor", "--workers", "1",
                                "--seeds", ctx._node.addresses[0], "--concurrency", "3"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: ctx.worker_count == 1 or sup.poll() is not None, timeout=30,
                       message="the supervised worker joins")
            assert sup.poll() is None, sup.stderr.read().decode()
            (settings,) = ctx.run_each_worker(thread_settings).values()
        finally:
            sup.send_signal(signal.SIGTERM)
            sup.communicate(timeout=15)
    assert settings["env"] == {**dict.fromkeys(THREAD_VARIABLES, "3"), "MKL_NUM_THREADS": "5"}


def test_which_concurrency_counts():
    env = {"BNDL_LIKE_CONCURRENCY": "4", "BNDL_LIKE_EXECUTE_CONCURRENCY": "6"}
    assert worker_concurrency(["--listen", "tcp://127.0.0.1:0", "--concurrency", "2"], env) == 2
    assert worker_concurrency(["--concurrency=7"], env) == 7
    assert worker_concurrency([], env) == 4
    assert worker_concurrency([], {"BNDL_LIKE_EXECUTE_CONCURRENCY": "6"}) == 6
    assert worker_concurrency([], {}) == 1
    assert worker_concurrency(["--concurrency", "many"], {}) == 1  # the worker refuses it itself


def test_only_unset_variables_are_added():
    added = thread_limits({"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": ""}, 2)
    assert "OMP_NUM_THREADS" not in added
    assert added["MKL_NUM_THREADS"] == "2"  # empty counts as not set
    assert set(added) == set(THREAD_VARIABLES) - {"OMP_NUM_THREADS"}
