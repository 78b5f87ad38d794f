"""Shared fixtures: real nodes in this process and real peer processes on 127.0.0.1."""

from __future__ import annotations

import _posixsubprocess
import asyncio
import functools
import importlib
import inspect
import json
import linecache
import os
import re
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import types

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

from bndl_like.rmi import Node
from bndl_like.rmi import secrets as rmi_secrets

pytest_plugins = ["pytester"]  # tests/test_markers.py runs the marker rule on a test file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_SECRET = "test-secret-of-the-rmi-tests-0123456789"

# Hypothesis keeps its examples (the failing ones first) in the repo's .hypothesis/ (git-ignored),
# wherever pytest runs from, and in CI too: its own CI profile would drop the database and
# derandomize, so every CI run would try the same inputs. CI keeps that directory between runs
# (a cache of .hypothesis/), so each run tries new inputs and first replays the ones that failed.
_EXAMPLES = os.path.join(ROOT, ".hypothesis", "examples")
settings.register_profile("bndl-like", settings(), derandomize=False,
                          database=DirectoryBasedExampleDatabase(_EXAMPLES))
settings.load_profile("bndl-like")


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


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited and not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


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


# -- the `cluster` marker: tests that start processes ------------------------------------------
#
# A test is marked `cluster` when it, a fixture it uses or a helper of the tests it calls (followed
# through the test modules, by name) mentions a way of starting a process. `-m "not cluster"`
# then runs the in-process tests alone. The heuristic is checked on every run: a test left
# unmarked that starts a process (from its own thread or from a thread started during it) fails
# at once with ProcessStartRefused, so a test the rule misses cannot go unnoticed.

_PROCESS_WORDS = re.compile(
    r"\bsubprocess\b|\bPopen\b|\bos\.(fork|forkpty|posix_spawnp?|system|spawn\w*|exec\w*)\b"
    r"|\bmultiprocessing\b|\bsys\.executable\b|\bExecutionContext\.local\b|\bLocalWorkers\b"
    r"|\bSupervisor\b|\bPeerProcess\b|\bspawn_peer\b|\bnbclient\b|\bNotebookClient\b"
    r"|\bcreate_subprocess_\w+\b|\bpexpect\b"
    r"|\bExecutionContext\(|\bworkers=")  # the embedded default, run_demo(workers=2): a local cluster
_scanned: dict = {}
_LIBRARIES = tuple(os.path.realpath(path) + os.sep for path in {
    sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")})
_IMPORT_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+([\w \t,]+)", re.M)


@functools.cache
def _of_the_tests(path: str) -> bool:
    """Whether the file ``path`` holds code of the tests (not bndl_like's, not a library's)."""
    real = os.path.realpath(path)
    return (real.endswith(".py") and not real.startswith(_LIBRARIES)
            and os.sep + "bndl_like" + os.sep not in real)


def _codes(code: types.CodeType):
    """``code`` and the code objects nested in it (its inner functions, lambdas, comprehensions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _starts_processes(obj, depth: int = 0) -> bool:
    """Whether the source of ``obj`` (a function or class of the tests), or of a function or
    class of the tests it refers to by name, mentions starting a process. Read from the code
    objects and the source lines they cover: no parsing, so a whole session's tests take
    a fraction of a second."""
    obj = inspect.unwrap(obj)
    if inspect.isclass(obj):  # a class: its methods
        return any(_starts_processes(member, depth) for member in vars(obj).values()
                   if inspect.isfunction(member))
    code = getattr(obj, "__code__", None)
    if code is None or not _of_the_tests(code.co_filename):
        return False
    if code in _scanned:
        return _scanned[code]
    _scanned[code] = False  # a recursive helper: decided by the rest of its body
    codes = list(_codes(code))
    last = max((line for c in codes for _, _, line in c.co_lines() if line is not None),
               default=code.co_firstlineno)
    source = "".join(linecache.getlines(code.co_filename)[code.co_firstlineno - 1:last])
    found = bool(_PROCESS_WORDS.search(source))
    if not found and depth < 8:
        namespace = getattr(obj, "__globals__", {})
        names = {name for c in codes for name in c.co_names}
        targets = [namespace.get(name) for name in names]
        # helpers.function (a module of the tests): co_names holds both names
        targets += [getattr(module, name, None) for module in list(targets)
                    if inspect.ismodule(module) and _of_the_tests(getattr(module, "__file__", None) or "")
                    for name in names]
        # an import inside the function: `from ..deploy.test_cli import start`
        for dots, module_name, imported in _IMPORT_FROM.findall(source):
            package = (namespace.get("__package__") or None) if dots else None
            try:
                module = importlib.import_module(dots + module_name, package)
            except ImportError:
                continue
            targets += [getattr(module, name.strip(), None) for name in imported.split(",")]
        found = any((inspect.isfunction(target) or inspect.isclass(target))
                    and _starts_processes(target, depth + 1) for target in targets)
    _scanned[code] = found
    return found


def _item_starts_processes(item) -> bool:
    function = getattr(item, "function", None)
    if function is not None and _starts_processes(function):
        return True
    fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(_starts_processes(fixturedef.func)
               for definitions in fixtures.values() for fixturedef in definitions)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("cluster") is None and _item_starts_processes(item):
            item.add_marker(pytest.mark.cluster)


class ProcessStartRefused(RuntimeError):
    """A test not marked `cluster` started a process."""


# the tests running now, innermost last (a test may run pytest in-process): (nodeid, threads that
# were running before it) for one not marked `cluster`, None for one that is
_running: list = []


def _refuse(what: str) -> None:
    if not _running or _running[-1] is None:
        return
    nodeid, threads_before = _running[-1]
    thread = threading.current_thread()
    if thread is threading.main_thread() or thread not in threads_before:
        raise ProcessStartRefused(
            f"{nodeid} started a process ({what}) but is not marked cluster: mark it "
            "(pytestmark = pytest.mark.cluster) or let tests/conftest.py's rule see it")


def _guarded(module, name: str) -> None:
    original = getattr(module, name, None)
    if original is None or getattr(original, "_refuses_in_tests", False):
        return

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        _refuse(f"{module.__name__}.{name}")
        return original(*args, **kwargs)

    guarded._refuses_in_tests = True
    setattr(module, name, guarded)


def pytest_configure(config):
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        _guarded(os, name)
    _guarded(subprocess, "_fork_exec")  # every subprocess.Popen (asyncio's too) without posix_spawn
    _guarded(_posixsubprocess, "fork_exec")  # multiprocessing's spawn and forkserver


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if item.get_closest_marker("cluster") is not None:
        _running.append(None)
    else:
        _running.append((item.nodeid, set(threading.enumerate())))
    try:
        yield
    finally:
        _running.pop()
