"""Keep N worker processes running on this host.

A worker that exits without being asked (SIGKILL by the OOM killer included)
is restarted after a back-off that doubles while it keeps failing fast; too
many restarts in a window is a crash loop and the supervisor gives up with a
message that says why. SIGTERM or SIGINT stops the supervisor and every worker
within seconds; workers also get SIGTERM if the supervisor itself dies.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


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


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen | None = None
    started: float = 0.0
    restart_at: float | None = None
    backoff: float = 0.0
    restarts: deque = field(default_factory=deque)
    last_exit: str = ""


class Supervisor:
    def __init__(self, workers: int, worker_argv: list[str], *, env: dict | None = None,
                 backoff: float = 0.5, max_backoff: float = 10.0, max_restarts: int = 5,
                 restart_window: float = 60.0, stop_timeout: float = 5.0, stable_after: float = 10.0):
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, not {workers}")
        self.count = workers
        self.command = [sys.executable, "-m", "bndl_like.cli", "worker", *worker_argv]
        self.env = env
        self.initial_backoff = backoff
        self.max_backoff = max_backoff
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.stop_timeout = stop_timeout
        self.stable_after = stable_after
        self.slots = [_Slot(i) for i in range(workers)]
        self._stop_signal: int | None = None

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process is not None and s.process.poll() is None]

    def _spawn(self, slot: _Slot) -> None:
        # the worker also watches that its parent is still this process (see cli._watch_parent)
        env = {**(self.env if self.env is not None else os.environ), "BNDL_LIKE_PARENT_PID": str(os.getpid())}
        slot.process = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL,
                                        start_new_session=True, preexec_fn=die_with(os.getpid()))
        slot.started = time.monotonic()
        slot.restart_at = None
        log.info("worker %d started (pid %d)", slot.index, slot.process.pid)

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
            if proc is not None and proc.poll() is not None:
                slot.last_exit = describe_exit(proc.returncode)
                slot.process = None
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

    def stop(self) -> None:
        """SIGTERM every worker, SIGKILL what is left after ``stop_timeout``; reap all."""
        running = [s.process for s in self.slots if s.process is not None]
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop within %.0fs, killing it", proc.pid,
                            self.stop_timeout)
                proc.kill()
                proc.wait()
        for slot in self.slots:
            slot.process = None
