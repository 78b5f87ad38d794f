"""W1 and W2 of ``execute.py`` with the CPU time each process spends per task, and the stages of
one task's round trip.

On a machine that other work keeps busy, wall-clock figures drift with the load; the CPU
time a process spends per task (user + system, from ``/proc/<pid>/stat``) drifts much less, so
this is the figure to compare code before and after a change. Per round it prints:

W1  ``--tasks`` independent no-op tasks in one Job: tasks/s, and µs of CPU per task in the
    driver and in each worker (and their sum: on 2 cores, 2 s / that sum bounds tasks/s).
W2  ``--jobs`` sequential one-task jobs: p50 / p99 µs, and µs of CPU per job per process.

``--stages`` times the steps of W2's round trip instead: the caller's thread, the driver's
loop and the worker's loop and runner thread stamp ``time.perf_counter_ns()`` (one clock for
every process on Linux) at each step, through wrappers installed on both sides (on the worker
with ``run_each_worker``), and the median of each step is printed. The wrappers add a little
time of their own to each step.

Run from the repository root (the workers start from this checkout)::

    python benchmarks/roundtrip.py                  # 3 rounds of W1 (10,000 tasks) and W2 (500 jobs)
    python benchmarks/roundtrip.py --stages         # where one round trip spends its time
    nice -n -10 python benchmarks/roundtrip.py      # less waiting for a core on a busy machine

Everything stays on 127.0.0.1; the workers stop with the context.
"""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from execute import prepare_environment  # noqa: E402
from execute_tasks import noop  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def switches(pid: int) -> int:
    """Voluntary context switches of the live threads of ``pid`` so far: each is a thread
    that blocked (on a lock, a queue, a socket, epoll) and was woken again."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return total


def one_job(ctx, i: int):
    from bndl_like import FuncTask, Job

    return list(ctx.execute(Job(ctx, [FuncTask(ctx, 0, noop, args=(i,))])))[0]


def many(ctx, n: int) -> list:
    from bndl_like import FuncTask, Job

    return list(ctx.execute(Job(ctx, [FuncTask(ctx, i, noop, args=(i,)) for i in range(n)])))


def per_process(pids: list[int], before: list[float], count: int) -> list[float]:
    """µs of CPU per item of each process since ``before``."""
    return [(cpu_seconds(p) - b) / count * 1e6 for p, b in zip(pids, before, strict=True)]


def cpu_text(costs: list[float]) -> str:
    driver, *workers = costs
    return (f"driver {driver:.1f}, workers " + " + ".join(f"{w:.1f}" for w in workers)
            + f", sum {sum(costs):.1f}")


def measure(ctx, pids: list[int], args) -> None:
    for r in range(args.rounds):
        before = [cpu_seconds(p) for p in pids]
        t0 = time.perf_counter()
        out = many(ctx, args.tasks)
        wall = time.perf_counter() - t0
        if out != list(range(args.tasks)):
            raise AssertionError("W1: wrong results")
        costs = per_process(pids, before, args.tasks)
        print(f"round {r + 1} W1 {args.tasks / wall:9,.0f} tasks/s   CPU µs/task: {cpu_text(costs)}",
              flush=True)

        before = [cpu_seconds(p) for p in pids]
        woken = sum(switches(p) for p in pids)
        lat = []
        for i in range(args.jobs):
            t0 = time.perf_counter()
            if one_job(ctx, i) != i:
                raise AssertionError("W2: wrong result")
            lat.append(time.perf_counter() - t0)
        costs = per_process(pids, before, args.jobs)
        woken = (sum(switches(p) for p in pids) - woken) / args.jobs
        lat.sort()
        p50, p99 = lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6
        print(f"round {r + 1} W2 p50 {p50:6,.0f} µs, p99 {p99:6,.0f} µs, {woken:.1f} wake-ups/job   "
              f"CPU µs/job: {cpu_text(costs)}", flush=True)


# -- stages of one round trip -----------------------------------------------------------------------


def _stamp(log: list, cls, name: str, label: str, after: bool = False) -> None:
    """Wrap ``cls.name`` to append ``(label, ns)`` to ``log`` before (or after) each call."""
    original = getattr(cls, name)
    clock = time.perf_counter_ns

    def stamped(*args, **kwargs):
        if not after:
            log.append((label, clock()))
        result = original(*args, **kwargs)
        if after:
            log.append((label, clock()))
        return result
    stamped._rmi_takes_peer = getattr(original, "_rmi_takes_peer", False)  # type: ignore[attr-defined]
    stamped.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(cls, name, stamped)


def _install_worker_stamps() -> int:
    """On a worker (through run_each_worker): stamp the worker's steps."""
    from bndl_like.execute.worker import service
    from bndl_like.rmi import connection

    if not hasattr(service, "_round_trip_stamps"):
        log: list = []
        service._round_trip_stamps = log  # type: ignore[attr-defined]
        W = service.WorkerService
        _stamp(log, connection.Connection, "buffer_updated", "worker: bytes in")
        _stamp(log, W, "run", "worker: tasks.run called")
        _stamp(log, W, "run", "worker: task queued", after=True)
        _stamp(log, W, "_execute", "runner: task starts")
        _stamp(log, W, "_execute", "runner: task ended", after=True)
        _stamp(log, W, "_drain_completed", "worker: loop has the end")
        _stamp(log, connection.Connection, "_flush", "worker: events written")
    return os.getpid()


