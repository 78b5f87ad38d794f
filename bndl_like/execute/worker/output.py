"""What tasks print and log, shown on the driver that runs them.

On a worker, :meth:`WorkerOutput.install` puts a proxy in front of ``sys.stdout`` and
``sys.stderr`` and a handler on the root logger. While a task or a called function
(``run_function`` and its kin) runs in a thread, :func:`capture` marks that thread: what it
writes, and the records it logs (except the framework's own), are batched (every 100 ms, or
at 64 KiB; at most 1 MiB waits per driver, beyond that lines are dropped and counted) and sent
to the driver's ``output`` service when that driver asked for them; otherwise they go to the
worker's own streams, as they would without the proxy. A task's output leaves before the
event that reports its end. Writes to the file descriptors themselves (C extensions,
subprocesses) are not seen.

Every line, forwarded or not, and the worker's own log lines also go to the ring of its last
1000 lines (:func:`remember`, :func:`recent`): ``ctx.worker_logs(n)``.

On the driver, :class:`DriverOutput` writes forwarded lines to its ``sys.stdout`` (what tasks
print) and ``sys.stderr`` (what they write to stderr, and their log records as ``LEVEL logger:
message``), each line prefixed with ``(worker name, task 'id')``; in a notebook that is the
cell that runs. :class:`OutputMixin` gives the context ``forward_output`` and ``worker_logs``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from typing import Any

from ...rmi import NotConnected, takes_peer
from ..messages import RECORD, STDERR, STDOUT

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.1      # seconds output waits to be batched
FLUSH_BYTES = 64 << 10    # a batch this large leaves at once
MAX_PENDING = 1 << 20     # unsent bytes per driver; more is dropped, with a count
MAX_UNSENT = 8 << 20      # a connection with this much unsent gets no more output until it drains
MAX_PARTIAL = 64 << 10    # a line without its end yet is cut here
FRAMEWORK_LOGGERS = ("bndl_like", "aiohttp", "asyncio")

RECENT_LINES = 1000       # lines of a worker kept for ctx.worker_logs

_recent: deque[str] = deque(maxlen=RECENT_LINES)
_state = threading.local()  # .sink: the _Sink of the task or call running in this thread
_active: WorkerOutput | None = None


class _Sink:
    """Where the output of one task or call goes: its driver, and the label of its lines."""

    __slots__ = ("driver", "kind", "what", "partial", "_label")

    def __init__(self, driver: str, kind: str, what: Any):
        self.driver = driver
        self.kind = kind  # "task" or "call"
        self.what = what  # the task id, or the called function's name
        self.partial: list[str] | None = None  # per stream: the text after the last newline
        self._label = None

    @property
    def label(self) -> str:
        if self._label is None:
            self._label = f"task {self.what!r}" if self.kind == "task" else f"call {self.what}"
        return self._label


def remember(line: str) -> None:
    """Keep ``line`` among this process's recent lines (thread-safe)."""
    _recent.append(line)


def recent(n: int) -> list[str]:
    """The last ``n`` lines kept by :func:`remember`, oldest first."""
    lines = list(_recent)
    return lines[len(lines) - n:] if 0 < n < len(lines) else (lines if n > 0 else [])


def begin(driver: str, kind: str, what: Any) -> _Sink | None:
    """Mark this thread as running a task (``kind`` "task", ``what`` its id) or a call ("call",
    the function's name) of ``driver``; None (and nothing done) when output is not captured."""
    if _active is None:
        return None
    _state.sink = sink = _Sink(driver, kind, what)
    return sink


def end(sink: _Sink | None) -> None:
    """The task or call of ``sink`` ended: its unfinished lines go out as lines."""
    if sink is None:
        return
    _state.sink = None
    partial = sink.partial
    out = _active
    if partial is not None and out is not None:
        for no, rest in enumerate(partial):
            if rest:
                partial[no] = ""
                out.task_lines(sink, no, [rest])


def flush_pending() -> None:
    """Send the output waiting in the batch now (on the worker's loop): called before task
    events and call results leave, so that a task's output reaches the driver first."""
    out = _active
    if out is not None and (out._pending or out._dropped):
        out.flush()


