"""The fork server started ahead, while a program imports the driver, and what a fork server
imports: the package root imports lazily, the server only the workers' modules.

Each driver here is a Python process of its own (a prestart happens once per process), talking
to the test over its stdin and stdout; what the test reads of a process comes from /proc.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bndl_like import ExecutionContext

from ..conftest import alive, wait_until
from .test_cli import ROOT
from .test_startup import cmdline, parent_of

pytestmark = pytest.mark.timeout(60)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (zombies included)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_of(int(entry)) == pid:
                    found.append(int(entry))
            except OSError:  # exited meanwhile
                pass
    return found


class Driver:
    """``python -c code`` in the repository: a line from it with :meth:`read`, one to it
    with :meth:`go`."""

    def __init__(self, code: str, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self):
        line = self.proc.stdout.readline()
        assert line, f"the driver ended (code {self.proc.wait()})"
        return json.loads(line)

    def go(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        self.proc.stdin.close()
        try:
            return self.proc.wait(30)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def drivers():
    started: list[Driver] = []

    def start(code: str, env: dict | None = None) -> Driver:
        driver = Driver(code, env)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.stop()


COMMON = """
import json, os, sys
from bndl_like.deploy import forkserver

def say(value):
    print(json.dumps(value), flush=True)

def servers():
    return [s.process.pid for s in forkserver._servers.values() if s.alive]
"""

PRESTARTED = COMMON + """
say(servers())
from bndl_like import ExecutionContext
say(servers())
sys.stdin.readline()
with ExecutionContext.local(workers=2) as ctx:
    say(sorted(w.pid for w in ctx.workers))
    sys.stdin.readline()
"""


def test_a_program_importing_the_driver_starts_the_fork_server_its_cluster_then_uses(drivers):
    driver = drivers(PRESTARTED)
    assert driver.read() == []  # nothing before the driver's import
    (server,) = driver.read()  # started while the driver was importing, before any context
    assert children(driver.pid) == [server] and alive(server)
    assert b"bndl_like.deploy._forkserve" in cmdline(server)
    driver.go()
    workers = driver.read()
    assert len(workers) == 2
    assert {parent_of(pid) for pid in workers} == {server}  # the server started ahead
    assert sorted(children(driver.pid)) == [server]  # and no other
    driver.go()
    assert driver.finish() == 0
    wait_until(lambda: not any(alive(pid) for pid in (server, *workers)), 10,
               "the server and the workers to exit with the driver")


def test_a_server_started_ahead_stops_when_its_driver_dies_before_using_it(drivers):
    driver = drivers(PRESTARTED)
    driver.read()
    (server,) = driver.read()
    assert alive(server)
    driver.proc.kill()  # no atexit, no close(): the server sees its control socket's end of file
    driver.proc.wait()
    wait_until(lambda: not alive(server), 10, "the server to exit with its driver")


NOT_PRESTARTED = COMMON + """
import types
import bndl_like
from bndl_like import RemoteError, WorkersLost  # errors only: no driver yet
say([servers(), "bndl_like.execute.driver.context" in sys.modules])
library = types.ModuleType("a_library")  # the driver imported by a library, not the program
exec("from bndl_like import ExecutionContext", vars(library))
say([servers(), "bndl_like.execute.driver.context" in sys.modules])
from bndl_like import ExecutionContext  # by the program now, but its modules are imported
say([servers(), sorted(os.listdir("/proc/self/task")) == [str(os.getpid())]])
"""


def test_no_server_is_started_ahead_for_errors_a_library_or_an_imported_driver(drivers):
    driver = drivers(NOT_PRESTARTED)
    assert driver.read() == [[], False]
    assert driver.read() == [[], True]
    assert driver.read() == [[], True]  # nor a thread
    assert children(driver.pid) == []
    assert driver.finish() == 0


@pytest.mark.parametrize("variable", ["BNDL_LIKE_SEEDS", "BNDL_LIKE_PARENT_PID"])
def test_no_server_is_started_ahead_to_join_a_cluster_nor_in_a_worker(drivers, variable):
    # seeds: a context would join them, no local cluster; a parent pid: a worker's environment
    value = "tcp://127.0.0.1:9" if variable == "BNDL_LIKE_SEEDS" else str(os.getpid())
    driver = drivers(PRESTARTED, env={**os.environ, variable: value})
    assert driver.read() == []
    assert driver.read() == []
    assert children(driver.pid) == []


IDLE = COMMON + """
forkserver.PRESTART_IDLE_TIMEOUT = 0.5  # may pass before the driver's import ends
started = []
prestart = forkserver.prestart
forkserver.prestart = lambda *args: started.append(prestart(*args)) or started[-1]
from bndl_like import ExecutionContext
(server,) = started
say(server.process.pid)
sys.stdin.readline()
say([server.alive, servers()])
with ExecutionContext.local(workers=1) as ctx:
    say(sorted(w.pid for w in ctx.workers))
"""


def test_a_server_started_ahead_and_not_used_stops_and_another_starts_on_demand(drivers):
    driver = drivers(IDLE)
    server = driver.read()
    # stopped and reaped: not even a zombie is left
    wait_until(lambda: server not in children(driver.pid), 10, "the unused server to stop")
    driver.go()
    assert driver.read() == [False, []]
    (worker,) = driver.read()
    assert parent_of(worker) != server and b"_forkserve" in cmdline(parent_of(worker))
    assert driver.finish() == 0


OTHER_ENV = COMMON + """
from bndl_like import ExecutionContext
(ahead,) = servers()
os.environ["BNDL_LIKE_TEST_STARTUP_PRESTART"] = "another environment"
with ExecutionContext.local(workers=1) as ctx:
    say([ahead, sorted(w.pid for w in ctx.workers), servers()])
"""


def test_a_server_started_ahead_for_another_environment_is_stopped_when_a_cluster_starts(drivers):
    driver = drivers(OTHER_ENV)
    ahead, (worker,), running = driver.read()
    # the cluster's workers have their own server; the one started ahead was not for them
    assert parent_of(worker) == running[0] != ahead and running == [parent_of(worker)]
    wait_until(lambda: not alive(ahead), 10, "the server started ahead to stop")
    assert driver.finish() == 0


def test_importing_the_package_imports_none_of_its_modules():
    code = ("import sys, json, bndl_like\n"
            "print(json.dumps([sorted(m for m in sys.modules if m.startswith('bndl_like')), "
            "dir(bndl_like)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    modules, names = json.loads(out)
    assert modules == ["bndl_like"]
    import bndl_like
    assert set(bndl_like.__all__) <= set(names)


def test_a_forked_worker_has_the_workers_modules_from_its_server_and_none_of_the_drivers():
    code = ("import sys, json, importlib\n"
            "from bndl_like.deploy.forkserver import PRELOAD\n"
            "for name in PRELOAD: importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('bndl_like'))))")
    preloaded = set(json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                                              capture_output=True, text=True).stdout))
    with ExecutionContext.local(workers=1) as ctx:
        # after a task ran too
        in_worker = set(ctx.run_function(
            eval, "[m for m in __import__('sys').modules if m.startswith('bndl_like')]"))
    assert "bndl_like.execute.worker.service" in in_worker  # it is a worker
    assert in_worker - preloaded == set()  # nothing a worker needs is imported after the fork
    driver_side = {m for m in preloaded | in_worker
                   if m.startswith(("bndl_like.execute.driver", "bndl_like.execute.scheduler",
                                    "bndl_like.execute.core", "bndl_like.execute.context",
                                    "bndl_like.execute.executor"))}
    assert driver_side == set()
