"""What cluster profiling costs: W1 of ``execute.py`` with the profilers off and on.

W1 is 10,000 independent no-op tasks in one Job on ``ExecutionContext.local(workers=2)``.
Rounds run interleaved (off, CPU on, memory on, off, ...) so that drift of the machine hits
every mode alike; each figure is the median (and best) of the rounds. "CPU on" is
``ctx.cpu_profiling`` (yappi on every thread of both workers, the clock of ``--clock``)
started before the Job and stopped after it; "memory on" is ``ctx.memory_profiling`` with
1 frame. Starting, stopping and collecting the stats are timed apart. Run from the
repository root::

    python benchmarks/profiling.py                 # 10,000 tasks, 5 rounds per mode (~1 min)
    python benchmarks/profiling.py --quick         # 2,000 tasks, 3 rounds
    python benchmarks/profiling.py --clock wall

All traffic stays on 127.0.0.1; the workers stop with the context.
"""

from __future__ import annotations

import argparse
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

MODES = ("off", "cpu", "memory")




def w1(ctx, n: int) -> float:
    """Seconds to run ``n`` no-op tasks as one Job."""
    from bndl_like import FuncTask, Job

    tasks = [FuncTask(ctx, i, noop, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    results = list(ctx.execute(Job(ctx, tasks, name="W1")))
    took = time.perf_counter() - t0
    if results != list(range(n)):
        raise AssertionError("W1: wrong results")
    return took


def run_round(ctx, mode: str, n: int, clock: str, costs: dict) -> float:
    if mode == "off":
        return w1(ctx, n)
    profiler = ctx.cpu_profiling if mode == "cpu" else ctx.memory_profiling
    t0 = time.perf_counter()
    profiler.start(clock) if mode == "cpu" else profiler.start(1)
    costs.setdefault(f"{mode} start", []).append(time.perf_counter() - t0)
    try:
        took = w1(ctx, n)
        t0 = time.perf_counter()
        if mode == "cpu":
            costs.setdefault("functions", []).append(len(profiler.get_stats()))
        else:
            costs.setdefault("blocks", []).append(sum(s.count for s in profiler.take_snapshot().statistics()))
        costs.setdefault(f"{mode} collect", []).append(time.perf_counter() - t0)
    finally:
        t0 = time.perf_counter()
        profiler.stop()
        costs.setdefault(f"{mode} stop", []).append(time.perf_counter() - t0)
    return took


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=None, help="tasks per round (default 10,000)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per mode (default 5)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="yappi's clock")
    ap.add_argument("--quick", action="store_true", help="2,000 tasks, 3 rounds")
    args = ap.parse_args(argv)
    n = args.tasks or (2_000 if args.quick else 10_000)
    rounds = args.rounds or (3 if args.quick else 5)
    prepare_environment()

    from bndl_like import ExecutionContext

    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    costs: dict[str, list] = {}
    with ExecutionContext.local(workers=2) as ctx:
        ctx.await_workers()
        w1(ctx, n)  # warm-up: imports, connections, threads
        for r in range(rounds):
            for mode in MODES:
                took = run_round(ctx, mode, n, args.clock, costs)
                rates[mode].append(n / took)
                print(f"round {r + 1} {mode:>6}: {n / took:9,.0f} tasks/s", file=sys.stderr)

    base = statistics.median(rates["off"])
    print(f"W1: {n:,} no-op tasks in one Job, 2 local workers; median (best) of {rounds} rounds "
          f"per mode, interleaved")
    labels = {"off": "profiling off", "cpu": f"cpu_profiling on ({args.clock} clock)",
              "memory": "memory_profiling on (1 frame)"}
    for mode in MODES:
        med = statistics.median(rates[mode])
        change = "" if mode == "off" else f"   {(med / base - 1) * 100:+.0f}% vs off"
        print(f"  {labels[mode]:<34} {med:9,.0f} tasks/s ({max(rates[mode]):,.0f}){change}")
    for mode in ("cpu", "memory"):
        ms = {k: statistics.median(costs[f"{mode} {k}"]) * 1000 for k in ("start", "collect", "stop")}
        what = (f"get_stats(), {statistics.median(costs['functions']):.0f} functions" if mode == "cpu"
                else f"take_snapshot(), {statistics.median(costs['blocks']):,.0f} blocks")
        print(f"  {mode}: start {ms['start']:.1f} ms, {what} {ms['collect']:.1f} ms, "
              f"stop {ms['stop']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
