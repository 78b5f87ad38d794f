"""Tasks that run an external program on a worker as a managed subprocess.

``CommandTask(ctx, task_id, cmd, env=None, cwd=None, timeout=None)`` is an
:class:`~bndl_like.execute.tasks.RmiTask` whose method, :func:`run_command`,
runs ``cmd`` on the worker in its own process group and returns a
:class:`CommandResult` ``(returncode, stdout, stderr)``:

- ``cmd`` is a list of arguments run without a shell, or a ``str`` run with
  ``/bin/sh -c`` (only a ``str`` goes through a shell).
- ``env`` adds variables to the worker's environment; its ``PATH``, if given,
  is *prepended* to the worker's ``PATH``. ``BNDL_LIKE_SECRET`` is never
  passed on from the worker's environment.
- stdout and stderr are captured, keeping only the last ``output_limit`` bytes
  of each (default 64 KiB), and decoded with ``errors='replace'``.
- A non-zero exit (or death by a signal) raises :class:`CommandFailed`; the
  ``timeout`` (seconds) expiring raises :class:`CommandTimeout`, a subclass of
  both :class:`CommandFailed` and :class:`TimeoutError`.
- Cancelling the task (``TaskCancelled`` raised in the runner thread) and a
  timeout both terminate the whole process group: SIGTERM, then SIGKILL after a
  grace period, always reaping the process. A command that exits by itself is
  reaped; processes it left running in the background are not killed, and its
  pipes are read until EOF or until such leftovers write nothing for 0.1 s.

While a command runs, its process group is in a registry on the worker keyed
by :func:`command_key` (``(driver, job id, task id)``);
:func:`signal_command` sends a signal to it (the hook for stopping and
continuing a command with SIGTSTP / SIGCONT). POSIX only.
"""

from __future__ import annotations

import os
import selectors
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple

from ...errors import BndlLikeError
from ...rmi.secrets import ENV_VAR as SECRET_ENV_VAR
from ..errors import TaskCancelled
from ..tasks import RmiTask
from .context import task_context

DEFAULT_OUTPUT_LIMIT = 64 * 1024
"""Bytes kept of the end of each of stdout and stderr."""

DEFAULT_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL when a command's process group is terminated."""

_POLL = 0.05        # seconds per wait step: the longest a cancellation waits to land
_DRAIN_QUIET = 0.1  # after exit, stop reading pipes held open by leftovers quiet this long
_MESSAGE_TAIL = 2000  # characters of stderr shown in a CommandFailed message


class CommandResult(NamedTuple):
    """What a command left: its exit code and the (tails of its) output."""

    returncode: int
    stdout: str
    stderr: str


def _describe_cmd(cmd: str | Sequence[str], limit: int = 200) -> str:
    text = cmd if isinstance(cmd, str) else shlex.join(str(a) for a in cmd)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "did not exit"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by signal {name} ({-returncode})"
    return f"failed with exit code {returncode}"


class CommandFailed(BndlLikeError):
    """A command exited with a non-zero code or was killed by a signal.

    ``returncode`` is negative for a signal (as in :mod:`subprocess`) and None if
    the command never exited by itself; ``stdout``/``stderr`` are the output tails.
    """

    def __init__(self, cmd: str | Sequence[str], returncode: int | None, stderr: str = "",
                 stdout: str = "", timeout: float | None = None):
        self.cmd = cmd
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        self.timeout = timeout
        super().__init__(self._message())

    def _message(self) -> str:
        what = f"command `{_describe_cmd(self.cmd)}`"
        if self.timeout is not None:
            text = f"{what} timed out after {self.timeout:g}s and was terminated"
        else:
            text = f"{what} {_describe_exit(self.returncode)}"
        tail = self.stderr[-_MESSAGE_TAIL:]
        if tail.strip():
            text += f"\n--- stderr (last {len(tail)} characters) ---\n{tail.rstrip()}"
        else:
            text += " (no stderr)"
        return text

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        return type(self), (self.cmd, self.returncode, self.stderr, self.stdout, self.timeout)


class CommandTimeout(CommandFailed, TimeoutError):
    """A command ran longer than its ``timeout``; its process group was terminated."""

    def __init__(self, cmd: str | Sequence[str], returncode: int | None, stderr: str = "",
                 stdout: str = "", timeout: float | None = None):
        super().__init__(cmd, returncode, stderr, stdout, timeout)


# -- the registry of running commands on this worker --------------------------------------------

_registry_lock = threading.Lock()
_registry: dict[Hashable, subprocess.Popen] = {}


def command_key() -> Hashable | None:
    """The registry key of the command run by the current task: ``(driver, job id, task id)``.

    None outside a task (a command run so is not registered).
    """
    try:
        context = task_context()
    except RuntimeError:
        return None
    return (context.driver, context.job_id, context.task_id)


