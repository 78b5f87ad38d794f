"""A blocked dot of two 2000x2000 arrays in 118 tasks on a local cluster of 2 workers, with
the BLAS threads each worker runs.

    python benchmarks/blas_threads.py [RUNS]                       # as the workers start them
    OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2 \\
        python benchmarks/blas_threads.py [RUNS]                   # as before: a thread per core

Workers of a local cluster or a supervisor run as many BLAS threads as they run tasks,
unless the variables are set (then they are kept): the second line reproduces 2 workers
on 2 cores oversubscribing them.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np

from bndl_like import ExecutionContext, FuncTask, Job

VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def block(a, b, lo, hi):
    return a[lo:hi] @ b


def blas_threads():
    """The BLAS threads of this worker (threadpoolctl, if installed) and its variables."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threads = "unknown (pip install threadpoolctl)"
    else:
        threads = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    return threads, {name: os.environ.get(name) for name in VARIABLES}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    rng = np.random.default_rng(0)
    a, b = rng.random((2000, 2000)), rng.random((2000, 2000))
    bounds = np.linspace(0, 2000, 119).astype(int)
    with ExecutionContext.local(workers=2, progress=False) as ctx:
        for worker, (threads, env) in sorted(ctx.run_each_worker(blas_threads).items()):
            print(f"{worker}: BLAS threads {threads}, {env}")
        ha, hb = ctx.scatter(a), ctx.scatter(b)
        times = []
        for _ in range(runs):
            tasks = [FuncTask(ctx, i, block, (ha, hb, int(lo), int(hi)))
                     for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
            start = time.perf_counter()
            out = np.vstack(list(ctx.execute(Job(ctx, tasks))))
            times.append(time.perf_counter() - start)
        assert np.allclose(out, a @ b)
        print(f"{len(tasks)} tasks on {os.cpu_count()} cores: median {statistics.median(times):.2f} s, "
              f"min {min(times):.2f} s, max {max(times):.2f} s over {len(times)} runs")


if __name__ == "__main__":
    main()
