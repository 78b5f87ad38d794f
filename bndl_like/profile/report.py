"""Text reports of the profiles: fixed-width tables for a terminal or a notebook."""

from __future__ import annotations

from collections.abc import Sequence

CPU_COLUMNS = ("name", "module", "ncall", "tsub", "ttot", "tavg")
DEFAULT_CPU_COLUMNS = (("name", 84), ("ncall", 12), ("tsub", 8), ("ttot", 8), ("tavg", 8))
GAP = "  "
LOST = "was lost"  # why a worker's data is missing, when it is
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_size(nbytes: int | float, signed: bool = False) -> str:
    """``nbytes`` in B, KiB, MiB, GiB (``+`` or ``-`` in front when ``signed``)."""
    sign = ("+" if nbytes >= 0 else "-") if signed else ("-" if nbytes < 0 else "")
    value = abs(nbytes)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_time(seconds: float, width: int) -> str:
    """Seconds with as many decimals as fit in ``width`` (at most 6)."""
    for decimals in range(6, -1, -1):
        text = f"{seconds:.{decimals}f}"
        if len(text) <= width:
            return text
    return f"{seconds:.0e}"


def fit(text: str, width: int, left: bool = True) -> str:
    """``text`` padded to ``width``; too long, its end is kept behind ``..`` (names end in
    the function, which matters most)."""
    if len(text) > width:
        text = ".." + text[len(text) - width + 2:] if width > 2 else text[:width]
    return text.ljust(width) if left else text.rjust(width)


def nodes_phrase(workers: int, driver: bool) -> str:
    """``"2 workers"``, ``"1 worker and the driver"``."""
    text = f"{workers} worker{'s' if workers != 1 else ''}"
    return text + " and the driver" if driver else text


def missing_notes(missing: dict[str, str]) -> list[str]:
    """One line per worker whose data is missing, and why."""
    return [f"worker {name} was lost; its stats are missing" if why == LOST
            else f"worker {name}: its stats are missing ({why})" for name, why in sorted(missing.items())]


def node_order(names, driver: str | None) -> list[str]:
    """Workers by name, then the driver."""
    return sorted(names, key=lambda name: (name == driver, name))


def section_title(name: str, driver: str | None) -> str:
    return f"--- {'driver' if name == driver else 'worker'} {name} ---"


# -- CPU ------------------------------------------------------------------------------------------

def check_cpu_options(max_rows, sort_by, sort_dir, columns) -> tuple[str, str, tuple]:
    """Validate ``print_stats`` options; return ``(sort_by, sort_dir, columns)`` with defaults."""
    if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 0):
        raise ValueError(f"max_rows must be a non-negative int or None, not {max_rows!r}")
    columns = tuple(tuple(c) for c in columns)
    for column in columns:
        if len(column) != 2 or column[0] not in CPU_COLUMNS or not isinstance(column[1], int) \
                or column[1] < 1:
            raise ValueError(f"columns takes (name, width) pairs with a name among {CPU_COLUMNS} "
                             f"and a positive width, not {column!r}")
    sort_by = "ttot" if sort_by is None else sort_by
    if sort_by not in CPU_COLUMNS:
        raise ValueError(f"sort_by must be one of {CPU_COLUMNS}, not {sort_by!r}")
    if sort_dir is None:
        sort_dir = "asc" if sort_by in ("name", "module") else "desc"
    if sort_dir not in ("asc", "desc"):
        raise ValueError(f"sort_dir must be 'asc' or 'desc', not {sort_dir!r}")
    return sort_by, sort_dir, columns


def function_label(stat, strip_dirs: bool) -> str:
    """``path/to/module.py:12 function`` (the path short when ``strip_dirs``)."""
    return f"{stat.path if strip_dirs else stat.filename}:{stat.lineno} {stat.name}"


def sort_functions(stats: Sequence, sort_by: str, sort_dir: str) -> list:
    """The stats sorted on a column; ties in file and line order."""
    def key(stat):
        return stat.name if sort_by == "name" else getattr(stat, sort_by)
    ordered = sorted(stats, key=lambda s: (s.filename, s.lineno, s.name))
    return sorted(ordered, key=key, reverse=sort_dir == "desc")


def cpu_table(stats: Sequence, columns: tuple, strip_dirs: bool) -> list[str]:
    """The header and one line per function."""
    header = GAP.join(fit(name, width, left=name in ("name", "module")) for name, width in columns)
    lines = [header.rstrip()]
    for stat in stats:
        cells = []
        for name, width in columns:
            if name == "name":
                cells.append(fit(function_label(stat, strip_dirs), width))
            elif name == "module":
                cells.append(fit(stat.module, width))
            elif name == "ncall":
                cells.append(fit(str(stat.ncall), width, left=False))
            else:
                cells.append(fit(format_time(getattr(stat, name), width), width, left=False))
        lines.append(GAP.join(cells).rstrip())
    return lines


# -- memory ---------------------------------------------------------------------------------------

def memory_table(stats: Sequence, group_by: str, compare: bool, strip_dirs: bool) -> list[str]:
    """One line per statistic (and its frames for ``traceback``), growth columns when
    ``compare``."""
    head = f"{'#':>4}{GAP}{'size':>10}"
    if compare:
        head += f"{GAP}{'growth':>11}"
    head += f"{GAP}{'count':>9}"
    if compare:
        head += f"{GAP}{'growth':>8}"
    lines = [head + f"{GAP}{'where allocated' if group_by != 'filename' else 'file'}"]
    for rank, stat in enumerate(stats, 1):
        line = f"{rank:>4}{GAP}{format_size(stat.size):>10}"
        if compare:
            line += f"{GAP}{format_size(stat.size_diff, signed=True):>11}"
        line += f"{GAP}{stat.count:>9,}"
        if compare:
            line += f"{GAP}{stat.count_diff:>+8,}"
        if group_by == "traceback":
            lines.append(f"{line}{GAP}{len(stat.traceback)} frame(s), most recent last:")
            for filename, lineno, path, source in stat.traceback:
                lines.append(f"{'':>8}{path if strip_dirs else filename}:{lineno}")
                if source:
                    lines.append(f"{'':>10}{source}")
        else:
            lines.append(f"{line}{GAP}{memory_label(stat, group_by, strip_dirs)}")
    return lines


def memory_label(stat, group_by: str, strip_dirs: bool) -> str:
    """``path:lineno: source line`` (``path`` alone for ``filename``)."""
    where = stat.path if strip_dirs else stat.filename
    if group_by == "filename":
        return where
    return f"{where}:{stat.lineno}" + (f": {stat.source}" if stat.source else "")
