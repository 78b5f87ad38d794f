"""Benchmark of the bndl_like execute layer on a local cluster of 2 workers, side by side with peers.

Every system gets 2 worker processes with one task running at a time in each: bndl_like
(``ExecutionContext.local(workers=2)``, default concurrency 1), dask.distributed
(``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``), a
``concurrent.futures.ProcessPoolExecutor(2)`` and, only with ``--ray``, Ray
(``ray.init(num_cpus=2)``). The task functions are in ``benchmarks/execute_tasks.py``; this
script puts that directory on ``PYTHONPATH`` before it starts any worker. What it measures:

W1   10,000 independent no-op tasks submitted at once (one Job; ``client.map``; 10,000
     ``submit`` and, labelled, ``map(chunksize=500)``): tasks/s, median and best of 3 rounds.
W2   200 sequential one-task jobs (``execute`` of a one-task Job; ``submit().result()``):
     p50 / p99 latency in µs. Beside them the floor: an asyncio echo (a 5-byte message to an
     asyncio streams server in another process and back, timed inside one event loop).
W3a  a 100x100 all-to-all DAG: 100 tasks, then 100 tasks that each take all 100 results: wall s.
W3b  3 layers of 1,000 tasks, task j of a layer takes tasks j and (j+1) % 1000 of the layer
     before: wall s. The ProcessPoolExecutor has no dependencies: the driver runs it layer by
     layer (labelled). W3 figures are the median (and best) of 3 rounds.
W4   a 64 MiB numpy array created on the driver, passed to a task that returns ``np.sum`` of
     it, 10 times one after the other: MiB/s over the 10 (and of the best one).
W5   200 tasks of 20 ms (sleep, then return i), one worker SIGKILLed 0.5 s after the start:
     are all 200 results correct, and the wall s. Also with 2 tasks at once per worker.
W6   start-up to 2 ready workers, one task round trip, and shut-down, in s (median of 3).
MEM  bndl_like only: tracemalloc on the driver around building and running a Job of 100,000
     no-op FuncTasks; bytes per task beyond the caller's own objects, at the peak and after
     the run.

Every figure is printed with the ratio bndl_like / peer and the targets with met / MISSED.
Every cluster and pool is closed at the end of its section, also on error; any process of
ours still alive at exit is stopped by pid (and named in the output). All traffic stays on
127.0.0.1. Progress goes to stderr; the table or the JSON goes to stdout.

Run from the repository root::

    python benchmarks/execute.py                 # full run (a few minutes on 2 cores)
    python benchmarks/execute.py --quick         # smaller counts, < 60 s
    python benchmarks/execute.py --json          # one JSON object instead of the table
    python benchmarks/execute.py --only W1,W3    # some workloads (W1..W6, MEM)
    python benchmarks/execute.py --no-peers      # bndl_like only
    python benchmarks/execute.py --only W1,W2 --peers pool,echo
                                                 # W1/W2 against the pool and the echo floor
    unshare -n sh -c 'ip link set lo up && python benchmarks/execute.py --ray'
                                                 # with Ray, which listens on every interface,
                                                 # so it only runs where loopback is the only one
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import logging
import os
import platform
import signal
import statistics
import sys
import threading
import time
import traceback
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):  # this checkout's bndl_like, and the task functions
    if _path not in sys.path:
        sys.path.insert(0, _path)

from execute_tasks import add, array_sum, getpid, noop, sleep_task  # noqa: E402

MIB = 1 << 20
BULK_ELEMENTS = 8 * 1024 * 1024  # np.ones(...) of float64: 64 MiB
TIMEOUT = 300.0  # seconds any one job may take before it is cancelled

BNDL = "bndl_like"
DASK = "dask.distributed"
POOL = "ProcessPoolExecutor"
POOL_MAP = "ProcessPoolExecutor.map"
RAY = "ray"
ECHO = "asyncio echo"
PEERS = {"pool": POOL, "dask": DASK, "echo": ECHO}  # --peers names

TARGET_W1_TASKS_S = 50_000
TARGET_W1_VS_DASK = 25.0
TARGET_W2_P50_US = 400.0
TARGET_W2_VS_ECHO = 2.0  # W2 p50 at most this many asyncio echo round trips
TARGET_W3A_S = 0.1
TARGET_W3B_S = 0.5
TARGET_W4_MIB_S = 1_000.0
TARGET_W5_S = 2.5
TARGET_W6_START_S = 0.25
TARGET_W6_STOP_S = 0.1
TARGET_MEM_B = 1024.0

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "MEM")


@dataclass(frozen=True)
class Counts:
    w1_tasks: int
    w1_rounds: int
    w1_chunksize: int
    w2_jobs: int
    w2_warmup: int
    w3a_width: int
    w3b_width: int
    w3b_layers: int
    w3_rounds: int
    w4_repeats: int
    w5_tasks: int
    w5_sleep: float
    w5_kill_at: float
    w5_concurrency: tuple[int, ...]
    w6_repeats: int
    mem_tasks: int


FULL = Counts(w1_tasks=10_000, w1_rounds=3, w1_chunksize=500, w2_jobs=200, w2_warmup=20, w3a_width=100,
              w3b_width=1000, w3b_layers=3, w3_rounds=3, w4_repeats=10, w5_tasks=200, w5_sleep=0.02,
              w5_kill_at=0.5, w5_concurrency=(1, 2), w6_repeats=3, mem_tasks=100_000)
QUICK = Counts(w1_tasks=1_000, w1_rounds=2, w1_chunksize=100, w2_jobs=50, w2_warmup=10, w3a_width=100,
               w3b_width=300, w3b_layers=3, w3_rounds=1, w4_repeats=3, w5_tasks=200, w5_sleep=0.02,
               w5_kill_at=0.5, w5_concurrency=(1,), w6_repeats=1, mem_tasks=10_000)


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- results ----------------------------------------------------------------------------------------------


@dataclass
class Section:
    """One workload: a row of figures per system."""

    key: str
    title: str
    unit: str
    better: str  # "higher" or "lower": how to read the values and the ratios
    columns: list[str]
    rows: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def ratios(self) -> dict[str, dict[str, float]]:
        """bndl_like / peer for every numeric column both have."""
        mine = self.rows.get(BNDL) or {}
        out: dict[str, dict[str, float]] = {}
        for system, row in self.rows.items():
            if system == BNDL:
                continue
            ratio = {}
            for col in self.columns:
                a, b = mine.get(col), row.get(col)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
                        and not isinstance(b, bool) and b:
                    ratio[col] = a / b
            if ratio:
                out[system] = ratio
        return out


@dataclass
class Target:
    name: str
    value: str
    target: str
    met: bool | None  # None: not measured
    note: str = ""


class Report:
    def __init__(self) -> None:
        self.sections: dict[str, Section] = {}
        self.targets: list[Target] = []
        self.notes: list[str] = []
        self.memory: dict | None = None

    def section(self, key: str, title: str, unit: str, better: str, columns: list[str]) -> Section:
        if key not in self.sections:
            self.sections[key] = Section(key, title, unit, better, columns)
        return self.sections[key]

    def row(self, key: str, system: str) -> dict | None:
        section = self.sections.get(key)
        return None if section is None else section.rows.get(system)


# -- helpers ----------------------------------------------------------------------------------------------


class Watchdog:
    """One thread that calls the armed action (cancel a bndl_like job) once its deadline passed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._action: Callable[[], None] | None = None
        self._stop = threading.Event()
        self.fired: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="bench-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def armed(self, action: Callable[[], None], timeout: float, what: str) -> Iterator[None]:
        with self._lock:
            self._deadline, self._action, self._what = time.monotonic() + timeout, action, what
        try:
            yield
        finally:
            with self._lock:
                self._deadline = self._action = None

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            action = None
            with self._lock:
                if self._deadline is not None and time.monotonic() > self._deadline:
                    action, self._deadline = self._action, None
                    self.fired.append(self._what)
            if action is not None:
                progress(f"watchdog: {self.fired[-1]} took longer than its timeout, cancelling it")
                with contextlib.suppress(Exception):
                    action()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class LoopStallProbe:
    """The longest gap between 10 ms ticks scheduled on an event loop (running in another thread)."""

    def __init__(self, loop) -> None:
        self.loop, self.longest, self._stopped = loop, 0.0, False
        self._last = time.monotonic()
        loop.call_soon_threadsafe(self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self._last)
        self._last = now
        if not self._stopped:
            self.loop.call_later(0.01, self._tick)

    def stop(self) -> None:
        self._stopped = True


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(round(q / 100 * len(sorted_values) + 0.4999))))
    return sorted_values[rank - 1]


