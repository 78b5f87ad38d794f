"""Memory profiling of a cluster: tracemalloc on every worker, printed on the driver.

A worker reduces its snapshot to statistics per traceback before sending it (the
traces themselves could be millions); lines and files are sums of those, so one
snapshot serves every ``group_by`` and later comparisons.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import NamedTuple

from . import report, service
from .cluster import ClusterProfiler, output
from .modules import module_filter

GROUP_BY = ("lineno", "filename", "traceback")


class Frame(NamedTuple):
    """One frame of an allocation's traceback."""

    filename: str
    lineno: int
    path: str    # from the import root, e.g. numpy/core/numeric.py
    source: str  # the line of code, when the node could read it


class MemoryStat(NamedTuple):
    """Live memory allocated at a line, in a file or by a traceback (the most recent frame
    gives module, file and line); the ``*_diff`` are growth since the compared snapshot."""

    module: str
    filename: str
    path: str
    lineno: int  # 0 when grouped by filename
    size: int
    count: int
    size_diff: int = 0
    count_diff: int = 0
    source: str = ""
    traceback: tuple[Frame, ...] = ()  # oldest first, when grouped by traceback


class MemorySnapshot:
    """The live allocations of some nodes at one moment, as sent by them.

    ``statistics()`` and ``print_top()`` merge the nodes; a snapshot is also what
    ``compare_to`` takes.
    """

    def __init__(self, parts: dict[str, dict], missing: dict[str, str] | None = None,
                 driver: str | None = None):
        self.parts = dict(parts)  # node name -> what service.memory_snapshot() returned
        self.missing = dict(missing or {})
        self.driver = driver if driver in self.parts else None
        self.taken_at = max((p["time"] for p in self.parts.values()), default=time.time())

    @classmethod
    def combine(cls, snapshots: Iterable[MemorySnapshot]) -> MemorySnapshot:
        """One snapshot of the parts of several (a ``take_snapshot(per_worker=True)`` dict)."""
        parts, missing, driver = {}, {}, None
        for snap in snapshots:
            parts.update(snap.parts)
            missing.update(snap.missing)
            driver = driver or snap.driver
        return cls(parts, missing, driver)

    @property
    def nodes(self) -> list[str]:
        return sorted(self.parts)

    def node(self, name: str) -> MemorySnapshot:
        """The part of one node (empty if it has none)."""
        return MemorySnapshot({name: self.parts[name]} if name in self.parts else {},
                              driver=self.driver)

    @property
    def size(self) -> int:
        """Bytes allocated and alive on all its nodes."""
        return sum(size for p in self.parts.values() for _, size, _ in p["stats"])

    def _grouped(self, group_by: str, keep) -> dict[tuple, list]:
        groups: dict[tuple, list] = {}
        for part in self.parts.values():
            modules, lines = part["modules"], part["lines"]
            for frames, size, count in part["stats"]:
                filename, lineno = frames[-1] if frames else ("<unknown>", 0)
                module, path = modules.get(filename, (filename, filename))
                if not keep(module):
                    continue
                if group_by == "filename":
                    key, lineno = (filename,), 0
                elif group_by == "lineno":
                    key = (filename, lineno)
                else:
                    key = frames
                group = groups.get(key)
                if group is None:
                    tb = tuple(Frame(f, n, modules.get(f, (f, f))[1], lines.get((f, n), ""))
                               for f, n in frames) if group_by == "traceback" else ()
                    group = groups[key] = [0, 0, module, filename, path, lineno,
                                           lines.get((filename, lineno), ""), tb]
                group[0] += size
                group[1] += count
        return groups

    def statistics(self, group_by: str = "lineno", include=(), exclude=(),
                   compare_to: MemorySnapshot | dict | None = None) -> list[MemoryStat]:
        """Live memory grouped by ``lineno``, ``filename`` or ``traceback``, largest first (with
        ``compare_to``: largest growth first), filtered on module like ``print_top``."""
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {GROUP_BY}, not {group_by!r}")
        keep = module_filter(include, exclude)
        new = self._grouped(group_by, keep)
        old = _as_snapshot(compare_to)._grouped(group_by, keep) if compare_to is not None else {}
        stats = []
        for key in new.keys() | old.keys():
            size, count, module, filename, path, lineno, source, tb = new.get(key) or old[key]
            if key not in new:
                size = count = 0
            before = old.get(key, (0, 0))
            stats.append(MemoryStat(module, filename, path, lineno, size, count, size - before[0],
                                    count - before[1], source, tb))
        if compare_to is None:
            stats.sort(key=lambda s: (-s.size, s.filename, s.lineno))
        else:
            stats.sort(key=lambda s: (-abs(s.size_diff), -s.size, s.filename, s.lineno))
        return stats

    def print_top(self, group_by: str = "lineno", limit: int | None = 30,
                  compare_to: MemorySnapshot | dict | None = None, per_worker: bool = False,
                  strip_dirs: bool = True, include=(), exclude=(), file=sys.stdout) -> None:
        """Print the ``limit`` largest allocation sites (see :meth:`MemoryProfiling.print_top`)."""
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, not {limit!r}")
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {GROUP_BY}, not {group_by!r}")
        out = output(file)
        old = _as_snapshot(compare_to) if compare_to is not None else None
        workers = sum(1 for name in self.parts if name != self.driver)
        nframes = max((p["nframes"] for p in self.parts.values()), default=1)
        since = "" if old is None else (", growth since the snapshot of "
                                        + time.strftime("%H:%M:%S", time.localtime(old.taken_at)))
        print(f"Memory top {limit if limit is not None else 'all'} by {group_by} on "
              f"{report.nodes_phrase(workers, self.driver is not None)} (tracemalloc, "
              f"{nframes} frame{'s' if nframes != 1 else ''}){since}", file=out)
        for note in report.missing_notes(self.missing):
            print(note, file=out)
        sections = [(None, self, old)]
        if per_worker:
            sections = [(report.section_title(name, self.driver), self.node(name),
                         None if old is None else old.node(name))
                        for name in report.node_order(self.parts, self.driver)]
        for title, snap, before in sections:
            if title:
                print(title, file=out)
            stats = snap.statistics(group_by, include, exclude, before)
            shown = stats if limit is None else stats[:limit]
            for line in report.memory_table(shown, group_by, before is not None, strip_dirs):
                print(line, file=out)
            _print_totals(stats, shown, snap, before, out)