def _take_worker_stamps() -> list:
    from bndl_like.execute.worker import service

    log = service._round_trip_stamps  # type: ignore[attr-defined]
    out = list(log)
    log.clear()
    return out


def stages(ctx, args) -> None:
    from bndl_like.execute.driver import run
    from bndl_like.rmi import connection

    ctx.run_each_worker(_install_worker_stamps)
    log: list = []
    _stamp(log, run.JobRun, "start", "driver: loop starts the job")
    _stamp(log, run.JobRun, "_flush", "driver: tasks.run sent")
    _stamp(log, connection.Connection, "_flush", "driver: bytes written")
    _stamp(log, connection.Connection, "buffer_updated", "driver: bytes in")
    _stamp(log, run.JobRun, "on_task_events", "driver: events handled")
    _stamp(log, run.JobRun, "_hand_over", "driver: results handed over")
    for i in range(50):
        one_job(ctx, i)
    ctx.run_each_worker(_take_worker_stamps)
    rounds = []
    for i in range(args.jobs):
        log.clear()
        t0 = time.perf_counter_ns()
        one_job(ctx, i)
        rounds.append((t0, time.perf_counter_ns(), list(log)))
    worker = sorted((s for stamps in ctx.run_each_worker(_take_worker_stamps).values() for s in stamps),
                    key=lambda s: s[1])
    times = [s[1] for s in worker]
    by_path: dict[tuple, list] = {}
    for t0, t1, driver in rounds:
        lo, hi = bisect.bisect_left(times, t0), bisect.bisect_right(times, t1)
        seen: set = set()
        steps = [("caller: execute()", t0)]
        for label, t in sorted(driver + worker[lo:hi], key=lambda s: s[1]):
            if label not in seen:  # the first of each step
                seen.add(label)
                steps.append((label, t))
        steps.append(("caller: has the result", t1))
        path = tuple(label for label, _ in steps)
        by_path.setdefault(path, []).append([b[1] - a[1] for a, b in zip(steps, steps[1:], strict=False)])
    path, samples = max(by_path.items(), key=lambda kv: len(kv[1]))
    print(f"{len(samples)} of {args.jobs} round trips took this path; median µs of each step:")
    for (a, b), column in zip(zip(path, path[1:], strict=False), zip(*samples, strict=True), strict=True):
        print(f"  {statistics.median(column) / 1000:8.1f}  {a} -> {b}")
    print(f"  {statistics.median(sum(s) for s in samples) / 1000:8.1f}  in all (median of the sums)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=10_000, help="tasks of W1's job")
    ap.add_argument("--jobs", type=int, default=500, help="W2's one-task jobs per round")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stages", action="store_true", help="time the steps of W2's round trip")
    args = ap.parse_args(argv)
    prepare_environment()
    from bndl_like import ExecutionContext

    with ExecutionContext.local(workers=args.workers) as ctx:
        ctx.await_workers()
        pids = [os.getpid()] + [p.pid for p in ctx._local.processes]
        for i in range(50):  # warm-up
            one_job(ctx, i)
        many(ctx, 2000)
        if args.stages:
            stages(ctx, args)
        else:
            measure(ctx, pids, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