def err_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) < 300 else text[:297] + "..."


def expected_layers(width: int, layers: int) -> list[int]:
    prev = list(range(width))
    for _ in range(layers - 1):
        prev = [prev[j] + prev[(j + 1) % width] for j in range(width)]
    return prev


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live descendant of ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{child}/stat", "rb") as f:
                state = f.read().decode(errors="replace")
            if state[state.rindex(")") + 2] == "Z":  # a zombie: exited, only not reaped yet
                continue
        except (OSError, ValueError, IndexError):
            continue
        out.append((child, cmd))
        todo.extend(children.get(child, []))
    return out


def rss(pid: int | str = "self") -> int | None:
    """Resident set size of a process in bytes (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def note_leftovers(report: dict) -> None:
    """Stop by pid what is still alive at the end of a run; a note in the report says what."""
    leftovers = stop_leftovers()
    if leftovers:
        report["notes"].append("processes still alive at the end, stopped by pid: " + "; ".join(leftovers))


def stop_leftovers() -> list[str]:
    """SIGTERM, then SIGKILL, every live descendant of this process, by pid; describe them."""
    if "bndl_like.deploy.forkserver" in sys.modules:  # the idle fork server kept for a next cluster
        sys.modules["bndl_like.deploy.forkserver"].close_all()
    left = [(pid, cmd) for pid, cmd in descendants(os.getpid()) if "resource_tracker" not in cmd]
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for pid, _ in left:
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    return [f"pid {pid}: {cmd[:120]}" for pid, cmd in left]


def only_loopback() -> bool:
    """True when this network namespace has no interface but ``lo``."""
    try:
        with open("/proc/net/dev") as f:
            names = [line.split(":")[0].strip() for line in f.readlines()[2:]]
    except OSError:
        return False
    return names == ["lo"]


# -- the systems ------------------------------------------------------------------------------------------
# Each one starts 2 worker processes in its constructor (and closes what it started if that fails) and
# offers the same operations: many(n), one(i), all_to_all(w), layers(w, l), array_sum(arr),
# sleepers(n, s, concurrency), worker_pids(), close().


class BndlSystem:
    name = BNDL

    def __init__(self, watchdog: Watchdog) -> None:
        from bndl_like import ExecutionContext, FuncTask, Job

        self.FuncTask, self.Job = FuncTask, Job
        self.watchdog = watchdog
        self.ctx = ExecutionContext.local(workers=2)
        try:
            n = self.ctx.await_workers()
            if n < 2:
                raise RuntimeError(f"only {n} of 2 bndl_like workers joined")
        except BaseException:
            self.ctx.close()
            raise

    def _run(self, tasks, what: str, concurrency: int | None = None) -> list:
        job = self.Job(self.ctx, tasks, name=what)
        with self.watchdog.armed(job.cancel, TIMEOUT, f"bndl_like {what}"):
            return list(self.ctx.execute(job, concurrency=concurrency))

    def many(self, n: int) -> list:
        ctx, task = self.ctx, self.FuncTask
        return self._run([task(ctx, i, noop, args=(i,)) for i in range(n)], "W1")

    def one(self, i: int):
        return self._run([self.FuncTask(self.ctx, 0, noop, args=(i,))], "W2")[0]

    def all_to_all(self, width: int) -> list:
        ctx, task = self.ctx, self.FuncTask
        first = [task(ctx, (0, i), noop, args=(i,)) for i in range(width)]
        second = [task(ctx, (1, j), add, args=(j, *first)) for j in range(width)]
        return self._run(first + second, "W3a")[width:]

    def layers(self, width: int, layers: int) -> list:
        ctx, task = self.ctx, self.FuncTask
        prev = [task(ctx, (0, j), noop, args=(j,)) for j in range(width)]
        every = list(prev)
        for k in range(1, layers):
            prev = [task(ctx, (k, j), add, args=(prev[j], prev[(j + 1) % width])) for j in range(width)]
            every.extend(prev)
        return self._run(every, "W3b")[-width:]

    def array_sum(self, arr):
        return self._run([self.FuncTask(self.ctx, 0, np.sum, args=(arr,))], "W4")[0]

    def sleepers(self, n: int, seconds: float, concurrency: int = 1) -> list:
        ctx, task = self.ctx, self.FuncTask
        return self._run([task(ctx, i, sleep_task, args=(i, seconds)) for i in range(n)], "W5",
                         concurrency=concurrency)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.ctx._local.processes]

    def close(self) -> None:
        self.ctx.close()
        local = getattr(self.ctx, "_local", None)
        alive = [p.pid for p in (local.processes if local else []) if p.poll() is None]
        if alive:
            raise RuntimeError(f"bndl_like workers still alive after close(): pids {alive}")


class DaskSystem:
    name = DASK

    def __init__(self, watchdog: Watchdog, threads_per_worker: int = 1) -> None:
        from distributed import Client, LocalCluster

        self.client = self.cluster = None
        try:
            self.cluster = LocalCluster(n_workers=2, threads_per_worker=threads_per_worker, processes=True,
                                        dashboard_address=None, host="127.0.0.1",
                                        silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
            self.client.wait_for_workers(2, timeout=60)
        except BaseException:
            self.close()
            raise

    def _gather(self, futures) -> list:
        from distributed import wait

        wait(futures, timeout=TIMEOUT)
        return self.client.gather(futures)

    def many(self, n: int) -> list:
        return self._gather(self.client.map(noop, range(n), pure=False))

    def one(self, i: int):
        return self.client.submit(noop, i, pure=False).result(timeout=60)

    def all_to_all(self, width: int) -> list:
        submit = self.client.submit
        first = [submit(noop, i, pure=False) for i in range(width)]
        return self._gather([submit(add, j, *first, pure=False) for j in range(width)])

    def layers(self, width: int, layers: int) -> list:
        submit = self.client.submit
        prev = [submit(noop, j, pure=False) for j in range(width)]
        keep = list(prev)
        for _ in range(1, layers):
            prev = [submit(add, prev[j], prev[(j + 1) % width], pure=False) for j in range(width)]
            keep.extend(prev)
        return self._gather(prev)

    def array_sum(self, arr):
        return self.client.submit(np.sum, arr, pure=False).result(timeout=TIMEOUT)

    def sleepers(self, n: int, seconds: float, concurrency: int = 1) -> list:
        return self._gather(self.client.map(sleep_task, range(n), seconds=seconds, pure=False))

    def worker_pids(self) -> list[int]:
        return sorted(self.client.run(os.getpid).values())

    def close(self) -> None:
        try:
            if self.client is not None:
                self.client.close(timeout=30)
        finally:
            if self.cluster is not None:
                self.cluster.close(timeout=30)


class PoolSystem:
    """ProcessPoolExecutor(2). Its constructor runs 2 tasks, so that both processes exist."""

    name = POOL

    def __init__(self, watchdog: Watchdog) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.ex = ProcessPoolExecutor(2)
        try:
            futures = [self.ex.submit(noop, i) for i in range(2)]
            [f.result(timeout=60) for f in futures]
        except BaseException:
            self.close()
            raise

    def many(self, n: int) -> list:
        futures = [self.ex.submit(noop, i) for i in range(n)]
        return [f.result(timeout=TIMEOUT) for f in futures]

    def many_map(self, n: int, chunksize: int) -> list:
        return list(self.ex.map(noop, range(n), chunksize=chunksize, timeout=TIMEOUT))

    def one(self, i: int):
        return self.ex.submit(noop, i).result(timeout=60)

    def all_to_all(self, width: int) -> list:
        """No dependencies in a pool: the driver waits for layer 1, then submits layer 2."""
        first = [f.result(timeout=TIMEOUT) for f in [self.ex.submit(noop, i) for i in range(width)]]
        second = [self.ex.submit(add, j, *first) for j in range(width)]
        return [f.result(timeout=TIMEOUT) for f in second]

    def layers(self, width: int, layers: int) -> list:
        prev = [f.result(timeout=TIMEOUT) for f in [self.ex.submit(noop, j) for j in range(width)]]
        for _ in range(1, layers):
            futures = [self.ex.submit(add, prev[j], prev[(j + 1) % width]) for j in range(width)]
            prev = [f.result(timeout=TIMEOUT) for f in futures]
        return prev

    def array_sum(self, arr):
        return self.ex.submit(np.sum, arr).result(timeout=TIMEOUT)

    def sleepers(self, n: int, seconds: float, concurrency: int = 1) -> list:
        futures = [self.ex.submit(sleep_task, i, seconds) for i in range(n)]
        out = []
        for f in futures:
            try:
                out.append(f.result(timeout=TIMEOUT))
            except Exception as exc:
                raise RuntimeError(f"{type(exc).__name__} after {len(out)} of {n} results") from exc
        return out

    def worker_pids(self) -> list[int]:
        return sorted(self.ex._processes)  # private, but the only way to a worker's pid

    def close(self) -> None:
        pids = list(getattr(self.ex, "_processes", None) or {})
        self.ex.shutdown(wait=True, cancel_futures=True)
        for pid in pids:  # after a BrokenProcessPool the executor terminated them; make sure
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 0)
                os.kill(pid, signal.SIGKILL)


class RaySystem:
    """ray.init(num_cpus=2): at most 2 tasks of 1 CPU run at once, like the others."""

    name = RAY

    def __init__(self, watchdog: Watchdog) -> None:
        import ray

        self.ray = ray
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, object_store_memory=2 << 30)
        try:
            self.noop, self.add = ray.remote(noop), ray.remote(add)
            self.sleep_task, self.array_sum_r = ray.remote(sleep_task), ray.remote(array_sum)
            self.getpid = ray.remote(getpid)
        except BaseException:
            self.close()
            raise

    def many(self, n: int) -> list:
        return self.ray.get([self.noop.remote(i) for i in range(n)], timeout=TIMEOUT)

    def one(self, i: int):
        return self.ray.get(self.noop.remote(i), timeout=60)

    def all_to_all(self, width: int) -> list:
        first = [self.noop.remote(i) for i in range(width)]
        return self.ray.get([self.add.remote(j, *first) for j in range(width)], timeout=TIMEOUT)

    def layers(self, width: int, layers: int) -> list:
        prev = [self.noop.remote(j) for j in range(width)]
        for _ in range(1, layers):
            prev = [self.add.remote(prev[j], prev[(j + 1) % width]) for j in range(width)]
        return self.ray.get(prev, timeout=TIMEOUT)

    def array_sum(self, arr):
        return self.ray.get(self.array_sum_r.remote(arr), timeout=TIMEOUT)

    def sleepers(self, n: int, seconds: float, concurrency: int = 1) -> list:
        return self.ray.get([self.sleep_task.remote(i, seconds) for i in range(n)], timeout=TIMEOUT)

    def worker_pids(self) -> list[int]:
        return sorted(set(self.ray.get([self.getpid.remote() for _ in range(20)], timeout=60)))

    def close(self) -> None:
        self.ray.shutdown()


# -- the workloads ----------------------------------------------------------------------------------------


class EchoSystem:
    """The floor of W2: a 5-byte message to an asyncio streams echo server in another process
    and back (``benchmarks/rmi.py --serve echo``), round trips timed one by one inside one event
    loop, TCP_NODELAY on both ends. It runs no task: W2 only."""

    name = ECHO

    def __init__(self, watchdog: Watchdog) -> None:
        import asyncio

        import rmi

        self._stack = contextlib.ExitStack()
        self.loop = asyncio.new_event_loop()
        try:
            address = self._stack.enter_context(rmi.server_process("echo"))
            self.client = self.loop.run_until_complete(rmi.EchoClient.connect(address))
        except BaseException:
            self.loop.close()
            self._stack.close()
            raise

    def latencies(self, n: int, warmup: int) -> list[float]:
        """Seconds of each of ``n`` sequential round trips (after ``warmup`` more)."""
        async def measure() -> list[float]:
            for _ in range(warmup):
                await self.client.round_trip()
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                await self.client.round_trip()
                out.append(time.perf_counter() - t0)
            return out
        return self.loop.run_until_complete(measure())

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.client.close())
        finally:
            self.loop.close()
            self._stack.close()


def timed(fn: Callable, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def run_w1(system, counts: Counts, report: Report, pool_map: bool = False) -> None:
    n = counts.w1_tasks
    sec = report.section("W1", f"{n:,} independent no-op tasks submitted at once", "tasks/s", "higher",
                         ["median", "best"])
    label, fn, args = system.name, system.many, (n,)
    if pool_map:
        label, fn, args = POOL_MAP, system.many_map, (n, counts.w1_chunksize)
        sec.notes.append(f"{POOL_MAP}: map(noop, range(n), chunksize={counts.w1_chunksize}), "
                         "the batched way to use a pool")
    rates = []
    for r in range(counts.w1_rounds):
        dt, out = timed(fn, *args)
        if out != list(range(n)):
            raise AssertionError(f"W1 {label}: wrong results")
        rates.append(n / dt)
        progress(f"W1 {label} round {r + 1}: {n / dt:,.0f} tasks/s ({dt:.3f} s)")
    sec.rows[label] = {"median": statistics.median(rates), "best": max(rates), "rounds": rates}


def run_w2(system, counts: Counts, report: Report) -> None:
    sec = report.section("W2", f"{counts.w2_jobs} sequential one-task jobs", "µs", "lower", ["p50", "p99"])
    if isinstance(system, EchoSystem):
        lat = [s * 1e6 for s in system.latencies(counts.w2_jobs, counts.w2_warmup)]
        sec.notes.append(f"{ECHO}: one 5-byte message to another process and back, no task (the floor)")
    else:
        for i in range(counts.w2_warmup):
            system.one(i)
        lat = []
        for i in range(counts.w2_jobs):
            t0 = time.perf_counter()
            out = system.one(i)
            lat.append((time.perf_counter() - t0) * 1e6)
            if out != i:
                raise AssertionError(f"W2 {system.name}: {out!r} != {i}")
    lat.sort()
    sec.rows[system.name] = {"p50": percentile(lat, 50), "p99": percentile(lat, 99),
                             "mean": statistics.fmean(lat)}
    progress(f"W2 {system.name}: p50 {percentile(lat, 50):,.0f} µs, p99 {percentile(lat, 99):,.0f} µs")


def run_w3(system, counts: Counts, report: Report) -> None:
    w = counts.w3a_width
    sec = report.section("W3a", f"{w}x{w} all-to-all two-layer DAG ({w} + {w} tasks, {w * w:,} edges)",
                         "s", "lower", ["median", "best"])
    expected = [j + w * (w - 1) // 2 for j in range(w)]
    walls = []
    for _ in range(counts.w3_rounds):
        dt, out = timed(system.all_to_all, w)
        if out != expected:
            raise AssertionError(f"W3a {system.name}: wrong results")
        walls.append(dt)
    sec.rows[system.name] = {"median": statistics.median(walls), "best": min(walls), "rounds": walls}
    progress(f"W3a {system.name}: {statistics.median(walls):.3f} s")

    w, layers = counts.w3b_width, counts.w3b_layers
    sec = report.section("W3b", f"{layers} layers of {w:,} tasks, each task takes 2 of the layer before",
                         "s", "lower", ["median", "best"])
    expected = expected_layers(w, layers)
    walls = []
    for _ in range(counts.w3_rounds):
        dt, out = timed(system.layers, w, layers)
        if out != expected:
            raise AssertionError(f"W3b {system.name}: wrong results")
        walls.append(dt)
    sec.rows[system.name] = {"median": statistics.median(walls), "best": min(walls), "rounds": walls}
    progress(f"W3b {system.name}: {statistics.median(walls):.3f} s")
    if system.name == POOL:
        for key in ("W3a", "W3b"):
            report.sections[key].notes.append(
                f"{POOL}: no dependencies; the driver waits for each layer and submits the next "
                "with the values (emulated, not comparable as a DAG scheduler)")


def run_w4(system, counts: Counts, report: Report, arr) -> None:
    sec = report.section("W4", f"a 64 MiB array from the driver into a task returning its sum, "
                               f"{counts.w4_repeats}x", "MiB/s", "higher", ["overall", "best"])
    expect = float(arr.size)
    system.array_sum(arr)  # warm-up, not counted
    walls = []
    for _ in range(counts.w4_repeats):
        dt, out = timed(system.array_sum, arr)
        if float(out) != expect:
            raise AssertionError(f"W4 {system.name}: sum {out!r} != {expect}")
        walls.append(dt)
    mib = arr.nbytes / MIB
    sec.rows[system.name] = {"overall": mib * len(walls) / sum(walls), "best": mib / min(walls),
                             "walls": walls}
    progress(f"W4 {system.name}: {mib * len(walls) / sum(walls):,.0f} MiB/s")


def run_w5(factory, name: str, counts: Counts, report: Report, concurrency: int) -> None:
    n, s, kill_at = counts.w5_tasks, counts.w5_sleep, counts.w5_kill_at
    key = "W5" if concurrency == 1 else f"W5c{concurrency}"
    slots = 2 * concurrency
    done_before = min(n, int(kill_at / s) * slots)
    bound = kill_at + (n - done_before) * s / concurrency if done_before < n else n * s / slots
    sec = report.section(key, f"{n} tasks of {s * 1000:.0f} ms, one of 2 workers SIGKILLed at {kill_at} s, "
                              f"{concurrency} task(s) at once per worker", "s", "lower", ["wall", "correct"])
    if not sec.notes:
        sec.notes.append(f"lower bound without a restart of the killed worker: {bound:.2f} s "
                         f"({n * s / slots:.2f} s with no kill)")
    row: dict = {}
    system = factory()
    timer = None
    try:
        system.sleepers(2 * slots, 0.0, concurrency)  # both workers up and the function imported
        pids = system.worker_pids()
        victim = pids[0]
        killed: dict = {}
        t0 = time.perf_counter()

        def kill() -> None:
            try:
                os.kill(victim, signal.SIGKILL)
                killed["at"] = time.perf_counter() - t0
            except ProcessLookupError as exc:
                killed["error"] = err_text(exc)

        timer = threading.Timer(kill_at, kill)
        timer.start()
        try:
            out = system.sleepers(n, s, concurrency)
            error = None
        except Exception as exc:
            out, error = None, err_text(exc)
        wall = time.perf_counter() - t0
        timer.cancel()
        timer.join()
        correct = sum(1 for i, v in enumerate(out or []) if v == i) if out is not None else 0
        row = {"wall": wall, "correct": correct, "all_correct": out == list(range(n)),
               "killed_pid": victim, "killed_at": killed.get("at"), "kill_error": killed.get("error"),
               "error": error, "outcome": "ok" if out == list(range(n)) else "fails"}
        if error:
            row["correct"] = None
        progress(f"{key} {name}: {row['outcome']} in {wall:.2f} s"
                 + (f" ({error})" if error else f", {correct}/{n} correct"))
    except Exception as exc:
        row = {"error": err_text(exc), "outcome": "error"}
        progress(f"{key} {name}: {err_text(exc)}")
    finally:
        if timer is not None:
            timer.cancel()
        try:
            system.close()
        except Exception as exc:
            row["close_error"] = err_text(exc)
    sec.rows[name] = row


def run_w6(factory, name: str, counts: Counts, report: Report) -> None:
    sec = report.section("W6", "start-up to 2 ready workers, one task, shut-down", "s", "lower",
                         ["first start", "start", "start+task", "stop"])
    starts, firsts, stops = [], [], []
    for _ in range(counts.w6_repeats):
        t0 = time.perf_counter()
        system = factory()
        try:
            t1 = time.perf_counter()
            if system.one(7) != 7:
                raise AssertionError(f"W6 {name}: wrong result")
            t2 = time.perf_counter()
        finally:
            t3 = time.perf_counter()
            system.close()
            t4 = time.perf_counter()
        starts.append(t1 - t0)
        firsts.append(t2 - t0)
        stops.append(t4 - t3)
    # the first includes what the system imports and starts once per process (for bndl_like the
    # driver's modules and the fork server, unless a workload before this one started them)
    sec.rows[name] = {"first start": starts[0], "start": statistics.median(starts),
                      "start+task": statistics.median(firsts),
                      "stop": statistics.median(stops), "starts": starts, "stops": stops}
    progress(f"W6 {name}: start {statistics.median(starts):.3f} s, stop {statistics.median(stops):.3f} s")


def run_memory(counts: Counts, report: Report, watchdog: Watchdog) -> None:
    """tracemalloc on the driver around building and running a Job of ``mem_tasks`` no-op FuncTasks."""
    from bndl_like import ExecutionContext, FuncTask, Job

    n = counts.mem_tasks
    ctx = ExecutionContext.local(workers=2)
    try:
        ctx.await_workers()
        list(ctx.execute(Job(ctx, [FuncTask(ctx, i, noop, args=(i,)) for i in range(100)])))  # warm-up
        stall = LoopStallProbe(ctx._loop)  # private: the driver's event loop
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            args = [(i,) for i in range(n)]  # the caller's own objects: the ids, the args tuples, the list
            user = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.reset_peak()
            t0 = time.perf_counter()
            tasks = [FuncTask(ctx, i, noop, args=a) for i, a in enumerate(args)]
            job = Job(ctx, tasks, name="memory")
            built = tracemalloc.get_traced_memory()[0] - base - user
            t1 = time.perf_counter()
            count = checksum = 0
            with watchdog.armed(job.cancel, TIMEOUT * 2, "bndl_like MEM"):
                for result in ctx.execute(job):  # the results are not kept
                    count += 1
                    checksum += result
            t2 = time.perf_counter()
            peak = tracemalloc.get_traced_memory()[1] - base - user
            gc.collect()
            after = tracemalloc.get_traced_memory()[0] - base - user
            del tasks, job
            gc.collect()
            released = tracemalloc.get_traced_memory()[0] - base - user
        finally:
            tracemalloc.stop()
            stall.stop()
        if count != n or checksum != n * (n - 1) // 2:
            raise AssertionError(f"MEM: {count} results, checksum {checksum}")
        report.memory = {
            "tasks": n, "user_bytes": user, "built_bytes": built, "peak_bytes": peak,
            "after_run_bytes": after, "after_release_bytes": released,
            "built_per_task": built / n, "peak_per_task": peak / n, "after_run_per_task": after / n,
            "after_release_per_task": released / n, "build_s": t1 - t0, "run_s_traced": t2 - t1,
            "jobs_listed": len(ctx.jobs), "longest_loop_stall_s": stall.longest,
        }
        progress(f"MEM: peak {peak / n:,.0f} B/task, after the run {after / n:,.0f} B/task")
    finally:
        ctx.close()


# -- driver -----------------------------------------------------------------------------------------------


def guarded(report: Report, key: str, system: str, fn: Callable, *args) -> None:
    """Run one workload; an error becomes the row's figure instead of stopping the benchmark."""
    try:
        fn(*args)
    except Exception as exc:
        progress(f"{key} {system}: FAILED {err_text(exc)}")
        traceback.print_exc(file=sys.stderr)
        report.notes.append(f"{key} {system} failed: {err_text(exc)}")


