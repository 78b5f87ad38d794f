"""Keep N worker processes running on this host.

A worker that exits without being asked (SIGKILL by the OOM killer included)
is restarted after a back-off that doubles while it keeps failing fast; too
many restarts in a window is a crash loop and the supervisor gives up with a
message that says why. SIGTERM or SIGINT stops the supervisor and every worker
within seconds; workers also get SIGTERM if the supervisor itself dies.

Each worker runs in a session of its own, so its process group holds what its
tasks started: when a worker has exited, for whatever reason, what is left of
its group is killed. How each worker ended is kept by pid (:meth:`exit_status`).

The workers of one supervisor know each other, whatever their seeds: each writes its
name and addresses into a directory the supervisor made (``BNDL_LIKE_SIBLINGS_DIR``)
and dials the others found there (:func:`announce`, :func:`watch_siblings`); the
supervisor removes a worker's file once it exited. So a driver that reaches any of
them finds all, and a restarted worker rejoins through its live siblings.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from . import forkserver
from .forkserver import ForkedWorker, describe_exit
from .threads import thread_limits, worker_concurrency

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
SIBLINGS_ENV = "BNDL_LIKE_SIBLINGS_DIR"
SIBLINGS_POLL = 0.2  # seconds between looks at the siblings directory


def _sibling_file(directory: str, pid: int) -> str:
    return os.path.join(directory, f"{pid}.json")


def announce(directory: str, node) -> str:
    """Write ``node``'s name and addresses (loopback first: siblings share the host) where its
    siblings look; returns the file's path."""
    addresses = sorted(node.addresses, key=lambda a: "127.0.0.1" not in a)
    entry = {"name": node.name, "node_type": node.node_type, "addresses": addresses}
    path = _sibling_file(directory, os.getpid())
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".announce-")
    with os.fdopen(fd, "w") as f:
        json.dump(entry, f)
    os.replace(tmp, path)  # a sibling never reads it half written
    return path


def read_siblings(directory: str, own: str | None = None) -> list[dict]:
    """The entries the workers in ``directory`` announced, ``own`` (a path) left out."""
    entries = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        path = os.path.join(directory, name)
        if not name.endswith(".json") or path == own:
            continue
        try:
            with open(path) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            continue  # gone meanwhile
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            entries.append(entry)
    return entries


async def watch_siblings(directory: str, node, poll: float = SIBLINGS_POLL) -> None:
    """Announce ``node`` in ``directory`` and have it dial every sibling announced there,
    also those started (or restarted) later. Runs until cancelled; removes its file then."""
    own = announce(directory, node)
    seen: object = None
    try:
        while True:
            try:
                stamp = os.stat(directory).st_mtime_ns
            except OSError:
                return  # the supervisor is gone and took the directory along
            if stamp != seen:
                seen = stamp
                entries = [e for e in read_siblings(directory, own) if e["name"] not in node.peers]
                if entries:
                    node.learn(entries)
            await asyncio.sleep(poll)
    finally:
        try:
            os.unlink(own)
        except OSError:
            pass


def die_with(parent: int):
    """A preexec function: SIGTERM this child when ``parent`` dies (Linux)."""
    def preexec() -> None:  # pragma: no cover - runs in the child, between fork and exec
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal us
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec


EXITS_KEPT = 1000  # how many workers' exits exit_status() remembers