def is_framework(record: logging.LogRecord) -> bool:
    return record.name.startswith(FRAMEWORK_LOGGERS)


def task_sink(record: logging.LogRecord) -> _Sink | None:
    """The sink of a record logged by task code (not the framework) in a task's thread."""
    sink = getattr(_state, "sink", None)
    if sink is None or is_framework(record):
        return None
    return sink


def forwarding(sink: _Sink) -> bool:
    """Whether the driver of ``sink`` asked for its tasks' output."""
    out = _active
    return out is not None and out._forward.get(sink.driver, False)


def format_record(record: logging.LogRecord) -> str:
    """``LEVEL logger: message`` and the exception's traceback, if any."""
    text = f"{record.levelname} {record.name}: {record.getMessage()}"
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        text += "\n" + record.exc_text
    if record.stack_info:
        text += "\n" + record.stack_info
    return text


class _ThreadStream:
    """``sys.stdout`` / ``sys.stderr`` of a worker: a task thread's writes go to its sink,
    the others' to the original stream (and to the ring of recent lines)."""

    def __init__(self, output: WorkerOutput, no: int, original):
        self._output = output
        self._no = no
        self._original = original

    def write(self, text) -> int:
        sink = getattr(_state, "sink", None)
        if sink is None or type(text) is not str:
            written = self._original.write(text)
            if type(text) is str:
                self._output.remember_plain(self._no, text)
            return written
        return self._output.task_write(sink, self._no, text, self._original)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str):
        return getattr(self._original, name)


class _TaskRecords(logging.Handler):
    """Log records of task code, forwarded to the task's driver when it asked for them (the
    worker's stderr handler shows them otherwise; see :mod:`bndl_like.deploy.logs`)."""

    def __init__(self, output: WorkerOutput):
        super().__init__()
        self._output = output

    def emit(self, record: logging.LogRecord) -> None:
        sink = task_sink(record)
        if sink is None or not forwarding(sink):
            return
        try:
            text = format_record(record)
        except Exception:
            self.handleError(record)
            return
        self._output.task_lines(sink, RECORD, text.split("\n"))