def running_commands() -> list[Hashable]:
    """Keys of the commands running in this process."""
    with _registry_lock:
        return list(_registry)


def signal_command(key: Hashable, sig: int) -> bool:
    """Send ``sig`` to the process group of the command registered as ``key``.

    True when sent; False when no such command runs here (or it has just exited).
    A process is reaped under the same lock, so the signal never reaches a
    process group id reused by another program.
    """
    with _registry_lock:
        proc = _registry.get(key)
        if proc is None or proc.returncode is not None:
            return False
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return False
    return True


# -- running a command --------------------------------------------------------------------------


def _command_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The worker's environment plus ``env``, without the cluster secret the worker may still hold."""
    env = env or {}
    merged = {name: value for name, value in os.environ.items() if name != SECRET_ENV_VAR}
    for name, value in env.items():
        merged[str(name)] = str(value)
    if "PATH" in env and os.environ.get("PATH"):
        merged["PATH"] = f"{env['PATH']}{os.pathsep}{os.environ['PATH']}"
    return merged


class _Tail:
    """The last ``limit`` bytes written to a pipe."""

    __slots__ = ("limit", "data")

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        data = self.data
        if len(chunk) >= self.limit:
            data[:] = chunk[-self.limit:]
            return
        data += chunk
        if len(data) > self.limit:
            del data[:len(data) - self.limit]

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


