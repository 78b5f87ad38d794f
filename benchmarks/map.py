"""``ctx.map`` over many no-op items against ProcessPoolExecutor.map and dask ``client.map``.

    python benchmarks/map.py [--items 100000] [--rounds 3] [--no-dask]

All systems run in the same process, one after another, with 2 worker processes each:

* bndl_like: ``ctx.map(noop, items)`` with its default chunk size
  (``default_chunksize``: ``ceil(n / (workers * 8))`` bounded to [1, 10 000]);
* ``ProcessPoolExecutor(2).map(noop, items, chunksize=...)`` with the same chunk size, and with
  the best of a few chunk sizes;
* dask.distributed ``client.gather(client.map(noop, items))`` on a ``LocalCluster`` of 2
  single-threaded worker processes (skipped when ``distributed`` cannot be imported).

Prints items/s (best and median of the rounds) and the ratio of bndl_like to the others.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from execute import prepare_environment  # noqa: E402
from execute_tasks import noop  # noqa: E402

WORKERS = 2


def timed(fn: Callable[[], list], n: int, rounds: int, warmup: bool = True) -> tuple[float, float]:
    """(best, median) items/s of ``rounds`` calls of ``fn`` (after one warm-up call)."""
    if warmup:
        out = fn()
        assert len(out) == n and out[-1] == n - 1, "wrong result"
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        rates.append(n / (time.perf_counter() - start))
        assert len(out) == n
    return max(rates), statistics.median(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-dask", action="store_true")
    args = parser.parse_args(argv)
    prepare_environment()
    from bndl_like import ExecutionContext
    from bndl_like.execute.executor import default_chunksize

    n = args.items
    items = list(range(n))
    chunk = default_chunksize(n, WORKERS)
    results: dict[str, tuple[float, float]] = {}

    with ExecutionContext.local(workers=WORKERS) as ctx:
        assert ctx.await_workers() == WORKERS
        results["bndl_like ctx.map"] = timed(lambda: ctx.map(noop, items), n, args.rounds)
        print("bndl_like", results["bndl_like ctx.map"], flush=True)

    with ProcessPoolExecutor(WORKERS) as pool:
        results[f"ProcessPoolExecutor chunksize={chunk}"] = timed(
            lambda: list(pool.map(noop, items, chunksize=chunk)), n, args.rounds)
        best_label, best = None, (0.0, 0.0)
        for size in sorted({1_000, chunk // 2, chunk, 2 * chunk, max(1, n // WORKERS)}):
            rate = timed(lambda size=size: list(pool.map(noop, items, chunksize=size)), n, args.rounds)
            if rate[0] > best[0]:
                best_label, best = f"ProcessPoolExecutor best chunksize={size}", rate
        results[best_label] = best
        print("pool", results, flush=True)

    if not args.no_dask:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            print(f"dask skipped: {exc}")
        else:
            with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                              dashboard_address=None, host="127.0.0.1") as cluster, Client(cluster) as client:
                # one round, no warm-up: dask schedules one task per item
                results["dask client.map"] = timed(
                    lambda: client.gather(client.map(noop, items, pure=False)), n, 1, warmup=False)

    print(f"map of {n} no-op items, {WORKERS} worker processes, {os.cpu_count()} cores, "
          f"bndl_like chunk size {chunk}")
    ours = results["bndl_like ctx.map"][0]
    for label, (best_rate, median_rate) in results.items():
        ratio = ours / best_rate
        print(f"  {label:45s} best {best_rate:12,.0f} items/s  median {median_rate:12,.0f} items/s  "
              f"bndl_like/this {ratio:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