def factories(names: list[str], watchdog: Watchdog) -> dict[str, Callable]:
    table = {BNDL: lambda: BndlSystem(watchdog), DASK: lambda: DaskSystem(watchdog),
             POOL: lambda: PoolSystem(watchdog), RAY: lambda: RaySystem(watchdog),
             ECHO: lambda: EchoSystem(watchdog)}
    return {name: table[name] for name in names}


def run_all(args, counts: Counts, report: Report, watchdog: Watchdog) -> None:
    peers = [] if args.no_peers else [PEERS[p] for p in args.peers]
    names = [BNDL] + [p for p in peers if p != ECHO] + ([RAY] if args.ray_ok else [])
    make = factories(names + [ECHO], watchdog)
    only = args.only
    arr = np.ones(BULK_ELEMENTS) if "W4" in only else None

    if "W2" in only and ECHO in peers:
        progress(f"starting {ECHO} for W2")
        guarded(report, "W2", ECHO, _run_echo, make[ECHO], counts, report)
    if any(w in only for w in ("W1", "W2", "W3", "W4")):
        for name in names:
            progress(f"starting {name} for W1-W4")
            try:
                system = make[name]()
            except Exception as exc:
                progress(f"{name}: could not start: {err_text(exc)}")
                report.notes.append(f"{name} could not start: {err_text(exc)}")
                continue
            try:
                system.many(min(200, counts.w1_tasks))  # warm-up
                if "W1" in only:
                    guarded(report, "W1", name, run_w1, system, counts, report)
                    if name == POOL:
                        guarded(report, "W1", POOL_MAP, run_w1, system, counts, report, True)
                if "W2" in only:
                    guarded(report, "W2", name, run_w2, system, counts, report)
                if "W3" in only:
                    guarded(report, "W3", name, run_w3, system, counts, report)
                if "W4" in only:
                    guarded(report, "W4", name, run_w4, system, counts, report, arr)
            finally:
                try:
                    system.close()
                except Exception as exc:
                    report.notes.append(f"{name} close failed: {err_text(exc)}")
    del arr

    if "W5" in only:
        for concurrency in counts.w5_concurrency:
            for name in names:
                if concurrency != 1 and name not in (BNDL, DASK):
                    continue
                if name == BNDL:
                    factory = make[BNDL]
                    label = BNDL
                elif name == DASK:
                    factory = functools.partial(DaskSystem, watchdog, threads_per_worker=concurrency)
                    label = DASK
                else:
                    factory, label = make[name], name
                progress(f"W5 {label}, {concurrency} task(s) at once per worker")
                guarded(report, "W5", label, run_w5, factory, label, counts, report, concurrency)
        for key, sec in report.sections.items():
            if key.startswith("W5"):
                if DASK in sec.rows:
                    sec.notes.append(f"{DASK}: the nanny restarts the killed worker process")
                if RAY in sec.rows:
                    sec.notes.append(f"{RAY}: the raylet starts a new worker process; tasks are retried")
                if POOL in sec.rows:
                    sec.notes.append(f"{POOL}: a killed worker breaks the whole pool (BrokenProcessPool)")
                if BNDL in sec.rows:
                    sec.notes.append(f"{BNDL}: the local cluster starts a new worker process, which "
                                     "joins the running job")

    if "W6" in only:
        for name in names:
            progress(f"W6 {name}")
            guarded(report, "W6", name, run_w6, make[name], name, counts, report)
        if POOL in report.sections.get("W6", Section("", "", "", "", [])).rows:
            report.sections["W6"].notes.append(
                f"{POOL}: start = create + a round trip of 2 tasks (processes start on demand)")
        if RAY in report.sections.get("W6", Section("", "", "", "", [])).rows:
            report.sections["W6"].notes.append(f"{RAY}: start = ray.init(); workers may still be starting")

    if "MEM" in only:
        progress(f"MEM: a job of {counts.mem_tasks:,} tasks under tracemalloc")
        guarded(report, "MEM", BNDL, run_memory, counts, report, watchdog)


