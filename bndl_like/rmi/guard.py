"""What a node grants peers that have not authenticated: little, briefly, and quietly.

- :class:`PreAuthGuard` caps the connections not yet authenticated, in total and
  per source address, and closes each one that has not authenticated within the
  handshake timeout. At a cap the *oldest* is closed rather than the newest refused,
  so a flood of idle connections cannot keep out a peer that completes its
  handshake in milliseconds.
- :class:`RateLimitedLog` writes one line per source, then lines with the count of those
  it held back at doubling spacings (10 s, 20 s, 40 s, ... an hour at most) while the
  source goes on, so no peer can fill the disk with our logs, nor a misconfigured one
  repeat a warning on a timer.
- :class:`OnceLog` is for what this node itself retries (dialling a seed): a message
  is logged once, its repeats only counted, never logged again on a timer.
- :func:`raise_open_files_limit` and :func:`quiet_accept_errors` keep running out
  of file descriptors rare and, when it happens anyway, short in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_UNAUTHENTICATED = 256
MAX_UNAUTHENTICATED_PER_SOURCE = 64
LOG_INTERVAL = 10.0
MAX_LOG_INTERVAL = 3600.0


def source_of(transport) -> str:
    """The host a transport's peer connects from (``?`` when unknown)."""
    peername = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return "?"


class RateLimitedLog:
    """Log the first line per key (a source address) at once; hold back what follows, and
    say how many were held back in the next line, after ``interval``, then after twice the
    spacing each time (up to ``max_interval``) while the key goes on. A key quiet for twice
    its spacing starts again from ``interval``."""

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING,
                 interval: float = LOG_INTERVAL, max_keys: int = 4096, clock=time.monotonic,
                 max_interval: float = MAX_LOG_INTERVAL):
        self.logger = logger
        self.level = level
        self.interval = interval
        self.max_interval = max_interval
        self.max_keys = max_keys
        self.clock = clock
        self._last: dict[str, list] = {}  # key -> [time of its last line, its spacing now, last seen]
        self._held: Counter = Counter()

    def interval_for(self, key: str) -> float:
        """How long after its last line ``key`` is held back now."""
        entry = self._last.get(key)
        return entry[1] if entry is not None else self.interval

    def log(self, key: str, message: str, *args) -> bool:
        """Log ``message % args`` unless ``key`` is held back; True if logged."""
        now = self.clock()
        entry = self._last.get(key)
        if entry is not None:
            last, spacing, seen = entry
            entry[2] = now
            if now - last < spacing:
                self._held[key] += 1
                return False
            if now - seen > 2 * spacing:  # it stopped for a while: news again
                entry[1] = self.interval
            else:
                entry[1] = min(spacing * 2, self.max_interval)
            entry[0] = now
        else:
            if len(self._last) >= self.max_keys:
                self._forget(now)
            self._last[key] = [now, self.interval, now]
        held = self._held.pop(key, 0)
        if held:
            message += " (and %d more from %s in the last %.0fs)"
            args = (*args, held, key, now - last)
        self.logger.log(self.level, message, *args)
        return True

    def _forget(self, now: float) -> None:
        for key, (_, spacing, seen) in list(self._last.items()):
            if now - seen >= 2 * spacing:
                del self._last[key]
                self._held.pop(key, None)
        while len(self._last) >= self.max_keys:  # all recent: drop the oldest
            key = next(iter(self._last))
            del self._last[key]
            self._held.pop(key, None)


class OnceLog:
    """Log a message once per key; its repeats go to DEBUG with their count.

    For what this node retries by itself (dialling a seed every few seconds): the first
    failure is a line at ``level``, failures of the same ``kind`` after it are only counted
    (a restarting peer that first resets, then refuses connections is one piece of news),
    and a failure of another kind is logged at ``level`` with the count of the previous
    one. :meth:`forget` (e.g. once the dial succeeded) makes the next failure news again.
    """

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING, max_keys: int = 4096):
        self.logger = logger
        self.level = level
        self.max_keys = max_keys
        self._last: dict[str, list] = {}  # key -> [kind, repeats]

    def log(self, key: str, message: str, *args, kind: str | None = None) -> bool:
        """Log ``message % args`` unless ``key`` logged one of this ``kind`` (default: the
        same text) since it was last forgotten; True if logged at this log's level."""
        text = message % args if args else message
        kind = text if kind is None else kind
        entry = self._last.get(key)
        if entry is not None and entry[0] == kind:
            entry[1] += 1
            self.logger.debug("%s (repeated %d times)", text, entry[1])
            return False
        if entry is None and len(self._last) >= self.max_keys:
            del self._last[next(iter(self._last))]
        if entry is not None and entry[1]:
            text += f" (the previous failure repeated {entry[1]} times)"
        self._last.pop(key, None)
        self._last[key] = [kind, 0]
        self.logger.log(self.level, "%s", text)
        return True

    def repeats(self, key: str) -> int:
        entry = self._last.get(key)
        return entry[1] if entry is not None else 0

    def forget(self, key: str) -> None:
        self._last.pop(key, None)