def kill_group(pgid: int) -> None:
    """SIGKILL process group ``pgid``: what a worker's tasks started and left behind."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def has_exited(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` exited, without reaping it: until it is reaped its pid, and so its
    process group id, cannot be taken by another process."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped by a Popen.poll() elsewhere
        return True


def wait_exited(proc: subprocess.Popen, timeout: float | None) -> bool:
    """Wait up to ``timeout`` s (None: for ever) until ``proc`` exits, without reaping it."""
    if timeout is None:
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
        return True
    deadline = time.monotonic() + timeout
    while not has_exited(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


class SpawnedWorker:
    """A worker started as ``python -m bndl_like.cli worker``: the supervisor's handle on it
    (:class:`~bndl_like.deploy.forkserver.ForkedWorker` is the other kind)."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def exited(self) -> bool:
        return has_exited(self.popen)

    def wait_exited(self, timeout: float | None) -> bool:
        return wait_exited(self.popen, timeout)

    def send_signal(self, sig: int) -> None:
        if not has_exited(self.popen):  # not reaped, so the pid is still that worker's
            os.kill(self.pid, sig)

    def finish(self) -> str:
        """Kill what is left of its group, reap it; how it ended. Call once it exited."""
        kill_group(self.pid)  # before the reap, so the group id is still that worker's
        return describe_exit(self.popen.wait())


@dataclass
class _Slot:
    index: int
    process: SpawnedWorker | ForkedWorker | None = None
    started: float = 0.0
    restart_at: float | None = None
    backoff: float = 0.0
    restarts: deque = field(default_factory=deque)
    last_exit: str = ""