class WorkerOutput:
    """The ``output`` service of a worker: forwards task output to drivers that want it and
    answers for the worker's recent lines."""

    def __init__(self, node):
        self.node = node
        self._forward: dict[str, bool] = {}  # driver name -> wants its tasks' output
        self._lock = threading.Lock()
        self._pending: dict[str, list] = {}  # driver -> [(stream, label, [text, ...]), ...]
        self._pending_bytes: dict[str, int] = {}
        self._dropped: dict[str, int] = {}  # driver -> lines dropped since the last batch
        self._armed = False  # a flush is scheduled
        self._urgent = False  # an immediate flush is scheduled
        self._timer: asyncio.TimerHandle | None = None
        self._plain_partial = ["", "", ""]
        self._originals: tuple | None = None
        self._handler: _TaskRecords | None = None
        node.on_peer_lost.append(self._on_peer_lost)

    # -- installing -----------------------------------------------------------------------------

    def install(self) -> None:
        """Capture task output in this process (once; a worker process has one of these)."""
        global _active
        if self._originals is not None:
            return
        self._originals = (sys.stdout, sys.stderr)
        sys.stdout = _ThreadStream(self, STDOUT, sys.stdout)
        sys.stderr = _ThreadStream(self, STDERR, sys.stderr)
        self._handler = _TaskRecords(self)
        logging.getLogger().addHandler(self._handler)
        _active = self

    def uninstall(self) -> None:
        global _active
        if self._originals is None:
            return
        if _active is self:
            _active = None
        logging.getLogger().removeHandler(self._handler)
        sys.stdout, sys.stderr = self._originals
        self._originals = None

    # -- called by drivers ----------------------------------------------------------------------

    @takes_peer
    def set_forward(self, driver, on: bool) -> None:
        """``driver`` wants (or no longer wants) the output of its tasks (a notice)."""
        self._forward[driver.name] = bool(on)

    def logs(self, n: int = 100) -> list[str]:
        """The last ``n`` lines of this worker: its log lines and what tasks printed and logged."""
        return recent(n)

    # -- from task threads ----------------------------------------------------------------------

    def task_write(self, sink: _Sink, no: int, text: str, original) -> int:
        if not text:
            return 0
        partial = sink.partial
        if partial is None:
            partial = sink.partial = ["", "", ""]
        pieces = (partial[no] + text).split("\n")
        rest = pieces.pop()
        if len(rest) > MAX_PARTIAL:
            pieces.append(rest)
            rest = ""
        partial[no] = rest
        if forwarding(sink):
            if pieces:
                self.task_lines(sink, no, pieces)
        else:
            original.write(text)
            self._remember(sink, pieces)
        return len(text)

    def task_lines(self, sink: _Sink, no: int, lines: list[str]) -> None:
        """Complete lines of a task: to its driver's batch when it wants them, else (text
        written to the original stream already) to the ring only."""
        self._remember(sink, lines)
        if not forwarding(sink):
            return
        text = "\n".join(lines) + "\n"
        size = len(text)
        driver = sink.driver
        label = sink.label
        with self._lock:
            total = self._pending_bytes.get(driver, 0) + size
            if total > MAX_PENDING:
                self._dropped[driver] = self._dropped.get(driver, 0) + len(lines)
                arm, urgent = not self._armed, False
            else:
                entries = self._pending.get(driver)
                if entries is None:
                    entries = self._pending[driver] = []
                if entries and entries[-1][0] == no and entries[-1][1] == label:
                    entries[-1][2].append(text)
                else:
                    entries.append((no, label, [text]))
                self._pending_bytes[driver] = total
                arm = not self._armed
                urgent = total >= FLUSH_BYTES and not self._urgent
            self._armed = True
            self._urgent = self._urgent or urgent
        try:
            if urgent:
                self.node.loop.call_soon_threadsafe(self.flush)
            elif arm:
                self.node.loop.call_soon_threadsafe(self._arm)
        except RuntimeError:  # the loop is closed: the worker is stopping
            pass

    @staticmethod
    def _remember(sink: _Sink, lines: list[str]) -> None:
        if lines:
            prefix = f"({sink.label}) "
            for line in lines:
                remember(prefix + line)

    def remember_plain(self, no: int, text: str) -> None:
        """Lines written outside tasks, for the ring."""
        with self._lock:
            pieces = (self._plain_partial[no] + text).split("\n")
            rest = pieces.pop()
            self._plain_partial[no] = rest if len(rest) <= MAX_PARTIAL else ""
        for line in pieces:
            remember(line)

    # -- on the loop ----------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._timer is None and self._armed:
            self._timer = self.node.loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Send every waiting batch (on the worker's loop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            pending, self._pending = self._pending, {}
            self._pending_bytes = {}
            dropped, self._dropped = self._dropped, {}
            self._armed = self._urgent = False
        for driver in pending.keys() | dropped.keys():
            entries = [(no, label, "".join(texts)) for no, label, texts in pending.get(driver, ())]
            lost = dropped.get(driver, 0)
            peer = self.node.peers.get(driver)
            if peer is None:
                continue
            connection = peer.connection
            transport = None if connection is None else connection.transport
            if transport is not None and transport.get_write_buffer_size() > MAX_UNSENT:
                # the driver does not keep up: drop, count, and say so once it does
                lost += sum(text.count("\n") for _, _, text in entries)
                with self._lock:
                    self._dropped[driver] = self._dropped.get(driver, 0) + lost
                    arm, self._armed = not self._armed, True
                if arm:
                    self._arm()
                continue
            try:
                peer.notify("output", "write", entries, lost)
            except NotConnected:
                pass

    def _on_peer_lost(self, peer) -> None:
        if peer.node_type == "driver":
            self._forward.pop(peer.name, None)
            with self._lock:
                self._pending.pop(peer.name, None)
                self._pending_bytes.pop(peer.name, None)
                self._dropped.pop(peer.name, None)


__all__ = ["WorkerOutput", "begin", "end", "flush_pending", "recent", "remember"]