def _print_totals(stats, shown, snap: MemorySnapshot, before, out) -> None:
    rest = stats[len(shown):]
    if rest:
        print(f"{len(rest)} more: {report.format_size(sum(s.size for s in rest))} in "
              f"{sum(s.count for s in rest):,} blocks", file=out)
    size, count = sum(s.size for s in stats), sum(s.count for s in stats)
    total = f"total: {report.format_size(size)} in {count:,} blocks"
    if before is not None:
        total += f" ({report.format_size(sum(s.size_diff for s in stats), signed=True)})"
    current = sum(p["traced"][0] for p in snap.parts.values())
    peak = sum(p["traced"][1] for p in snap.parts.values())
    print(f"{total}; traced now {report.format_size(current)}, peak {report.format_size(peak)}",
          file=out)


def _as_snapshot(snapshot) -> MemorySnapshot:
    if isinstance(snapshot, MemorySnapshot):
        return snapshot
    if isinstance(snapshot, dict) and all(isinstance(s, MemorySnapshot) for s in snapshot.values()):
        return MemorySnapshot.combine(snapshot.values())
    raise TypeError(f"compare_to takes a snapshot from take_snapshot(), not {type(snapshot).__name__}")


class MemoryProfiling(ClusterProfiler):
    """Memory profiles of every worker of a context (tracemalloc), printed on the driver.

    ``start(nframes=1)``, ``take_snapshot()``, ``print_top()``, ``stop()`` (which drops the
    traces); workers that join while it is on are traced too.
    """

    kind = "memory"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.nframes = 1

    def start(self, nframes: int = 1, include_driver: bool = False) -> MemoryProfiling:
        """Start tracing allocations on every worker, ``nframes`` frames each (more frames
        show who called, at more cost); with ``include_driver`` this process too."""
        if not isinstance(nframes, int) or isinstance(nframes, bool) or nframes < 1:
            raise ValueError(f"nframes must be a positive int, not {nframes!r}")
        self.nframes = nframes
        self._start((nframes,), include_driver)
        return self

    def _start_driver(self) -> None:
        service.start_memory(self.nframes)

    def _stop_driver(self) -> None:
        service.stop_memory()

    def _driver_data(self) -> dict | None:
        return service.memory_snapshot()

    def take_snapshot(self, per_worker: bool = False) -> MemorySnapshot | dict[str, MemorySnapshot]:
        """The live allocations on every node now: one snapshot, or with ``per_worker`` a dict
        node name -> snapshot. Either is accepted by ``compare_to``."""
        if not self._running:
            raise RuntimeError("memory profiling is not running: call start() first")
        parts = {name: data for name, data in self._collect("snapshot").items() if data is not None}
        snapshot = MemorySnapshot(parts, self.missing, self._driver_name)
        if per_worker:
            return {name: snapshot.node(name) for name in snapshot.nodes}
        return snapshot

    def print_top(self, group_by: str = "lineno", limit: int | None = 30,
                  compare_to: MemorySnapshot | dict | None = None, per_worker: bool = False,
                  strip_dirs: bool = True, include=(), exclude=(), file=sys.stdout) -> None:
        """Print the ``limit`` (None: all) places holding most memory now, grouped by
        ``lineno``, ``filename`` or ``traceback``, with their growth since ``compare_to``.

        Totals merge the nodes; ``per_worker`` prints a section per node. ``include`` /
        ``exclude`` keep or drop allocations by the module of their most recent frame
        (``'numpy'`` covers its submodules); ``strip_dirs`` shows paths from their import root.
        """
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {GROUP_BY}, not {group_by!r}")
        if compare_to is not None:
            _as_snapshot(compare_to)
        self.take_snapshot().print_top(group_by, limit, compare_to, per_worker, strip_dirs,
                                       include, exclude, file)