def _run_echo(make: Callable, counts: Counts, report: Report) -> None:
    system = make()
    try:
        run_w2(system, counts, report)
    finally:
        system.close()


def check_targets(report: Report) -> None:
    t = report.targets

    def add_target(name: str, value: float | None, fmt: str, target: str, ok: Callable[[float], bool],
                   note: str = "") -> None:
        if value is None:
            t.append(Target(name, "not measured", target, None, note))
        else:
            t.append(Target(name, fmt.format(value), target, bool(ok(value)), note))

    def get(key: str, system: str, col: str):
        row = report.row(key, system)
        value = None if row is None else row.get(col)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    if "W1" in report.sections:
        add_target("W1 tasks/s (median)", get("W1", BNDL, "median"), "{:,.0f}", f"≥ {TARGET_W1_TASKS_S:,}",
                   lambda v: v >= TARGET_W1_TASKS_S)
        ratio = report.sections["W1"].ratios().get(DASK, {}).get("median")
        add_target("W1 bndl_like / dask (median)", ratio, "{:.2f}x", f"≥ {TARGET_W1_VS_DASK:g}x",
                   lambda v: v >= TARGET_W1_VS_DASK)
    if "W2" in report.sections:
        add_target("W2 p50", get("W2", BNDL, "p50"), "{:,.0f} µs", f"≤ {TARGET_W2_P50_US:,.0f} µs",
                   lambda v: v <= TARGET_W2_P50_US)
        ratios = report.sections["W2"].ratios()
        if ECHO in report.sections["W2"].rows:
            add_target(f"W2 p50 / {ECHO} p50", ratios.get(ECHO, {}).get("p50"), "{:.2f}x",
                       f"≤ {TARGET_W2_VS_ECHO:g}x", lambda v: v <= TARGET_W2_VS_ECHO)
        if POOL in report.sections["W2"].rows:
            add_target(f"W2 p50 / {POOL} p50", ratios.get(POOL, {}).get("p50"), "{:.2f}x", "≤ 1x",
                       lambda v: v <= 1.0)
    if "W3a" in report.sections:
        add_target("W3 100x100 (median)", get("W3a", BNDL, "median"), "{:.3f} s", f"≤ {TARGET_W3A_S} s",
                   lambda v: v <= TARGET_W3A_S)
    if "W3b" in report.sections:
        add_target("W3 3x1,000 (median)", get("W3b", BNDL, "median"), "{:.3f} s", f"≤ {TARGET_W3B_S} s",
                   lambda v: v <= TARGET_W3B_S)
    if "W4" in report.sections:
        add_target("W4 64 MiB into a task (overall)", get("W4", BNDL, "overall"), "{:,.0f} MiB/s",
                   f"≥ {TARGET_W4_MIB_S:,.0f} MiB/s", lambda v: v >= TARGET_W4_MIB_S)
    for key, label in (("W5", "W5 a worker SIGKILLed"), ("W5c2", "W5 ditto, 2 at once per worker")):
        if key not in report.sections:
            continue
        row = report.row(key, BNDL) or {}
        wall = get(key, BNDL, "wall")
        ok = bool(row.get("all_correct")) and wall is not None and wall <= TARGET_W5_S
        value = "not measured" if wall is None else \
            f"{row.get('correct')}/{report.sections[key].title.split()[0]} correct, {wall:.2f} s"
        t.append(Target(label, value, f"all correct in ≤ {TARGET_W5_S} s", None if wall is None else ok,
                        report.sections[key].notes[0]))
    if "W6" in report.sections:
        add_target("W6 start", get("W6", BNDL, "start"), "{:.3f} s", f"≤ {TARGET_W6_START_S} s",
                   lambda v: v <= TARGET_W6_START_S)
        add_target("W6 stop", get("W6", BNDL, "stop"), "{:.3f} s", f"≤ {TARGET_W6_STOP_S} s",
                   lambda v: v <= TARGET_W6_STOP_S)
    if report.memory is not None:
        m = report.memory
        add_target("MEM peak per task", m["peak_per_task"], "{:,.0f} B", f"≤ {TARGET_MEM_B:,.0f} B",
                   lambda v: v <= TARGET_MEM_B)
        add_target("MEM after the run per task", m["after_run_per_task"], "{:,.0f} B",
                   f"≤ {TARGET_MEM_B:,.0f} B", lambda v: v <= TARGET_MEM_B)