class _Managed:
    """A started command: its pipes, its output tails and how to stop it."""

    def __init__(self, proc: subprocess.Popen, key: Hashable | None, output_limit: int, grace: float):
        self.proc = proc
        self.key = key
        self.grace = grace
        self.term_sent_at: float | None = None
        self.killed = False
        self.tails: dict[int, _Tail] = {}
        self.selector = selectors.DefaultSelector()
        for pipe in (proc.stdout, proc.stderr):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            tail = self.tails[pipe.fileno()] = _Tail(output_limit)
            self.selector.register(pipe, selectors.EVENT_READ, tail)
        self.stdout_tail = self.tails[proc.stdout.fileno()]
        self.stderr_tail = self.tails[proc.stderr.fileno()]

    def poll(self) -> int | None:
        """Reap the process if it exited (under the registry lock: see signal_command)."""
        with _registry_lock:
            return self.proc.poll()

    def read(self, timeout: float) -> bool:
        """Read what the pipes have within ``timeout`` seconds; True if anything came."""
        selector = self.selector
        if not selector.get_map():
            time.sleep(timeout)  # both pipes at EOF: a short step, so a cancellation can land
            return False
        got = False
        for key, _ in selector.select(timeout):
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if chunk:
                key.data.add(chunk)
                got = True
            else:
                selector.unregister(key.fileobj)
        return got

    def wait(self, deadline: float | None) -> bool:
        """Read output until the process exits (True) or ``deadline`` passes (False)."""
        while True:
            self.read(_POLL)
            if self.poll() is not None:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def drain(self) -> None:
        """After exit: read what is left, until EOF or leftovers holding the pipes go quiet."""
        quiet_since = time.monotonic()
        while self.selector.get_map():
            if self.read(_POLL):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= _DRAIN_QUIET:
                return

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _group_alive(self) -> bool:
        """Whether a process of the group still runs (zombies left to init do not count)."""
        pgid = self.proc.pid
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        try:
            pids = [name for name in os.listdir("/proc") if name.isdigit()]
        except OSError:  # no /proc: trust killpg
            return True
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    state, _ppid, pgrp = f.read().rsplit(b")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(pgrp) == pgid and state != b"Z":
                return True
        return False

    def _terminate_step(self) -> None:
        """SIGTERM to the group, SIGKILL after the grace period, reap; may be re-entered."""
        if self.term_sent_at is None:
            self.term_sent_at = time.monotonic()
            self._signal_group(signal.SIGTERM)
            self._signal_group(signal.SIGCONT)  # a stopped process must wake up to die
        kill_at = self.term_sent_at + self.grace
        while time.monotonic() < kill_at and not self.killed:
            self.read(_POLL)  # keep the pipes flowing so a dying writer never blocks
            if self.poll() is not None and not self._group_alive():
                return
        if not self.killed:
            self.killed = True
            self._signal_group(signal.SIGKILL)
        while self.poll() is None:  # SIGKILL cannot be ignored: this ends
            self.read(_POLL)

    def terminate(self) -> None:
        """Terminate the process group and reap the process, whatever lands meanwhile.

        A further ``TaskCancelled`` (a job cancel followed by its release sends two)
        does not cut the clean-up short.
        """
        while True:
            try:
                self._terminate_step()
                return
            except TaskCancelled:
                continue

    def close(self) -> None:
        while True:
            try:
                self.selector.close()
                for pipe in (self.proc.stdout, self.proc.stderr):
                    if pipe is not None:
                        pipe.close()
                return
            except TaskCancelled:
                continue


def run_command(cmd: str | Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None,
                timeout: float | None = None, output_limit: int = DEFAULT_OUTPUT_LIMIT,
                grace: float = DEFAULT_GRACE) -> CommandResult:
    """Run ``cmd`` as a managed subprocess in its own process group; see the module docstring.

    Raises :class:`CommandFailed` on a non-zero exit, :class:`CommandTimeout` when
    ``timeout`` expires, ``OSError`` when the program cannot be started, and lets
    ``TaskCancelled`` through after terminating the process group.
    """
    shell = isinstance(cmd, str)
    args: str | list[str] = cmd if shell else [os.fspath(a) for a in cmd]
    key = command_key()
    proc = subprocess.Popen(args, shell=shell, env=_command_env(env), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        managed = _Managed(proc, key, output_limit, grace)
        if key is not None:
            with _registry_lock:
                _registry[key] = proc
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            exited = managed.wait(deadline)
            if not exited:
                managed.terminate()
            managed.drain()
        except BaseException:
            managed.terminate()
            raise
        finally:
            if key is not None:
                with _registry_lock:
                    if _registry.get(key) is proc:
                        del _registry[key]
            managed.close()
    except BaseException:
        if proc.returncode is None:  # only if something failed before the process was managed
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        raise
    stdout, stderr = managed.stdout_tail.text(), managed.stderr_tail.text()
    if not exited:
        raise CommandTimeout(cmd, proc.returncode, stderr, stdout, timeout)
    if proc.returncode != 0:
        raise CommandFailed(cmd, proc.returncode, stderr, stdout)
    return CommandResult(proc.returncode, stdout, stderr)


class CommandTask(RmiTask):
    """Runs the program ``cmd`` on a worker; its result is a :class:`CommandResult`.

    ``cmd``: a list of arguments (no shell), or a ``str`` run with ``/bin/sh -c``.
    ``env``: variables added to the worker's environment; a ``PATH`` among them is
    prepended to the worker's ``PATH``. ``cwd``: the working directory.
    ``timeout``: seconds before the command is terminated and the task fails with
    :class:`CommandTimeout`. ``output_limit``: bytes kept of the end of stdout and
    of stderr each. ``grace``: seconds between SIGTERM and SIGKILL when the command
    is terminated (timeout or cancellation). Other keywords go to :class:`RmiTask`
    (``priority``, ``name``, ``desc``, ``group``). A non-zero exit fails the task
    with :class:`CommandFailed`.
    """

    __slots__ = ("cmd", "env", "cwd")

    def __init__(self, ctx, task_id: Hashable, cmd: str | Sequence[str], env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, timeout: float | None = None, *,
                 output_limit: int = DEFAULT_OUTPUT_LIMIT, grace: float = DEFAULT_GRACE, **task_kw: Any):
        if isinstance(cmd, (bytes, bytearray)):
            raise TypeError(f"task {task_id!r}: cmd must be a str or a list of arguments, not bytes")
        if not isinstance(cmd, str):
            cmd = [os.fspath(a) for a in cmd]
            if not cmd:
                raise ValueError(f"task {task_id!r}: cmd is an empty list of arguments")
            if not all(isinstance(a, str) for a in cmd):
                raise TypeError(f"task {task_id!r}: every argument of cmd must be a str or a path")
        elif not cmd.strip():
            raise ValueError(f"task {task_id!r}: cmd is an empty command")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"task {task_id!r}: timeout must be positive, not {timeout!r}")
        if output_limit <= 0:
            raise ValueError(f"task {task_id!r}: output_limit must be positive, not {output_limit!r}")
        env = {str(k): str(v) for k, v in env.items()} if env else None
        cwd = os.fspath(cwd) if cwd is not None else None
        kwargs = {"env": env, "cwd": cwd, "timeout": timeout, "output_limit": output_limit, "grace": grace}
        super().__init__(ctx, task_id, run_command, (cmd,), kwargs, **task_kw)
        self.cmd = cmd
        self.env = env
        self.cwd = cwd
        self.timeout = timeout

    @property
    def thread_timeout(self) -> None:
        """None: run_command enforces ``timeout`` itself, terminating the process group."""
        return None

    @property
    def name(self) -> str:
        if self._name is not None:
            return self._name
        program = self.cmd.split(None, 1)[0] if isinstance(self.cmd, str) else self.cmd[0]
        return f"{os.path.basename(program)}[{self.id}]"

    @name.setter
    def name(self, value: str | None) -> None:
        self._name = value


__all__ = ["CommandTask", "CommandResult", "CommandFailed", "CommandTimeout", "run_command",
           "command_key", "running_commands", "signal_command"]
