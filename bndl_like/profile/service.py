"""The node side of profiling: yappi and tracemalloc in this process, and the ``profiling``
RMI service through which a driver drives them on a worker.

yappi is imported on the first start only, so a worker that is never profiled
never loads it; stopped, neither profiler leaves a hook behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from ..rmi import takes_peer
from .modules import ModuleNames, root_module

log = logging.getLogger(__name__)
CLOCKS = ("cpu", "wall")
_OWN_FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "*")


def _own(module: str) -> bool:
    """The profiler's own functions are not part of the profile."""
    return root_module(module) == "yappi" or module.startswith("bndl_like.profile")


# -- this process ----------------------------------------------------------------------------------

def start_cpu(clock: str = "cpu", resume: bool = False) -> None:
    """Start yappi on every thread of this process (fresh stats unless ``resume``)."""
    import yappi

    if yappi.is_running():
        yappi.stop()
    if not resume:
        yappi.clear_stats()
        yappi.set_clock_type(clock)
    yappi.start(builtins=False, profile_threads=True)


def stop_cpu() -> None:
    """Stop yappi; its stats stay until the next fresh start."""
    yappi = sys.modules.get("yappi")
    if yappi is not None and yappi.is_running():
        yappi.stop()


def cpu_stats() -> list[tuple]:
    """yappi's stats of this process as ``(module, name, lineno, ncall, nactualcall, tsub,
    ttot, filename, path)`` tuples, modules resolved here, the profiler's own left out."""
    yappi = sys.modules.get("yappi")
    if yappi is None:
        return []
    rows = []
    names = ModuleNames()
    stats = list(yappi.get_func_stats())
    resolved = [names(stat.module) for stat in stats]
    importing = _import_time(stats, [module for module, _ in resolved])
    for stat, (module, path) in zip(stats, resolved, strict=True):
        if not _own(module):
            rows.append((module, stat.name, stat.lineno, stat.ncall, stat.nactualcall, stat.tsub,
                         stat.ttot, stat.module, path, stat.index in importing))
    return rows


def _import_time(stats: list, modules: list[str]) -> set[int]:
    """The indexes of the functions that ran only while modules were imported: the import
    system, modules' import-time code (``<module>``), and what is reached from the rest of
    the program (the functions no profiled function called) only through them."""
    by_index = {stat.index: stat for stat in stats}
    called = {child.index for stat in stats for child in stat.children if child.index != stat.index}
    imports = {stat.index for stat, module in zip(stats, modules, strict=True)
               if stat.name == "<module>" or module.startswith("importlib._bootstrap")}
    reached = {index for index in by_index if index not in called and index not in imports}
    todo = list(reached)
    while todo:
        for child in by_index[todo.pop()].children:
            index = child.index
            if index in by_index and index not in reached and index not in imports:
                reached.add(index)
                todo.append(index)
    return set(by_index) - reached


def start_memory(nframes: int = 1) -> None:
    """(Re)start tracemalloc, keeping ``nframes`` frames per allocation."""
    import tracemalloc

    if tracemalloc.is_tracing():
        tracemalloc.stop()
    tracemalloc.start(nframes)


def stop_memory() -> None:
    """Stop tracemalloc (which drops its traces)."""
    import tracemalloc

    tracemalloc.stop()


def memory_snapshot() -> dict | None:
    """The live allocations of this process, grouped by traceback (None when not tracing).

    ``stats`` holds ``(frames, size, count)`` with frames oldest first; ``modules`` maps
    each file to ``(module, short path)`` and ``lines`` each frame to its source line.
    """
    import time
    import tracemalloc

    if not tracemalloc.is_tracing():
        return None
    snapshot = tracemalloc.take_snapshot()
    current, peak = tracemalloc.get_traced_memory()
    # the profiler's own leftovers (tuples on CPython's free lists, say) are not the program's
    snapshot = snapshot.filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),
                                       tracemalloc.Filter(False, _OWN_FILES, all_frames=True)))
    stats = [(tuple((f.filename, f.lineno) for f in stat.traceback), stat.size, stat.count)
             for stat in snapshot.statistics("traceback")]
    frames = {frame for tb, _, _ in stats for frame in tb}
    names = ModuleNames()  # not kept: nothing the profiler allocates may stay in the profile
    return {"stats": stats, "modules": {filename: names(filename) for filename, _ in frames},
            "lines": _source_lines(frames), "traced": (current, peak),
            "nframes": snapshot.traceback_limit, "time": time.time()}


