"""CPU profiling of a cluster: yappi on every worker, merged and printed on the driver."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import NamedTuple

from . import report, service
from .cluster import ClusterProfiler, output
from .modules import module_filter

# the import system: what runs an import, not the code imported (the first profile of a worker
# is mostly imports); left out of print_stats unless include= names it, with the import-time
# code of modules (their <module> rows)
IMPORT_SYSTEM = ("importlib._bootstrap", "importlib._bootstrap_external")
# what runs the user's code rather than the user's code: the framework, the event loop, threads
# and unpickling; their ttot holds every task's time, so they would top every profile
MACHINERY = tuple(f"bndl_like.{m}" for m in ("rmi", "execute", "deploy", "profile", "local", "cli",
                                               "config", "display")) + (
    "asyncio", "selectors", "threading", "concurrent", "cloudpickle", "pickle", "copyreg", "socket", "ssl")


class FunctionStats(NamedTuple):
    """One function's profile: times in seconds of the chosen clock."""

    module: str       # dotted module name, e.g. numpy.core.fromnumeric
    name: str         # function name, Class.method for methods
    lineno: int
    ncall: int        # calls, recursive ones included
    tsub: float       # time in the function itself
    ttot: float       # time in the function and what it called
    tavg: float       # ttot / ncall
    filename: str     # the full path on the node
    path: str         # the path from the import root: numpy/core/fromnumeric.py
    nactualcall: int  # calls that were not recursive
    import_time: bool = False  # ran only while modules were imported (called from nothing else)


def _from_row(row: tuple) -> FunctionStats:
    module, name, lineno, ncall, nactualcall, tsub, ttot, filename, path = row[:9]
    return FunctionStats(module, name, lineno, ncall, tsub, ttot, ttot / ncall if ncall else 0.0,
                         filename, path, nactualcall, bool(row[9]) if len(row) > 9 else False)


def merge_stats(*stats_lists: Iterable[FunctionStats]) -> list[FunctionStats]:
    """Stats of several nodes as one: the same function (file, line, name) summed."""
    merged: dict[tuple, FunctionStats] = {}
    for stats in stats_lists:
        for stat in stats:
            key = (stat.filename, stat.lineno, stat.name)
            seen = merged.get(key)
            if seen is not None:
                ncall, ttot = seen.ncall + stat.ncall, seen.ttot + stat.ttot
                stat = seen._replace(ncall=ncall, nactualcall=seen.nactualcall + stat.nactualcall,
                                     tsub=seen.tsub + stat.tsub, ttot=ttot,
                                     tavg=ttot / ncall if ncall else 0.0,
                                     import_time=seen.import_time and stat.import_time)
            merged[key] = stat
    return list(merged.values())