class Supervisor:
    def __init__(self, workers: int, worker_argv: list[str], *, env: dict | None = None,
                 backoff: float = 0.5, max_backoff: float = 10.0, max_restarts: int = 5,
                 restart_window: float = 60.0, stop_timeout: float = 5.0, stable_after: float = 10.0,
                 fork_server: bool = False):
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, not {workers}")
        self.count = workers
        self.worker_argv = list(worker_argv)
        self.command = [sys.executable, "-m", "bndl_like.cli", "worker", *worker_argv]
        self.env = env
        # fork the workers from this process's fork server (see .forkserver) instead of starting
        # an interpreter for each
        self.fork_server = fork_server
        self._server: forkserver.ForkServer | None = None
        self._cwd = os.getcwd()
        # BLAS/OpenMP threads per worker: its task threads, not a thread per core each
        self.threads = worker_concurrency(worker_argv, os.environ if env is None else env)
        self.initial_backoff = backoff
        self.max_backoff = max_backoff
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.stop_timeout = stop_timeout
        self.stable_after = stable_after
        self.slots = [_Slot(i) for i in range(workers)]
        self.siblings_dir: str | None = None  # where the workers announce themselves
        self._stop_signal: int | None = None
        # how recent workers ended, by pid; notified on each exit (see LocalWorkers.exit_status)
        self._exits: OrderedDict[int, str] = OrderedDict()
        self.exited = threading.Condition()

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process is not None and not s.process.exited()]

    def exit_status(self, pid: int) -> str | None:
        """How worker ``pid`` ended ("killed by SIGKILL", "exited with code 3"); None while it
        runs, or when it was not one of the last EXITS_KEPT workers of this supervisor."""
        with self.exited:
            return self._exits.get(pid)

    def has_worker(self, pid: int) -> bool:
        """Whether ``pid`` is a worker in one of the slots now (exited, not yet reaped, included)."""
        with self.exited:
            return any(s.process is not None and s.process.pid == pid for s in self.slots)

    def _finish(self, slot: _Slot) -> str:
        """The slot's worker exited: kill what is left of its group, reap it, record how it
        ended. Call only once ``has_exited(slot.process)``."""
        proc = slot.process
        status = proc.finish()
        if self.siblings_dir is not None:
            try:
                os.unlink(_sibling_file(self.siblings_dir, proc.pid))
            except OSError:
                pass
        with self.exited:
            self._exits[proc.pid] = status
            self._exits.move_to_end(proc.pid)
            while len(self._exits) > EXITS_KEPT:
                self._exits.popitem(last=False)
            slot.process = None
            self.exited.notify_all()
        return status

    def _spawn(self, slot: _Slot) -> None:
        # the worker also watches that its parent is still this process (see cli._watch_parent)
        env = {**(self.env if self.env is not None else os.environ), "BNDL_LIKE_PARENT_PID": str(os.getpid())}
        if self.siblings_dir is None:
            self.siblings_dir = tempfile.mkdtemp(prefix="bndl-like-workers-")
        env[SIBLINGS_ENV] = self.siblings_dir
        limits = thread_limits(env, self.threads)  # before numpy loads in the worker
        if self.fork_server:
            slot.process = self._fork(env, limits)
        else:
            slot.process = SpawnedWorker(subprocess.Popen(
                self.command, env={**env, **limits}, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with(os.getpid())))
        slot.started = time.monotonic()
        slot.restart_at = None
        log.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    def _fork(self, env: dict, limits: dict) -> ForkedWorker:
        """A worker in ``env`` plus the BLAS thread ``limits`` from the fork server; a new server
        if the one in use is gone. The limits do not choose the server (it loads no BLAS, and
        one started ahead did not know them)."""
        for attempt in range(2):
            if self._server is None or not self._server.alive:
                if self._server is not None:
                    forkserver.release(self._server)
                self._server = forkserver.acquire(env, self._cwd)
            try:
                return self._server.fork(self.worker_argv, {**env, **limits}, self._cwd)
            except forkserver.ForkServerGone:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)

    def poll(self) -> str | None:
        """Restart workers that exited; a message when a crash loop means giving up."""
        return self._check()

    def run(self) -> int:
        """Supervise until signalled (exit 0) or a crash loop (exit 1)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while self._stop_signal is None:
                failure = self._check()
                if failure:
                    log.error("%s", failure)
                    print(f"bndl-like supervisor: {failure}", file=sys.stderr, flush=True)
                    return 1
                time.sleep(0.05)
            log.info("%s received, stopping %d workers", signal.Signals(self._stop_signal).name,
                     len(self.pids))
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _check(self) -> str | None:
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.process
            if proc is not None and proc.exited():
                slot.last_exit = self._finish(slot)
                ran = now - slot.started
                slot.backoff = (self.initial_backoff if ran >= self.stable_after or not slot.backoff
                                else min(slot.backoff * 2, self.max_backoff))
                slot.restarts.append(now)
                while slot.restarts and now - slot.restarts[0] > self.restart_window:
                    slot.restarts.popleft()
                if len(slot.restarts) > self.max_restarts:
                    return (f"worker {slot.index} is in a crash loop: it stopped {len(slot.restarts)} "
                            f"times in {self.restart_window:.0f}s, last {slot.last_exit}; giving up "
                            "(see the worker's log lines above)")
                slot.restart_at = now + slot.backoff
                log.warning("worker %d (pid %d) %s after %.1fs; restarting in %.1fs", slot.index, proc.pid,
                            slot.last_exit, ran, slot.backoff)
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                self._spawn(slot)
        return None

    def reap(self) -> None:
        """Finish the workers that exited, restarting none (after a crash loop)."""
        for slot in self.slots:
            if slot.process is not None and slot.process.exited():
                self._finish(slot)

    def stop(self) -> None:
        """SIGTERM every worker, SIGKILL what is left after ``stop_timeout``; reap all and
        SIGKILL what is left of their process groups."""
        running = [s for s in self.slots if s.process is not None]
        for slot in running:
            slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for slot in running:
            proc = slot.process
            if not proc.wait_exited(max(0.0, deadline - time.monotonic())):
                log.warning("worker pid %d did not stop within %.0fs, killing it", proc.pid,
                            self.stop_timeout)
                proc.send_signal(signal.SIGKILL)
                proc.wait_exited(None)
            self._finish(slot)
        for slot in self.slots:
            slot.restart_at = None
        if self._server is not None:
            forkserver.release(self._server)  # kept a moment for the next cluster, then stopped
            self._server = None
        if self.siblings_dir is not None:
            shutil.rmtree(self.siblings_dir, ignore_errors=True)
            self.siblings_dir = None
