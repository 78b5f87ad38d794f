"""A fork server for local workers: one process that imported the worker's modules once and
forks a worker on request, so a local cluster starts in the time of a fork, not of an
interpreter start and a few hundred modules imported per worker.

The server is started (``python -m bndl_like.deploy._forkserve FD``) on the first request of a
driver process, or ahead of it (:func:`prestart`: when a program imports the driver, see
:func:`bndl_like.local.prestart_fork_server`), and shared by its local clusters; it exits once it
had no worker and no supervisor using it for :data:`IDLE_TIMEOUT` seconds
(:data:`PRESTART_IDLE_TIMEOUT` for one started ahead and not used yet), when the driver closes its
end of the control socket, or when the driver dies (the socket's end of file). It stays single-threaded
with no event loop, and imports neither numpy nor any BLAS, so each worker gets its BLAS thread
variables in its environment before numpy loads in it (see :mod:`.threads`).

A forked worker, like a spawned one: runs in a session of its own (its process group holds
what its tasks start: the server kills that group when the worker exited, before reaping it,
so the group id cannot have been taken); gets SIGTERM when its server dies (PDEATHSIG, and
``BNDL_LIKE_PARENT_PID`` names the server for the worker's own watch); receives its environment,
the secret included, over the control socket, never on a command line; and its exit status is
reported by pid. Signals to a worker go through the server, which knows whether the pid is
still its unreaped child.

Wire: each message a 4-byte big-endian length and a pickle, over a socketpair only the driver
and this server hold. To the server: ``("fork", id, argv, env, cwd)``, ``("signal", pid, sig)``;
from it: ``("forked", id, pid)`` (pid -1 and a message when the fork failed),
``("exited", pid, returncode)``.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from ..errors import BndlLikeError

# the driver imports this module before it starts a server ahead (see prestart): what only the
# server needs (ctypes) is imported in serve()

IDLE_TIMEOUT = 5.0  # seconds a server with no workers and no users is kept before it is stopped
PRESTART_IDLE_TIMEOUT = 30.0  # the same for a server started ahead (prestart) and not used yet
FORK_TIMEOUT = 60.0  # seconds to wait for the server's answer to a fork (its start included)
# what a worker imports (``bndl-like worker``): loaded once in the server. Only the worker's
# modules, not the driver's (the package root imports its names lazily); numpy and BLAS
# libraries deliberately not
PRELOAD = ("bndl_like.cli", "bndl_like.deploy.logs", "bndl_like.deploy.supervisor",
           "bndl_like.execute.messages", "bndl_like.execute.worker", "bndl_like.execute.worker.output",
           "bndl_like.execute.worker.scatter", "bndl_like.profile.service", "bndl_like.rmi")
# variables that differ between clusters and never matter at import time: a server serves
# requests whose environments differ only in these (and gets each request's full environment)
PER_WORKER_ENV = frozenset({"BNDL_LIKE_SECRET", "BNDL_LIKE_SIBLINGS_DIR", "BNDL_LIKE_PARENT_PID",
                            "BNDL_LIKE_CLUSTER", "BNDL_LIKE_LOG_LEVEL", "BNDL_LIKE_TLS_CERT",
                            "BNDL_LIKE_TLS_KEY", "BNDL_LIKE_TLS_CA"})
PR_SET_PDEATHSIG = 1
_HEADER = struct.Struct("!I")


def _send(sock: socket.socket, message: tuple) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> tuple | None:
    """The next message, None at end of file."""
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    data = _recv_exactly(sock, _HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)


def describe_exit(code: int) -> str:
    """A process's exit status (``Popen.returncode``'s convention) in words."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


# -- the server process -----------------------------------------------------------------------


