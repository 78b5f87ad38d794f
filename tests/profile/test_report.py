"""The pure parts of profiling: module names, filters, merging, formatting; no cluster."""

from __future__ import annotations

import io
import os
import tracemalloc

import numpy as np
import pytest

from bndl_like.profile import FunctionStats, MemorySnapshot, ProfilingService, merge_stats, report, service
from bndl_like.profile.modules import ModuleNames, module_filter

from . import helpers


def stat(name, ncall, ttot, filename="/site/pkg/mod.py", lineno=1, module="pkg.mod", tsub=None):
    return FunctionStats(module, name, lineno, ncall, ttot if tsub is None else tsub, ttot,
                         ttot / ncall, filename, "pkg/mod.py", ncall)


def test_module_names_of_files():
    names = ModuleNames()
    assert names(np.linalg.__file__) == ("numpy.linalg", "numpy/linalg/__init__.py")
    assert names(helpers.__file__) == ("tests.profile.helpers", "tests/profile/helpers.py")
    assert names(os.__file__) == ("os", "os.py")
    assert names("<frozen posixpath>") == ("posixpath", "<frozen posixpath>")
    assert names("<string>") == ("<string>", "<string>")
    # not imported: named from the sys.path entry it lies under
    here = os.path.dirname(os.path.abspath(__file__))
    assert names(os.path.join(here, "not_imported.py")) == ("tests.profile.not_imported",
                                                             "tests/profile/not_imported.py")


def test_module_filter_on_root_names():
    keep = module_filter(include=("numpy",))
    assert keep("numpy") and keep("numpy.linalg._linalg") and not keep("numpyish") and not keep("os")
    keep = module_filter(exclude=("asyncio", "bndl_like.rmi"))
    assert keep("numpy") and not keep("asyncio.events") and not keep("bndl_like.rmi.node")
    assert keep("bndl_like.execute.worker")
    assert module_filter()("anything")
    with pytest.raises(ValueError, match="include takes module names"):
        module_filter(include=(None,))


def test_merge_sums_the_same_function_only():
    a = [stat("f", 2, 1.0), stat("g", 1, 0.5, lineno=9)]
    b = [stat("f", 3, 2.0), stat("f", 1, 0.1, filename="/other/mod.py")]
    merged = {(s.filename, s.name): s for s in merge_stats(a, b)}
    f = merged["/site/pkg/mod.py", "f"]
    assert (f.ncall, f.ttot, f.tavg) == (5, 3.0, pytest.approx(0.6))
    assert merged["/other/mod.py", "f"].ncall == 1 and len(merged) == 3


def test_cpu_table_columns_and_truncation():
    stats = [stat("function_with_a_long_name", 12345, 1.5)]
    lines = report.cpu_table(stats, (("name", 20), ("ncall", 6), ("ttot", 8)), strip_dirs=True)
    assert lines[0].split() == ["name", "ncall", "ttot"]
    assert lines[1].startswith("..") and "_long_name" in lines[1] and "12345" in lines[1]
    assert "1.500000" in lines[1]
    full = report.cpu_table(stats, (("name", 80),), strip_dirs=False)[1]
    assert full.startswith("/site/pkg/mod.py:1 function_with_a_long_name")
    with pytest.raises(ValueError, match="sort_by must be one of"):
        report.check_cpu_options(10, "nope", None, report.DEFAULT_CPU_COLUMNS)
    with pytest.raises(ValueError, match="columns takes"):
        report.check_cpu_options(10, None, None, (("bogus", 3),))
    with pytest.raises(ValueError, match="sort_dir"):
        report.check_cpu_options(10, "ncall", "up", report.DEFAULT_CPU_COLUMNS)
    assert report.check_cpu_options(None, "name", None, ())[:2] == ("name", "asc")


