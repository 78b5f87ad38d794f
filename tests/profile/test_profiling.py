"""Cluster-wide CPU and memory profiling on a real local cluster of worker processes."""

from __future__ import annotations

import io
import os
import re
import signal

import pytest

from bndl_like import ExecutionContext, FuncTask, Job

from ..conftest import wait_until
from . import helpers

MiB = 1 << 20
HOLD_LINE = next(i for i, line in enumerate(open(helpers.__file__), 1) if "KEPT.append" in line)


@pytest.fixture(scope="module")
def ctx():
    with ExecutionContext.local(workers=2) as ctx:
        assert ctx.await_workers() == 2
        yield ctx


def run(ctx, fn, args_list, **kw):
    tasks = [FuncTask(ctx, i, fn, args) for i, args in enumerate(args_list)]
    return list(ctx.execute(Job(ctx, tasks), **kw))


def printed(method, **kw) -> str:
    out = io.StringIO()
    method(file=out, **kw)
    return out.getvalue()


def rows(text: str) -> list[str]:
    """The table lines of a CPU report (after its header line)."""
    return [line for line in text.splitlines() if re.match(r".+?:\d+ \S", line)
            and not line.startswith(("CPU profile", "--- ", "... ", "worker "))]




def profilers_state(_=None):
    """On a worker: (yappi imported, yappi running, tracemalloc tracing)."""
    import sys
    import tracemalloc
    yappi = sys.modules.get("yappi")
    return yappi is not None, bool(yappi and yappi.is_running()), tracemalloc.is_tracing()


def test_task_function_call_counts_summed_over_workers(ctx):
    # tasks before profiling: workers used to leave CPython 3.11's async-exception flag set
    # after each task, and then spun forever under a profiler
    run(ctx, helpers.some_fn, [(10,)] * 4)
    with ctx.cpu_profiling:
        run(ctx, helpers.some_fn, [(500,)] * 20)
    [some_fn] = [s for s in ctx.cpu_profiling.get_stats() if s.name == "some_fn"]
    assert some_fn.ncall == 20 and some_fn.module == "tests.profile.helpers"
    assert some_fn.path == "tests/profile/helpers.py" and some_fn.ttot >= some_fn.tsub > 0
    per_worker = ctx.cpu_profiling.get_stats(per_worker=True)
    assert set(per_worker) == {w.name for w in ctx.workers}
    assert sum(s.ncall for stats in per_worker.values() for s in stats if s.name == "some_fn") == 20
    text = printed(ctx.cpu_profiling.print_stats)
    assert text.startswith("CPU profile (cpu clock, seconds) of 2 workers: the top 100 by ttot desc")
    [line] = [line for line in rows(text) if " some_fn" in line]
    assert line.startswith("tests/profile/helpers.py:") and line.split()[2] == "20"
    assert not ctx.cpu_profiling.missing


def test_per_worker_sections(ctx):
    with ctx.cpu_profiling:
        run(ctx, helpers.some_fn, [(500,)] * 20)
    text = printed(ctx.cpu_profiling.print_stats, per_worker=True, include=("tests",))
    for worker in ctx.workers:
        assert f"--- worker {worker.name} ---" in text
    sections = re.split(r"--- worker \S+ ---\n", text)[1:]
    counts = [int(line.split()[2]) for section in sections for line in rows(section)
              if " some_fn" in line]
    assert sum(counts) == 20


def test_include_exclude_max_rows_and_sort(ctx):
    with ctx.cpu_profiling.start():
        run(ctx, helpers.numpy_work, [(100,)] * 6)
    everything = ctx.cpu_profiling.get_stats()
    numpy_only = rows(printed(ctx.cpu_profiling.print_stats, max_rows=None, include=("numpy",),
                              columns=(("name", 100), ("module", 40))))
    assert numpy_only and all(line.split()[-1].split(".")[0] == "numpy" for line in numpy_only)
    assert len(numpy_only) == sum(1 for s in everything if s.module.split(".")[0] == "numpy")
    without = printed(ctx.cpu_profiling.print_stats, max_rows=None, exclude=("numpy", "asyncio"))
    assert "numpy/" not in without and "asyncio/" not in without and "numpy_work" in without
    assert len(rows(printed(ctx.cpu_profiling.print_stats, max_rows=3))) == 3
    machinery = ("asyncio", "selectors", "threading", "concurrent", "cloudpickle", "pickle", "copyreg",
                 "socket", "ssl", "importlib")
    users = [s for s in everything if not s.import_time and s.module.split(".")[0] not in machinery
             and s.module.split(".")[:2] != ["bndl_like", "execute"] and not s.module.startswith(
                 ("bndl_like.rmi", "bndl_like.deploy", "bndl_like.profile", "bndl_like.local",
                  "bndl_like.cli", "bndl_like.config", "bndl_like.display"))]
    assert len(rows(printed(ctx.cpu_profiling.print_stats, max_rows=None))) == len(users)
    ncalls = [int(line.split()[-1]) for line in rows(printed(
        ctx.cpu_profiling.print_stats, max_rows=None, sort_by="ncall", sort_dir="asc",
        include=("tests", "numpy", "asyncio"),  # the event loop's functions: counts that differ
        columns=(("name", 90), ("ncall", 10))))]
    assert ncalls == sorted(ncalls) and ncalls[0] < ncalls[-1]
    ttots = [float(line.split()[-1]) for line in rows(printed(ctx.cpu_profiling.print_stats,
                                                              columns=(("name", 90), ("ttot", 10))))]
    assert ttots == sorted(ttots, reverse=True)  # the default: ttot, descending
    full = printed(ctx.cpu_profiling.print_stats, include=("tests",), strip_dirs=False)
    assert os.path.abspath(helpers.__file__) + ":" in full
    with pytest.raises(ValueError, match="sort_by must be one of"):
        ctx.cpu_profiling.print_stats(sort_by="speed")


