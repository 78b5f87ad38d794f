"""A local cluster's life: ready when local() returns, stopped when its context is
garbage-collected, and a warning when a second one starts beside an open one."""

from __future__ import annotations

import gc
import os
import warnings

import pytest

from bndl_like import ExecutionContext, FuncTask, Job
from bndl_like.execute.driver import context as context_module

from ..conftest import alive, wait_until
from . import helpers

pytestmark = pytest.mark.timeout(60)


def children() -> set[int]:
    """This process's child processes (from /proc)."""
    found = set()
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[1] == me:
                found.add(int(entry))
    return found


def wait_gone(pids, timeout: float = 10.0) -> None:
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=timeout,
               message=f"worker processes {pids} to end")


def runtime_warnings(records) -> list[str]:
    return [str(w.message) for w in records if issubclass(w.category, RuntimeWarning)]


def test_local_returns_with_its_workers_connected():
    with ExecutionContext.local(workers=2) as ctx:
        assert ctx.worker_count == 2  # no await_workers() needed
        assert " open: 2 workers on 1 host" in repr(ctx)


def test_the_embedded_default_returns_with_its_workers_connected(monkeypatch):
    monkeypatch.delenv("BNDL_LIKE_SEEDS", raising=False)
    with ExecutionContext(workers=1) as ctx:
        assert ctx.worker_count == 1


def test_workers_that_do_not_join_in_time_are_a_clear_error_and_stopped():
    before = children()
    with pytest.raises(TimeoutError, match=r"^the local cluster did not start: 0 of 2 workers joined "
                                           r"within start_timeout=0.001 s"):
        ExecutionContext.local(workers=2, start_timeout=0.001)
    wait_gone(children() - before)
    assert not context_module._open_local_clusters()


def test_a_garbage_collected_context_stops_its_workers():
    ctx = ExecutionContext.local(workers=2)
    pids = [p.pid for p in ctx._local.processes]
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    # what a notebook does with it: jobs, map, calls, a scatter, its repr
    assert list(ctx.execute(Job(ctx, [FuncTask(ctx, 0, helpers.identity, (1,))]))) == [1]
    assert ctx.map(helpers.square, [2, 3]) == [4, 9]
    assert sorted(ctx.run_each_worker(os.getpid).values()) == sorted(pids)
    handle = ctx.scatter([1, 2])
    assert "2 workers" in repr(ctx)
    del ctx, handle
    gc.collect()
    wait_gone(pids, timeout=10)
    assert not context_module._open_local_clusters()


def test_a_second_local_cluster_warns_naming_the_open_one():
    with ExecutionContext.local(workers=1) as first:
        pid = first._local.processes[0].pid
        with pytest.warns(RuntimeWarning, match=rf"another local cluster of this process is still open: "
                                                rf"ExecutionContext {first.node.name} with 1 worker "
                                                rf"process \(pids {pid}\); close it") as records:
            second = ExecutionContext.local(workers=1)
        assert records[0].filename == __file__  # points at the line that started the second
        second.close()
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        ExecutionContext.local(workers=1).close()  # none open: no warning
    assert runtime_warnings(records) == []