class CpuProfiling(ClusterProfiler):
    """CPU profiles of every worker of a context (yappi, all threads), printed on the driver.

    ``start()``/``stop()`` or ``with ctx.cpu_profiling:``; workers that join while it is
    on are profiled too. Nothing is hooked while it is off.
    """

    kind = "cpu"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.clock = "cpu"

    def start(self, clock: str = "cpu", include_driver: bool = False) -> CpuProfiling:
        """Start afresh on every worker, measuring ``clock`` time (``'cpu'`` or ``'wall'``);
        with ``include_driver`` this process too. Returns self, so
        ``with ctx.cpu_profiling.start(clock='wall'):`` works."""
        if clock not in service.CLOCKS:
            raise ValueError(f"clock must be one of {service.CLOCKS}, not {clock!r}")
        self.clock = clock
        self._start((clock,), include_driver)
        return self

    def _start_driver(self) -> None:
        service.start_cpu(self.clock)

    def _stop_driver(self) -> None:
        service.stop_cpu()

    def _driver_data(self) -> list:
        return service.cpu_stats()

    def get_stats(self, per_worker: bool = False) -> list[FunctionStats] | dict[str, list[FunctionStats]]:
        """The profile so far (also while running): a list of :class:`FunctionStats` merged over
        the nodes, or with ``per_worker`` a dict node name -> list. Nodes whose stats could not
        be had are in :attr:`missing`."""
        per_node = {name: [_from_row(row) for row in rows]
                    for name, rows in sorted(self._collect("stats").items())}
        return per_node if per_worker else merge_stats(*per_node.values())

    def print_stats(self, max_rows: int | None = 100, sort_by: str | None = None,
                    sort_dir: str | None = None, columns=report.DEFAULT_CPU_COLUMNS,
                    per_worker: bool = False, strip_dirs: bool = True, include=(), exclude=(),
                    file=sys.stdout) -> None:
        """Print the profile as a table, ``max_rows`` functions (None: all) sorted on a column
        (default ``ttot``; descending, ascending for ``name``/``module``).

        ``columns`` are ``(name, width)`` pairs among name, module, ncall, tsub, ttot, tavg.
        Totals merge the nodes; ``per_worker`` prints a section per node instead.
        ``include``/``exclude`` keep or drop functions by module (``'numpy'`` covers numpy and
        its submodules); ``strip_dirs`` shows paths from their import root. So that the user's
        code comes first, what runs it is left out unless ``include`` names it, and the header
        says so: the import system (``importlib._bootstrap*``) with the import-time code of
        modules (``include=('importlib',)``), and the machinery around tasks — bndl_like, the
        event loop, threads, unpickling (``include=('bndl_like', 'asyncio')`` and so on).
        :meth:`get_stats` has every function.
        """
        sort_by, sort_dir, columns = report.check_cpu_options(max_rows, sort_by, sort_dir, columns)
        named = module_filter(include, ()) if include else None
        hidden = tuple(m for m in IMPORT_SYSTEM + MACHINERY if named is None or not named(m))
        hide_imports = "importlib._bootstrap" in hidden
        user_keep = module_filter(include, exclude)
        keep = module_filter(include, ((exclude,) if isinstance(exclude, str) else tuple(exclude or ()))
                             + hidden)
        out = output(file)
        per_node = self.get_stats(per_worker=True)
        driver = self._driver_name
        workers = sum(1 for name in per_node if name != driver)
        sections = ([(report.section_title(name, driver), per_node[name])
                     for name in report.node_order(per_node, driver)]
                    if per_worker else [(None, merge_stats(*per_node.values()))])
        limit = "all" if max_rows is None else f"the top {max_rows}"
        print(f"CPU profile ({self.clock} clock, seconds) of "
              f"{report.nodes_phrase(workers, driver in per_node)}: {limit} by {sort_by} {sort_dir}",
              file=out)
        left_out = {m for stats in per_node.values() for s in stats
                    if user_keep(s.module) and not keep(s.module)
                    for m in hidden if s.module == m or s.module.startswith(m + ".")}
        if hide_imports and any(s.import_time for stats in per_node.values() for s in stats):
            print("imports are left out (the import system and what ran only while modules were "
                  "imported); include=('importlib',) shows them", file=out)
        machinery = sorted({m.split(".")[0] for m in left_out} - {"importlib"})
        if machinery:
            print(f"the machinery that runs tasks is left out ({', '.join(machinery)}); "
                  f"include=({', '.join(repr(m) for m in machinery[:2])}, ...) shows it", file=out)
        for note in self.missing_notes():
            print(note, file=out)
        if self._session is None:
            print("no profile: call start() first", file=out)
        for title, stats in sections:
            kept = report.sort_functions([s for s in stats if keep(s.module) and not (
                hide_imports and s.import_time)], sort_by, sort_dir)
            if title:
                print(title, file=out)
            shown = kept if max_rows is None else kept[:max_rows]
            for line in report.cpu_table(shown, columns, strip_dirs):
                print(line, file=out)
            if not kept:
                print("(no functions" + (" match the filters)" if include or exclude else ")"), file=out)
            if len(shown) < len(kept):
                print(f"... {len(kept) - len(shown)} more functions", file=out)