def test_wall_clock_counts_sleep_and_cpu_clock_does_not(ctx):
    def sleep_ttot(clock):
        with ctx.cpu_profiling.start(clock=clock):
            run(ctx, helpers.sleepy, [(0.3,)] * 2)
        assert f"CPU profile ({clock} clock" in printed(ctx.cpu_profiling.print_stats, max_rows=1)
        [s] = [s for s in ctx.cpu_profiling.get_stats() if s.name == "sleepy"]
        return s.ttot
    assert sleep_ttot("wall") >= 0.5
    assert sleep_ttot("cpu") < 0.1
    with pytest.raises(ValueError, match="clock must be one of"):
        ctx.cpu_profiling.start(clock="gpu")


def test_driver_included_as_its_own_section(ctx):
    with ctx.cpu_profiling.start(include_driver=True):
        run(ctx, helpers.some_fn, [(100,)] * 4)
        helpers.some_fn(100)  # on the driver
    per_node = ctx.cpu_profiling.get_stats(per_worker=True)
    driver = ctx.node.name
    assert driver in per_node and any(s.name == "some_fn" and s.ncall == 1 for s in per_node[driver])
    [total] = [s for s in ctx.cpu_profiling.get_stats() if s.name == "some_fn"]
    assert total.ncall == 5
    text = printed(ctx.cpu_profiling.print_stats, per_worker=True, max_rows=5)
    assert "of 2 workers and the driver" in text and f"--- driver {driver} ---" in text
    assert text.index("--- driver") > text.index("--- worker")


def test_driver_memory_included(ctx):
    with ctx.memory_profiling.start(include_driver=True):
        kept = helpers.hold_memory(3 * MiB)  # on the driver
        snapshots = ctx.memory_profiling.take_snapshot(per_worker=True)
        text = printed(ctx.memory_profiling.print_top, per_worker=True, limit=1)
        helpers.release_memory()
    assert kept and set(snapshots) == {ctx.node.name} | {w.name for w in ctx.workers}
    [top] = snapshots[ctx.node.name].statistics()[:1]
    assert top.lineno == HOLD_LINE and top.size >= 3 * MiB
    assert f"--- driver {ctx.node.name} ---" in text and "on 2 workers and the driver" in text
    assert not ctx.memory_profiling.running


def test_off_by_default_and_off_after_stop(ctx):
    assert not ctx.cpu_profiling.running
    with ctx.cpu_profiling:
        assert ctx.cpu_profiling.running
        states = run(ctx, profilers_state, [()] * 10)
        assert any(running for _, running, _ in states)
    assert not ctx.cpu_profiling.running
    states = run(ctx, profilers_state, [()] * 10)
    assert not any(running or tracing for _, running, tracing in states)
    with pytest.raises(RuntimeError, match="not running"):
        ctx.memory_profiling.take_snapshot()