def test_sizes_in_human_units():
    assert report.format_size(512) == "512 B"
    assert report.format_size(1536) == "1.5 KiB"
    assert report.format_size(3 * 1024 ** 2) == "3.0 MiB"
    assert report.format_size(5 * 1024 ** 3) == "5.0 GiB"
    assert report.format_size(2048, signed=True) == "+2.0 KiB"
    assert report.format_size(-100, signed=True) == "-100 B"


def part(stats, time_=1.0):
    files = {f for frames, _, _ in stats for f, _ in frames}
    return {"stats": stats, "modules": {f: (f.split("/")[-1][:-3], f.lstrip("/")) for f in files},
            "lines": {}, "traced": (sum(s for _, s, _ in stats), 0), "nframes": 1, "time": time_}


def test_memory_statistics_merge_group_and_compare():
    a, b = ("/x/a.py", 1), ("/x/b.py", 7)
    old = MemorySnapshot({"w1": part([((a,), 100, 1)])})
    new = MemorySnapshot({"w1": part([((a,), 100, 1), ((b,), 5000, 10)]),
                          "w2": part([((b,), 3000, 5), ((a, b), 1000, 1)])})
    by_line = new.statistics("lineno")
    assert [(s.filename, s.lineno, s.size, s.count) for s in by_line] == [
        ("/x/b.py", 7, 9000, 16), ("/x/a.py", 1, 100, 1)]
    assert len(new.statistics("traceback")) == 3
    assert new.statistics("filename", exclude=("b",))[0].filename == "/x/a.py"
    grown = new.statistics("lineno", compare_to=old)
    assert (grown[0].size_diff, grown[0].count_diff) == (9000, 16) and grown[1].size_diff == 0
    out = io.StringIO()
    new.print_top(compare_to={"w1": old}, per_worker=True, file=out)
    text = out.getvalue()
    assert "--- worker w1 ---" in text and "--- worker w2 ---" in text
    assert "+4.9 KiB" in text and "x/b.py:7" in text
    with pytest.raises(ValueError, match="group_by must be one of"):
        new.statistics("function")
    with pytest.raises(TypeError, match="compare_to takes a snapshot"):
        new.statistics(compare_to="yesterday")


class _Peer:
    def __init__(self, name):
        self.name = name


class _Node:
    def __init__(self):
        self.on_peer_lost = []


def test_service_sessions_resume_and_stop_with_their_driver():
    """In this process: a session resumes, a new one starts afresh, a lost driver stops it."""
    node, driver = _Node(), _Peer("driver-1")
    svc = ProfilingService(node)
    try:
        svc.memory_start(driver, "s1", 1)
        assert tracemalloc.is_tracing()
        kept = [bytearray(100_000)]  # noqa: F841 - alive while the snapshot is taken
        snap = service.memory_snapshot()
        assert any(f.endswith("test_report.py") for frames, _, _ in snap["stats"] for f, _ in frames)
        svc.memory_stop(driver, "other-session")  # not the running one: ignored
        assert tracemalloc.is_tracing()
        node.on_peer_lost[0](_Peer("someone-else"))
        assert tracemalloc.is_tracing()
        node.on_peer_lost[0](driver)
        assert not tracemalloc.is_tracing()

        import yappi
        svc.cpu_start(driver, "c1", "wall")
        helpers.some_fn(10)
        svc.cpu_start(driver, "c1", "wall")  # the same session again: resumes, keeps the stats
        assert yappi.is_running() and yappi.get_clock_type() == "wall"
        assert any(row[1] == "some_fn" for row in service.cpu_stats())
        svc.cpu_stop(driver, "c1")
        assert not yappi.is_running()
        svc.cpu_start(driver, "c2", "cpu")  # a new session: fresh stats
        svc.cpu_stop(driver, "c2")
        assert not any(row[1] == "some_fn" for row in service.cpu_stats())
        with pytest.raises(ValueError, match="clock must be one of"):
            svc.cpu_start(driver, "c3", "gpu")
    finally:
        service.stop_cpu()
        if tracemalloc.is_tracing():
            tracemalloc.stop()