def _source_lines(frames: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """The source of each ``(filename, lineno)``, read without linecache's cache (which
    would stay allocated and show in the next snapshot)."""
    wanted: dict[str, set[int]] = {}
    for filename, lineno in frames:
        wanted.setdefault(filename, set()).add(lineno)
    lines = {}
    for filename, numbers in wanted.items():
        try:
            with open(filename, encoding="utf-8", errors="replace") as f:
                for lineno, text in enumerate(f, 1):
                    if lineno in numbers:
                        lines[filename, lineno] = text.strip()
        except OSError:
            continue
    return lines


# -- the RMI service -------------------------------------------------------------------------------

@dataclass
class _Session:
    """Whose profile runs here: one driver's session at a time, per profiler."""
    session: str
    owner: str | None
    active: bool = True


class ProfilingService:
    """The ``profiling`` service of a worker node.

    A driver starts a profiler under a session id; the same id again resumes it (a
    worker rejoining), a new one starts afresh. When the driver that started a
    profiler is lost, the profiler stops, so nothing keeps costing.
    """

    def __init__(self, node=None):
        self.node = node
        self._sessions: dict[str, _Session] = {}
        if node is not None:
            node.on_peer_lost.append(self._on_peer_lost)

    def _claim(self, kind: str, session: str, driver) -> bool:
        """Make ``session`` the running one; True when it was already (a resume)."""
        current = self._sessions.get(kind)
        resume = current is not None and current.session == session
        self._sessions[kind] = _Session(session, getattr(driver, "name", None))
        return resume

    def _release(self, kind: str, session: str) -> bool:
        current = self._sessions.get(kind)
        if current is None or current.session != session or not current.active:
            return False
        current.active = False
        return True

    def _is(self, kind: str, session: str) -> bool:
        current = self._sessions.get(kind)
        return current is not None and current.session == session

    def _on_peer_lost(self, peer) -> None:
        for kind, current in self._sessions.items():
            if current.active and current.owner == peer.name:
                log.info("stopping %s profiling: its driver %s is gone", kind, peer.name)
                current.active = False
                (stop_cpu if kind == "cpu" else stop_memory)()

    @takes_peer
    def cpu_start(self, driver, session: str, clock: str = "cpu") -> None:
        """Start yappi for ``session`` (resume it when it is the current one)."""
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, not {clock!r}")
        start_cpu(clock, resume=self._claim("cpu", session, driver))

    @takes_peer
    def cpu_stop(self, driver, session: str) -> None:
        """Stop yappi if ``session`` is the one running."""
        if self._release("cpu", session):
            stop_cpu()

    async def cpu_stats(self, session: str) -> list | None:
        """The stats of ``session`` (see :func:`cpu_stats`); None if it is not the current one."""
        if not self._is("cpu", session):
            return None
        return await asyncio.to_thread(cpu_stats)

    @takes_peer
    def memory_start(self, driver, session: str, nframes: int = 1) -> None:
        """Start tracemalloc for ``session`` (keep tracing when it is the current one)."""
        import tracemalloc

        if self._claim("memory", session, driver) and tracemalloc.is_tracing():
            return
        start_memory(nframes)

    @takes_peer
    def memory_stop(self, driver, session: str) -> None:
        """Stop tracemalloc if ``session`` is the one running."""
        if self._release("memory", session):
            stop_memory()

    async def memory_snapshot(self, session: str) -> dict | None:
        """A snapshot for ``session`` (see :func:`memory_snapshot`); None if not tracing it."""
        if not self._is("memory", session):
            return None
        return await asyncio.to_thread(memory_snapshot)