def _worker_child(argv: list[str], env: dict, cwd: str, server: int, close) -> None:
    """In the forked child: become a worker as ``bndl-like worker *argv`` would, then exit."""
    code = 1
    try:
        os.setsid()  # a session, so a process group, of its own
        signal.set_wakeup_fd(-1)
        close()  # the server's control socket, selector and wake-up pipe
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        import ctypes  # loaded by serve(): no import here

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
        if os.getppid() != server:  # the server died before prctl: nobody will signal us
            os._exit(128 + signal.SIGTERM)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        os.environ["BNDL_LIKE_PARENT_PID"] = str(server)  # cli._watch_parent watches the server
        from bndl_like import cli

        sys.argv = [cli.__file__, "worker", *argv]
        code = cli.main(["worker", *argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            threading._shutdown()  # as at interpreter exit: non-daemon threads finish
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def serve(fd: int) -> int:
    """The server's loop on control socket ``fd``; returns when the driver closed its end."""
    import ctypes  # noqa: F401 - for the forked workers (see _worker_child)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    for name in PRELOAD:
        importlib.import_module(name)
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    children: set[int] = set()
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    me = os.getpid()

    def close_in_child() -> None:
        selector.close()
        sock.close()
        os.close(wake_r)
        os.close(wake_w)

    def reap() -> None:
        while children:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            _kill_group(pid)  # what its tasks left, while the group id is still that worker's
            _, status = os.waitpid(pid, 0)
            children.discard(pid)
            _send(sock, ("exited", pid, os.waitstatus_to_exitcode(status)))

    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj == wake_r:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    reap()
                    continue
                message = _recv(sock)
                if message is None:
                    return 0
                if message[0] == "fork":
                    _, request, argv, env, cwd = message
                    try:
                        pid = os.fork()
                    except OSError as exc:
                        _send(sock, ("forked", request, -1, f"fork failed: {exc}"))
                        continue
                    if pid == 0:
                        _worker_child(argv, env, cwd, me, close_in_child)
                    children.add(pid)
                    _send(sock, ("forked", request, pid, ""))
                elif message[0] == "signal":
                    _, pid, sig = message
                    if pid in children:  # not reaped yet, so the pid is still that worker's
                        try:
                            os.kill(pid, sig)
                        except ProcessLookupError:
                            pass
            reap()  # a SIGCHLD that came between the select and its handler
    finally:
        # the driver is gone or done: SIGTERM the workers, SIGKILL those left after 5 s
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                _kill_group(pid)
                children.discard(pid)
            else:
                time.sleep(0.01)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            _kill_group(pid)


# -- the driver's side ------------------------------------------------------------------------


class ForkServerGone(BndlLikeError, RuntimeError):
    """The fork server exited (or could not start) before it answered."""


class ForkedWorker:
    """A worker the fork server forked: the supervisor's handle on it (see
    :class:`~bndl_like.deploy.supervisor.SpawnedWorker` for the other kind)."""

    def __init__(self, server: ForkServer, pid: int):
        self.server = server
        self.pid = pid
        self.returncode: int | None = None
        self.lost = False  # its server died before reporting how it ended

    def exited(self) -> bool:
        return self.returncode is not None or self.lost

    def wait_exited(self, timeout: float | None) -> bool:
        with self.server.changed:
            return self.server.changed.wait_for(self.exited, timeout)

    def send_signal(self, sig: int) -> None:
        self.server.signal(self.pid, sig)

    def finish(self) -> str:
        """How it ended (the server killed its group and reaped it already)."""
        self.wait_exited(None)
        return "lost with its fork server" if self.returncode is None else describe_exit(self.returncode)


class ForkServer:
    """The driver's end of one fork server process."""

    def __init__(self, env: dict, cwd: str, idle_timeout: float | None = None):
        self.key = _key(env, cwd)
        self.idle_timeout = IDLE_TIMEOUT if idle_timeout is None else idle_timeout
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        base = {name: value for name, value in env.items() if name not in PER_WORKER_ENV}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bndl_like.deploy._forkserve", str(theirs.fileno())],
                env=base, cwd=cwd, stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()],
                start_new_session=True)  # not in the terminal's group: Ctrl-C is the driver's
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.changed = threading.Condition()
        self._send_lock = threading.Lock()
        self._requests = 0
        self._answers: dict[int, tuple] = {}
        self.workers: dict[int, ForkedWorker] = {}  # not yet reported exited
        self.users = 0  # supervisors using this server
        self.alive = True
        self._idle_since: float | None = None
        self._reader = threading.Thread(target=self._read, name="bndl-like-forkserver", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                try:
                    message = _recv(self.sock)
                except OSError:
                    message = None
                if message is None:
                    return
                with self.changed:
                    if message[0] == "forked":
                        self._answers[message[1]] = message[2:]
                    elif message[0] == "exited":
                        worker = self.workers.pop(message[1], None)
                        if worker is not None:
                            worker.returncode = message[2]
                        self._check_idle()
                    self.changed.notify_all()
        finally:
            with self.changed:
                self.alive = False
                for worker in self.workers.values():
                    worker.lost = True
                self.workers.clear()
                self.changed.notify_all()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _write(self, message: tuple) -> None:
        with self._send_lock:
            try:
                _send(self.sock, message)
            except OSError as exc:
                raise ForkServerGone(f"the fork server (pid {self.process.pid}) is gone: {exc}") from None

    def fork(self, argv: list[str], env: dict, cwd: str, timeout: float = FORK_TIMEOUT) -> ForkedWorker:
        """Fork a worker running ``bndl-like worker *argv`` in ``env`` (the secret may be in it)."""
        with self.changed:
            self._requests += 1
            request = self._requests
        self._write(("fork", request, list(argv), dict(env), cwd))
        with self.changed:
            if not self.changed.wait_for(lambda: request in self._answers or not self.alive, timeout):
                raise ForkServerGone(f"the fork server (pid {self.process.pid}) did not answer "
                                     f"within {timeout:g}s")
            if request not in self._answers:
                raise ForkServerGone(f"the fork server (pid {self.process.pid}) exited "
                                     f"(code {self.process.poll()})")
            pid, error = self._answers.pop(request)
            if pid < 0:
                raise OSError(error)
            worker = self.workers[pid] = ForkedWorker(self, pid)
            self._idle_since = None
            return worker

    def signal(self, pid: int, sig: int) -> None:
        try:
            self._write(("signal", pid, sig))
        except ForkServerGone:
            pass  # its workers got SIGTERM as it died

    def _check_idle(self, timeout: float | None = None) -> None:
        """Under ``changed``: start the idle clock (``timeout``, else ``idle_timeout``) when
        nothing uses the server any more."""
        if self.alive and not self.workers and not self.users and self._idle_since is None:
            idle_since = self._idle_since = time.monotonic()
            timer = threading.Timer(self.idle_timeout if timeout is None else timeout,
                                    self._close_if_idle, (idle_since,))
            timer.daemon = True
            timer.start()

    def _close_if_idle(self, idle_since: float) -> None:
        with _servers_lock, self.changed:
            if self._idle_since != idle_since or self.workers or self.users:
                return
            if _servers.get(self.key) is self:
                del _servers[self.key]
        self.close()

    def close(self, timeout: float = 5.0) -> None:
        """Close the control socket: the server stops its workers (if any) and exits; wait (at
        most ``timeout`` s) until it has, then kill it by pid if it has not."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.join()
        self.sock.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            import logging  # not at the top: this module starts the server before it imports much

            logging.getLogger(__name__).warning(
                "fork server pid %s did not exit within %s s of its close; killing it",
                self.process.pid, timeout)
            self.process.kill()
            self.process.wait()


def _key(env: dict, cwd: str) -> tuple:
    return cwd, tuple(sorted((n, v) for n, v in env.items() if n not in PER_WORKER_ENV))


_servers: dict[tuple, ForkServer] = {}
_servers_lock = threading.Lock()


def _running(key: tuple, env: dict, cwd: str) -> tuple[ForkServer, bool]:
    """The live server for ``key``, started now if there is none (then True). Under _servers_lock."""
    server = _servers.get(key)
    if server is not None and server.alive:
        return server, False
    server = _servers[key] = ForkServer(env, cwd)
    return server, True


def acquire(env: dict, cwd: str | None = None) -> ForkServer:
    """This process's fork server for workers of environment ``env`` started in ``cwd``
    (started now if there is none, or it died), marked in use until :func:`release`.

    Servers for another environment that nothing uses are closed: only what is in use stays.
    """
    cwd = os.getcwd() if cwd is None else cwd
    key = _key(env, cwd)
    with _servers_lock:
        server, _ = _running(key, env, cwd)
        with server.changed:
            server.users += 1
            server._idle_since = None
        idle = [s for k, s in _servers.items() if k != key and not s.users and not s.workers]
        for other in idle:
            del _servers[other.key]
    for other in idle:
        other.close()
    return server


def prestart(env: dict, cwd: str | None = None) -> ForkServer:
    """Start the server :func:`acquire` will return for ``env`` and ``cwd``, unless it runs:
    its start then overlaps with what this process does meanwhile. Unused, it stops after
    :data:`PRESTART_IDLE_TIMEOUT` seconds, or once a server for another environment is acquired.
    """
    cwd = os.getcwd() if cwd is None else cwd
    with _servers_lock:
        server, started = _running(_key(env, cwd), env, cwd)
        if started:
            with server.changed:
                server._check_idle(PRESTART_IDLE_TIMEOUT)
    return server


def release(server: ForkServer) -> None:
    """A supervisor no longer uses ``server``: it is stopped once idle for its idle_timeout."""
    with server.changed:
        server.users = max(0, server.users - 1)
        server._check_idle()


def close_all() -> None:
    """Stop every fork server of this process (at exit)."""
    with _servers_lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.close()


atexit.register(close_all)


def _forget_in_child() -> None:
    """``os.register_at_fork(after_in_child=...)``: a process forked from the driver does not
    hold the driver's end of its servers' sockets (the driver's death must reach them) and
    never sends on them."""
    servers = list(_servers.values())
    _servers.clear()
    for server in servers:
        server.alive = False
        try:
            server.sock.close()
        except OSError:  # pragma: no cover
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
