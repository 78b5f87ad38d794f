"""Start and stop worker processes on this machine (the embedded local cluster)."""

from __future__ import annotations

import logging
import os
import site
import sys
import threading

from .deploy import forkserver

log = logging.getLogger(__name__)
# what a worker must not inherit from the driver's environment: its own options come as arguments
DRIVER_ONLY_ENV = ("BNDL_LIKE_SEEDS", "BNDL_LIKE_LISTEN", "BNDL_LIKE_SECRET_FILE", "BNDL_LIKE_NAME")


def worker_env(secret: bytes, cluster: str = "default", extra_env: dict | None = None,
               tls: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a local cluster's workers: this process's, with ``extra_env``, the
    secret, the cluster's name, TLS files (``{"TLS_CERT": path, ...}``) and a log level."""
    env = dict(os.environ)
    env.update(extra_env or {})
    env["BNDL_LIKE_SECRET"] = os.fsdecode(secret)
    for name, path in (tls or {}).items():
        if path is not None:
            env["BNDL_LIKE_" + name] = os.path.abspath(path)
    env["BNDL_LIKE_CLUSTER"] = cluster
    env.setdefault("BNDL_LIKE_LOG_LEVEL", "WARNING")
    for name in DRIVER_ONLY_ENV:
        env.pop(name, None)
    _import_path(env)
    return env


def _import_path(env: dict[str, str]) -> None:
    """The workers import bndl_like from where this process did, also when it found it by a
    change to ``sys.path`` (a checkout, a notebook's ``sys.path.insert``) rather than installed:
    its directory goes first on their ``PYTHONPATH``, unless it is a site directory (already on
    their path, and which must not come before the standard library)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    site_dirs = set(site.getsitepackages()) | {site.getusersitepackages()}
    if root in site_dirs:
        return
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *paths])


def prestart_fork_server() -> None:
    """Start the fork server that this process's first local cluster will fork its workers
    from, now, in the background: its interpreter start and imports then overlap with the
    driver's own imports instead of following them. Does nothing where a context would not
    start a local cluster (``BNDL_LIKE_SEEDS`` set), in a worker, or without ``fork()``. A server
    that no cluster uses (the environment changed meanwhile, or no local cluster came) stops after
    :data:`.forkserver.PRESTART_IDLE_TIMEOUT` s, or once a cluster starts its own. Never raises:
    the server is then started on demand, as without this.
    """
    if os.environ.get("BNDL_LIKE_SEEDS") or os.environ.get("BNDL_LIKE_PARENT_PID"):
        return
    if not hasattr(os, "fork") or getattr(sys, "frozen", False):  # a frozen app has no `python -m`
        return
    try:
        forkserver.prestart(worker_env(b""), os.getcwd())
    except Exception as exc:  # e.g. no fork() on this platform, or no process may start here
        log.debug("fork server not started ahead: %s", exc)


class LocalWorkers:
    """``count`` worker processes on 127.0.0.1 that join ``seed``.

    Like the ``supervisor`` command, a worker that dies is started again (with
    back-off, giving up on a crash loop), so a local cluster heals itself the way
    dask's nanny does; every worker is stopped by pid on :meth:`stop`, and gets
    SIGTERM if this process dies. What a worker's tasks started (its process group)
    is killed when the worker has exited, and :meth:`exit_status` tells how it ended.
    The secret reaches the workers in their environment (each removes it as it reads
    it); TLS files by name. ``fork_server`` (the default): the workers are forked from this
    process's fork server (:mod:`.deploy.forkserver`), which imported their modules once, rather
    than each started as a new interpreter.
    """

    def __init__(self, count: int, seed: str, secret: bytes, cluster: str = "default",
                 extra_env: dict | None = None, *, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_ca: str | None = None, fork_server: bool = True):
        if count < 1:
            raise ValueError(f"workers must be >= 1, not {count}")
        from .deploy.supervisor import Supervisor  # here: prestart_fork_server needs none of it

        env = worker_env(secret, cluster, extra_env,
                         {"TLS_CERT": tls_cert, "TLS_KEY": tls_key, "TLS_CA": tls_ca})
        self.supervisor = Supervisor(count, ["--listen", "tcp://127.0.0.1:0", "--seeds", seed],
                                     env=env, backoff=0.1, max_backoff=5.0, fork_server=fork_server)
        self.supervisor.start()
        self.failure: str | None = None  # set when a crash loop made us give up
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="bndl-like-local-workers", daemon=True)
        self._watcher.start()

    @property
    def processes(self) -> list:
        """The worker processes running now."""
        return [slot.process for slot in self.supervisor.slots if slot.process is not None]

    def _watch(self) -> None:
        while not self._stopping.wait(0.05):
            if self.failure:  # gave up: no more restarts, but exits are still recorded
                self.supervisor.reap()
                continue
            failure = self.supervisor.poll()
            if failure:
                self.failure = failure
                log.error("local cluster: %s", failure)

    def exit_status(self, pid: int, timeout: float = 2.0) -> str | None:
        """How worker ``pid`` (its ``Peer.pid``) ended: "killed by SIGKILL", "exited with code 3".

        Waits up to ``timeout`` s for the worker to be reaped (within 50 ms of its exit).
        None if it did not end within ``timeout``, or ``pid`` is not a worker of this cluster
        (nor one of its last 1000 that ended). Thread-safe.
        """
        supervisor = self.supervisor
        with supervisor.exited:
            supervisor.exited.wait_for(lambda: supervisor.exit_status(pid) is not None
                                       or not supervisor.has_worker(pid), timeout)
            return supervisor.exit_status(pid)

    @staticmethod
    def new_secret() -> bytes:
        import secrets

        return secrets.token_hex(32).encode()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every worker, SIGKILL those still alive after ``timeout``; reap all."""
        self._stopping.set()
        self._watcher.join()
        self.supervisor.stop_timeout = timeout
        self.supervisor.stop()