class PreAuthGuard:
    """Connections that have not authenticated yet: bounded in number and in time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, *,
                 max_total: int = MAX_UNAUTHENTICATED,
                 max_per_source: int = MAX_UNAUTHENTICATED_PER_SOURCE,
                 notices: RateLimitedLog | None = None):
        self.loop = loop
        self.timeout = timeout
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.notices = notices or RateLimitedLog(log)
        # transport -> [source, close callback, timer]; insertion order is age
        self._entries: dict[object, list] = {}
        self._per_source: Counter = Counter()
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def admit(self, transport, close: Callable[[], None]) -> None:
        """A new connection: make room under the caps, then give it ``timeout`` to authenticate."""
        source = source_of(transport)
        while len(self._entries) >= self.max_total:
            self._evict(next(iter(self._entries)), "unauthenticated connections in total",
                        self.max_total)
        if self._per_source[source] >= self.max_per_source:
            oldest = next(t for t, entry in self._entries.items() if entry[0] == source)
            self._evict(oldest, f"unauthenticated connections from {source}", self.max_per_source)
        timer = self.loop.call_later(self.timeout, self._expire, transport)
        self._entries[transport] = [source, close, timer]
        self._per_source[source] += 1

    def hand_over(self, transport, close: Callable[[], None]) -> None:
        """The connection is now driven by something else, closed with ``close``."""
        entry = self._entries.get(transport)
        if entry is not None:
            entry[1] = close

    def release(self, transport) -> None:
        """The connection authenticated, or closed: it no longer counts."""
        entry = self._entries.pop(transport, None)
        if entry is None:
            return
        source, _, timer = entry
        timer.cancel()
        self._per_source[source] -= 1
        if not self._per_source[source]:
            del self._per_source[source]

    def _evict(self, transport, what: str, cap: int) -> None:
        source, close, _ = self._entries[transport]
        self.release(transport)
        self.evicted += 1
        self.notices.log(source, "more than %d %s: closing the oldest, from %s", cap, what, source)
        close()

    def _expire(self, transport) -> None:
        entry = self._entries.get(transport)
        if entry is None:
            return
        source, close, _ = entry
        self.release(transport)
        self.expired += 1
        self.notices.log(source, "closing a connection from %s: not authenticated within %.1fs",
                         source, self.timeout)
        close()

    def close_all(self) -> None:
        for transport in list(self._entries):
            _, close, _ = self._entries[transport]
            self.release(transport)
            close()


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise the soft limit of open files to the hard limit; returns (old, new) or None."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return None
    return soft, target


class _AcceptErrorFilter(logging.Filter):
    """asyncio logs every failed accept() with a traceback: keep one line per interval."""

    def __init__(self, interval: float = LOG_INTERVAL, clock=time.monotonic):
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._last: float | None = None
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "socket.accept() out of system resource" not in message:
            return True
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self._held += 1
            return False
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = "cannot accept connections: %s%s"
        record.args = (exc or "out of resources",
                       f" ({self._held} more in the last {now - self._last:.0f}s)" if self._held else "")
        record.exc_info = record.exc_text = None
        self._last, self._held = now, 0
        return True


_accept_filter: _AcceptErrorFilter | None = None


def quiet_accept_errors() -> None:
    """Install the accept-error filter on asyncio's logger (once per process)."""
    global _accept_filter
    if _accept_filter is None:
        _accept_filter = _AcceptErrorFilter()
        logging.getLogger("asyncio").addFilter(_accept_filter)