def fmt_value(value, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if unit == "s":
            return f"{value:.3f}"
        return f"{value:,.0f}"
    return str(value)


def print_table(report: Report, meta: dict, file=sys.stdout) -> None:
    p = lambda *a: print(*a, file=file)  # noqa: E731
    p(f"bndl_like execute benchmark  {meta['date']}  {meta['machine']}  Python {meta['python']}")
    p("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    p("ratios are bndl_like / peer; read them with the section's 'higher/lower is better'")
    for key, sec in report.sections.items():
        p("")
        p(f"{key}  {sec.title}  [{sec.unit}, {sec.better} is better]")
        width = max(len(s) for s in sec.rows) if sec.rows else 10
        p("    " + "system".ljust(width) + "".join(c.rjust(13) for c in sec.columns) + "   note")
        for system, row in sec.rows.items():
            cells = "".join(fmt_value(row.get(c), sec.unit if c != "correct" else "").rjust(13)
                            for c in sec.columns)
            extra = []
            if row.get("outcome") and row.get("outcome") != "ok":
                extra.append(row["outcome"])
            if row.get("error"):
                extra.append(row["error"])
            if row.get("close_error"):
                extra.append("close: " + row["close_error"])
            p("    " + system.ljust(width) + cells + ("   " + "; ".join(extra) if extra else ""))
        for system, ratio in sec.ratios().items():
            p("    " + f"bndl_like / {system}: " + ", ".join(f"{c} {v:.2f}x" for c, v in ratio.items()))
        for note in sec.notes:
            p(f"    note: {note}")
    if report.memory is not None:
        m = report.memory
        p("")
        p(f"MEM  driver memory (tracemalloc) for a job of {m['tasks']:,} no-op FuncTasks, bndl_like only")
        p(f"    caller's own objects (ids, args tuples, list)   {m['user_bytes']:>14,} B")
        p(f"    tasks + Job built                               {m['built_bytes']:>14,} B "
          f"= {m['built_per_task']:,.0f} B/task")
        p(f"    peak while building and running                 {m['peak_bytes']:>14,} B "
          f"= {m['peak_per_task']:,.0f} B/task")
        p(f"    after the run (tasks and Job still referenced)  {m['after_run_bytes']:>14,} B "
          f"= {m['after_run_per_task']:,.0f} B/task")
        p(f"    after del tasks, job (ctx.jobs still lists it)  {m['after_release_bytes']:>14,} B "
          f"= {m['after_release_per_task']:,.0f} B/task")
        p(f"    build {m['build_s']:.2f} s, run {m['run_s_traced']:.2f} s (slowed by tracemalloc); longest "
          f"stall of the driver's event loop {m['longest_loop_stall_s']:.2f} s (heartbeat timeout: 6 s)")
    p("")
    p("targets (bndl_like)")
    for tg in report.targets:
        state = "-" if tg.met is None else ("met" if tg.met else "MISSED")
        p(f"    {tg.name:<34} {tg.value:>26}   target {tg.target:<22} {state}"
          + (f"   ({tg.note})" if tg.note else ""))
    for note in report.notes:
        p(f"note: {note}")


def versions() -> dict[str, str]:
    out = {}
    for mod in ("bndl_like", "numpy", "cloudpickle", "dask", "distributed", "ray"):
        try:
            from importlib.metadata import version

            out[mod] = version({"bndl_like": "bndl-like"}.get(mod, mod))
        except Exception:
            out[mod] = "not installed"
    return out


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point fd 1 at stderr while the workloads run: what peers (Ray's raylet) and worker processes print
    must not mix with the table or the JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--quick", action="store_true", help="smaller counts, a smoke run (< 60 s)")
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help="comma-separated workloads to run, of " + ",".join(WORKLOADS))
    ap.add_argument("--no-peers", action="store_true", help="run bndl_like only")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help="comma-separated peers to run beside bndl_like, of " + ",".join(PEERS)
                         + f" (default all; {ECHO}: W2 only)")
    ap.add_argument("--ray", action="store_true",
                    help="also run Ray; refused unless loopback is the only network interface "
                         "(Ray listens on all of them), e.g. under `unshare -n`")
    args = ap.parse_args(argv)
    only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    args.only = only
    args.peers = [p.strip().lower() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    return args


def prepare_environment() -> None:
    """Workers (bndl_like, dask, Ray) inherit the environment: make execute_tasks importable there."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    for d in (ROOT, HERE):
        if d not in parts:
            parts.insert(0, d)
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "error")
    # dask warns that the 64 MiB argument of W4 makes a large graph: that is the point of W4
    warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
    warnings.filterwarnings("ignore", message=".*[Ll]arge object.*")


def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_environment()
    counts = QUICK if args.quick else FULL
    report = Report()
    args.ray_ok = False
    if args.ray and not args.no_peers:
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            report.notes.append(f"Ray skipped: {err_text(exc)} (pip install ray)")
        else:
            if only_loopback():
                args.ray_ok = True
            else:
                report.notes.append("Ray skipped: it listens on every interface; run it under `unshare -n "
                                    "sh -c 'ip link set lo up && python benchmarks/execute.py --ray'`")
    elif not args.no_peers:
        report.notes.append("Ray not run (opt-in: --ray, where loopback is the only interface)")
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "versions": versions(),
        "quick": args.quick,
        "counts": asdict(counts),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    watchdog = Watchdog()
    t0 = time.perf_counter()
    try:
        with stdout_to_stderr():
            run_all(args, counts, report, watchdog)
    except KeyboardInterrupt:
        report.notes.append("interrupted")
    finally:
        watchdog.close()
        leftovers = stop_leftovers()
        if leftovers:
            report.notes.append("processes still alive at the end, stopped by pid: " + "; ".join(leftovers))
        if watchdog.fired:
            report.notes.append("cancelled by the watchdog: " + ", ".join(watchdog.fired))
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    check_targets(report)
    if args.json:
        print(json.dumps({
            "meta": meta,
            "sections": {k: {"title": s.title, "unit": s.unit, "better": s.better, "rows": s.rows,
                             "ratios_bndl_over_peer": s.ratios(), "notes": s.notes}
                         for k, s in report.sections.items()},
            "memory": report.memory,
            "targets": [asdict(tg) for tg in report.targets],
            "notes": report.notes,
        }, indent=2, default=str))
    else:
        print_table(report, meta)
        print(f"\n({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