def test_memory_top_points_at_the_allocating_line(ctx):
    ctx.memory_profiling.start()
    try:
        before = ctx.memory_profiling.take_snapshot()
        run(ctx, helpers.hold_memory, [(4 * MiB,)] * 6)
        top = printed(ctx.memory_profiling.print_top, limit=5)
        first = top.splitlines()[2]
        assert first.split()[0] == "1" and f"tests/profile/helpers.py:{HOLD_LINE}:" in first
        assert "MiB" in first and "KEPT.append" in first
        grown = printed(ctx.memory_profiling.print_top, limit=3, compare_to=before)
        assert "growth since the snapshot of" in grown
        line = next(line for line in grown.splitlines() if f"helpers.py:{HOLD_LINE}" in line)
        size, growth = re.findall(r"[+-]?\d+\.\d MiB", line)[:2]
        assert growth.startswith("+") and float(growth[1:-4]) >= 23.9
        stats = ctx.memory_profiling.take_snapshot().statistics(compare_to=before)
        assert stats[0].lineno == HOLD_LINE and stats[0].size_diff >= 24 * MiB
        by_file = printed(ctx.memory_profiling.print_top, group_by="filename", limit=1)
        assert by_file.splitlines()[2].endswith("tests/profile/helpers.py")
        tb = printed(ctx.memory_profiling.print_top, group_by="traceback", limit=1, strip_dirs=False)
        assert os.path.abspath(helpers.__file__) + f":{HOLD_LINE}" in tb
        only_tests = printed(ctx.memory_profiling.print_top, limit=None, include=("tests",))
        assert "asyncio/" not in only_tests and "helpers.py" in only_tests
        assert "helpers.py" not in printed(ctx.memory_profiling.print_top, exclude=("tests",))
        per_worker = printed(ctx.memory_profiling.print_top, per_worker=True, limit=2,
                             compare_to=ctx.memory_profiling.take_snapshot(per_worker=True))
        assert all(f"--- worker {w.name} ---" in per_worker for w in ctx.workers)
    finally:
        ctx.memory_profiling.stop()
        for worker in ctx.workers:
            run(ctx, helpers.release_memory, [()], workers=[worker])


def test_a_worker_lost_while_profiling_is_reported_and_its_replacement_profiled():
    with ExecutionContext.local(workers=2) as ctx:
        assert ctx.await_workers() == 2
        assert run(ctx, profilers_state, [()] * 4) == [(False, False, False)] * 4  # yappi not loaded
        before = {w.name for w in ctx.workers}
        victim = ctx._local.processes[0]
        [victim_name] = [w.name for w in ctx.workers if w.pid == victim.pid]
        ctx.cpu_profiling.start()
        ctx.memory_profiling.start()
        tasks = [FuncTask(ctx, i, helpers.sleepy, (0.02,)) for i in range(60)]
        results = ctx.execute(Job(ctx, tasks), order_results=False)
        got = [next(results) for _ in range(5)]
        os.kill(victim.pid, signal.SIGKILL)
        got += list(results)
        assert len(got) == 60
        wait_until(lambda: ctx.worker_count == 2, timeout=20, message="a replacement worker")
        [joined] = {w.name for w in ctx.workers} - before
        # the replacement joined while profiling was on: it is profiled too
        wait_until(lambda: run(ctx, profilers_state, [()], workers=[joined])[0][1:] == (True, True),
                   timeout=20, message="profiling on the new worker")
        run(ctx, helpers.some_fn, [(100,)] * 10, workers=[joined])
        ctx.cpu_profiling.stop()
        text = printed(ctx.cpu_profiling.print_stats, per_worker=True, include=("tests",))
        assert f"worker {victim_name} was lost; its stats are missing" in text
        assert f"--- worker {joined} ---" in text and "some_fn" in text
        assert ctx.cpu_profiling.missing == {victim_name: "was lost"}
        memory = printed(ctx.memory_profiling.print_top, limit=3)
        assert f"worker {victim_name} was lost; its stats are missing" in memory
        ctx.memory_profiling.stop()
        assert not any(s[1] or s[2] for s in run(ctx, profilers_state, [()] * 6))


def import_late_then_work(n: int) -> int:
    """On a worker: an import the worker has not made yet, then some work."""
    from . import late_import
    return len(late_import.TABLE) + helpers.some_fn(n)


def test_the_import_system_is_left_out_of_the_printed_profile_by_default(ctx):
    with ctx.cpu_profiling:
        ctx.run_each_worker(import_late_then_work, 20_000)
    stats = ctx.cpu_profiling.get_stats()
    assert any(s.module == "importlib._bootstrap" for s in stats)  # measured
    [body] = [s for s in stats if s.module == "tests.profile.late_import" and s.name == "<module>"]
    assert body.import_time
    [work] = [s for s in stats if s.name == "import_late_then_work"]
    assert not work.import_time and work.ttot >= body.ttot
    text = printed(ctx.cpu_profiling.print_stats, max_rows=None)
    assert "<frozen importlib._bootstrap" not in text and "late_import.py" not in text
    assert text.splitlines()[1].startswith("imports are left out")
    assert "the machinery that runs tasks is left out (" in text.splitlines()[2]
    assert "bndl_like/" not in text and "asyncio/" not in text
    # the user's code comes first: nothing the framework ran it with is above it
    assert "import_late_then_work" in rows(text)[0]
    framework = printed(ctx.cpu_profiling.print_stats, max_rows=None, include=("bndl_like",))
    assert rows(framework) and all(row.startswith("bndl_like/") for row in rows(framework))
    shown = printed(ctx.cpu_profiling.print_stats, max_rows=None, include=("importlib",))
    assert any(row.startswith("<frozen importlib._bootstrap>") for row in rows(shown))
    assert all(row.startswith(("<frozen importlib", "importlib/")) for row in rows(shown))
    assert "left out" not in shown
