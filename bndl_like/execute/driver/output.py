"""What tasks print and log, shown on the driver that runs them: the driver's side.

:class:`DriverOutput` (the driver's ``output`` service) writes the lines workers forward to its
``sys.stdout`` (what tasks print) and ``sys.stderr`` (what they write to stderr, and their log
records as ``LEVEL logger: message``), each line prefixed with ``(worker name, task 'id')``; in a
notebook that is the cell that runs. :class:`OutputMixin` gives the context ``forward_output``
and ``worker_logs``. The worker's side is :mod:`bndl_like.execute.worker.output`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys

from ... import config
from ...rmi import takes_peer
from ..messages import OUTPUT_SERVICE, STDOUT
from .progress import interactive

log = logging.getLogger(__name__)


class DriverOutput:
    """The ``output`` service of a driver: writes what workers forward of its tasks' output."""

    def __init__(self, ctx):
        self.ctx = ctx
        ctx._node.on_peer_added.append(self._on_peer_added)

    def _on_peer_added(self, peer) -> None:
        if peer.node_type == "worker":
            self.tell(peer, self.ctx._forward_output)

    @staticmethod
    def tell(peer, on: bool) -> None:
        try:
            peer.notify(OUTPUT_SERVICE, "set_forward", bool(on))
        except Exception:  # a worker lost meanwhile
            log.debug("could not tell %s forward_output=%s", peer.name, on, exc_info=True)

    @takes_peer
    def write(self, worker, entries: list, dropped: int = 0) -> None:
        """Lines of ``worker``'s tasks (a notice): stdout to ``sys.stdout``, the rest to
        ``sys.stderr``, each prefixed with the worker and the task."""
        if not self.ctx._forward_output:
            return
        out: list[str] = []
        err: list[str] = []
        for no, label, text in entries:
            prefix = f"({worker.name}, {label}) "
            lines = text.split("\n")
            if lines and not lines[-1]:
                lines.pop()
            (out if no == STDOUT else err).extend(prefix + line for line in lines)
        if dropped:
            err.append(f"({worker.name}) {dropped} lines of task output dropped: "
                       "tasks wrote faster than they could be sent")
        # in an empty context: ipykernel (7+) sends the output of a context that has no cell of
        # its own to the cell running now, where this one would name the cell that made ctx
        contextvars.Context().run(self._write, out, err)

    @staticmethod
    def _write(out: list[str], err: list[str]) -> None:
        for stream, lines in ((sys.stdout, out), (sys.stderr, err)):
            if lines and stream is not None:
                try:
                    stream.write("\n".join(lines) + "\n")
                    stream.flush()
                except (OSError, ValueError):  # closed, or a broken pipe
                    log.debug("could not write task output", exc_info=True)


def resolve_forward_output(value: bool | None, local_cluster: bool) -> bool:
    """``forward_output=``: True or False, else the ``forward_output`` option (env
    ``BNDL_LIKE_FORWARD_OUTPUT``), whose ``auto`` means on for a local cluster and in an
    interactive session (IPython, Jupyter, a prompt)."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"forward_output must be True, False or None, not {value!r}")
    setting = config.get("forward_output", value)
    if setting == "auto":
        return local_cluster or interactive()
    return setting


class OutputMixin:
    """``forward_output`` and ``worker_logs`` of an ExecutionContext."""

    _forward_output: bool

    def _init_output(self, forward_output: bool) -> None:
        """Before the node starts: the setting (see :func:`resolve_forward_output`), and the
        driver's ``output`` service."""
        self._forward_output = forward_output
        self._node.add_service(OUTPUT_SERVICE, DriverOutput(self))

    @property
    def forward_output(self) -> bool:
        """Whether what tasks print and log is written here, prefixed with worker and task."""
        return self._forward_output

    @forward_output.setter
    def forward_output(self, on: bool) -> None:
        if not isinstance(on, bool):
            raise TypeError(f"forward_output must be True or False, not {on!r}")
        self._check_open()
        self._forward_output = on

        def tell_all() -> None:
            for worker in self.workers:
                DriverOutput.tell(worker, on)
        self._portal.call(tell_all, timeout=30)

    def worker_logs(self, n: int = 100, timeout: float | None = 30) -> dict[str, list[str]]:
        """The last ``n`` lines (at most 1000) of every worker: its log lines and what its
        tasks printed and logged, forwarded or not. ``{worker name: [line, ...]}``; a worker
        that does not answer within ``timeout`` s is left out."""
        self._check_open()
        return self._portal.run(self._worker_logs(n, timeout))

    async def _worker_logs(self, n: int, timeout: float | None = 30) -> dict[str, list[str]]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, not {n!r}")
        workers = self.workers

        async def one(worker):
            return await asyncio.wait_for(worker.call(OUTPUT_SERVICE, "logs", n), timeout)
        answers = await asyncio.gather(*(one(w) for w in workers), return_exceptions=True)
        logs_by_worker = {}
        for worker, answer in zip(workers, answers, strict=True):
            if isinstance(answer, BaseException):
                log.debug("no logs from %s: %r", worker.name, answer)
            else:
                logs_by_worker[worker.name] = answer
        return logs_by_worker


__all__ = ["DriverOutput", "OutputMixin", "resolve_forward_output"]
