"""A real driver and up to a thousand real worker nodes on loopback, many nodes per process.

Each worker is a real :class:`bndl_like.rmi.Node` with its own listening socket, connections,
heartbeats and a ``tasks`` service (``WorkerService``) running no-op tasks in its own runner thread;
``--processes`` host processes share them out (one event loop each). The driver is an
``ExecutionContext`` the workers join (its address is their seed). Measured:

- **join**: from starting the host processes until the driver sees every worker;
- **connections**: how many peers each worker node holds once idle (min / median / max), and the
  driver's; what a full mesh would be;
- **tasks/s** for ``--tasks`` no-op tasks in one job, and the driver's CPU seconds and memory
  (RSS) per task and between two jobs;
- **loss**: ``--kill`` of the host processes SIGKILLed while a job runs: how long until the
  driver counts the workers gone, and whether the job still completes (its time against one
  undisturbed).

    python benchmarks/cluster_scale.py --workers 200 --processes 4 --tasks 100000
    python benchmarks/cluster_scale.py --workers 500 --processes 10 --tasks 1000000 --kill 1 --json

The mesh follows the ``mesh`` option (``BNDL_LIKE_MESH``), read by every node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def noop(x):
    return x


# -- a host process: many worker nodes in one event loop ---------------------------------------------

async def host(seed: str, count: int, secret: str, cluster: str) -> None:
    from bndl_like.execute.messages import FUNCTIONS_SERVICE, OUTPUT_SERVICE, TASKS_SERVICE
    from bndl_like.execute.worker import FunctionService, WorkerService
    from bndl_like.execute.worker.output import WorkerOutput
    from bndl_like.rmi import Node

    nodes, services = [], []
    for _ in range(count):
        node = Node(None, "worker", listen="tcp://127.0.0.1:0", seeds=[seed], secret=secret,
                    cluster=cluster)
        tasks = WorkerService(node, max_threads=4)
        functions = FunctionService(1, node=node)
        node.add_service(TASKS_SERVICE, tasks)
        node.add_service(FUNCTIONS_SERVICE, functions)
        # (not installed: the nodes of a host share its stdout; the driver's set_forward is answered)
        node.add_service(OUTPUT_SERVICE, WorkerOutput(node))
        nodes.append(node)
        services.append((tasks, functions))
    await asyncio.gather(*(node.start() for node in nodes))
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # a host whose driver went away (the parent died) stops too
    parent = os.getppid()

    async def watch_parent() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(1)
        stop.set()
    watcher = asyncio.ensure_future(watch_parent())
    await stop.wait()
    watcher.cancel()
    for tasks, _ in services:
        tasks.close()
    await asyncio.gather(*(asyncio.wait_for(node.stop(), 10) for node in nodes), return_exceptions=True)
    for _, functions in services:
        functions.close()


# -- the driver ------------------------------------------------------------------------------------

def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_cpu(thread) -> float:
    """CPU seconds of one of this process's threads (from /proc: 10 ms ticks), 0 when unknown."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, IndexError, ValueError):
        return 0.0


def peer_count(_=None) -> int:
    from bndl_like import current_worker
    return sum(1 for p in current_worker().peers.values() if p.connected)


def run_job(ctx, n: int, tag: str, split: dict | None = None) -> float:
    """Build and run a job of ``n`` no-op tasks; the wall time from the Job on. ``split`` gets
    the CPU seconds this thread spent building the tasks and the Job."""
    from bndl_like import FuncTask, Job
    c0 = time.thread_time()
    tasks = [FuncTask(ctx, (tag, i), noop, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    job = Job(ctx, tasks, name=f"noop-{tag}")
    if split is not None:
        split["build"] = time.thread_time() - c0
    got = 0
    for _ in ctx.execute(job, order_results=False):
        got += 1
    if got != n:
        raise AssertionError(f"{got} results of {n}")
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4, help="host processes the workers are shared by")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--kill", type=int, default=0, help="host processes to SIGKILL during a job")
    parser.add_argument("--join-timeout", type=float, default=120)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--host", nargs=4, metavar=("SEED", "COUNT", "SECRET", "CLUSTER"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.host:
        seed, count, secret, cluster = args.host
        asyncio.run(host(seed, int(count), secret, cluster))
        return 0

    from bndl_like import ExecutionContext, config

    secret = os.urandom(16).hex()
    cluster = f"scale-{os.getpid()}"
    out: dict = {"workers": args.workers, "processes": args.processes, "tasks": args.tasks,
                 "mesh": config.get("mesh") if "mesh" in config.OPTIONS else "full"}
    ctx = ExecutionContext(seeds=[], listen="tcp://127.0.0.1:0", secret=secret, cluster=cluster,
                           progress=False, forward_output=False)
    procs: list[subprocess.Popen] = []
    try:
        seed = ctx.node.addresses[0]
        shares = [args.workers // args.processes + (i < args.workers % args.processes)
                  for i in range(args.processes)]
        t0 = time.perf_counter()
        for share in shares:
            argv = [sys.executable, __file__, "--host", seed, str(share), secret, cluster]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, cwd=ROOT))
        seen = ctx.await_workers(args.workers, stable_timeout=args.join_timeout)
        out["join_s"] = round(time.perf_counter() - t0, 3)
        out["joined"] = seen
        counts = sorted(ctx.run_each_worker(peer_count, timeout=120).values())
        out["worker_connections"] = {"min": counts[0], "median": statistics.median(counts), "max": counts[-1]}
        out["driver_connections"] = sum(1 for p in ctx.node.peers.values() if p.connected)
        out["full_mesh_connections_per_worker"] = args.workers  # the other workers and the driver

        loop_thread = ctx._portal.thread
        split: dict = {}
        mem0, cpu0, loop0, main0 = rss(), cpu(), thread_cpu(loop_thread), time.thread_time()
        wall = run_job(ctx, args.tasks, "a", split)
        cpu1, mem1, loop1, main1 = cpu(), rss(), thread_cpu(loop_thread), time.thread_time()
        out["tasks_per_s"] = round(args.tasks / wall)
        out["driver_cpu_us_per_task"] = round((cpu1 - cpu0) / args.tasks * 1e6, 1)
        # where it went: building the FuncTasks and the Job (the caller's thread), the rest of
        # the caller's thread (the scheduler's build, reading the results) and the event loop's
        # thread (dispatch, task events, the connections); other threads are in the total only
        out["driver_cpu_us_per_task_split"] = {
            "build_tasks": round(split["build"] / args.tasks * 1e6, 1),
            "caller_rest": round((main1 - main0 - split["build"]) / args.tasks * 1e6, 1),
            "event_loop": round((loop1 - loop0) / args.tasks * 1e6, 1),
        }
        out["driver_rss_growth_per_task_b"] = round((mem1 - mem0) / args.tasks, 1)
        run_job(ctx, args.tasks, "b")
        out["driver_rss_growth_between_jobs_b"] = rss() - mem1

        if args.kill:
            victims = procs[:args.kill]
            expected = ctx.worker_count - sum(shares[:args.kill])
            from bndl_like import FuncTask, Job
            tasks = [FuncTask(ctx, ("c", i), noop, args=(i,)) for i in range(args.tasks)]
            results = ctx.execute(Job(ctx, tasks, name="noop-loss"), order_results=False)
            t1 = time.perf_counter()
            got = 0
            killed_at = noticed_at = None
            for _ in results:
                got += 1
                if killed_at is None and got >= args.tasks // 4:
                    for victim in victims:
                        victim.send_signal(signal.SIGKILL)
                    killed_at = time.perf_counter()
                if killed_at is not None and noticed_at is None and ctx.worker_count <= expected:
                    noticed_at = time.perf_counter()
            if noticed_at is None and ctx.worker_count <= expected:
                noticed_at = time.perf_counter()
            out["loss"] = {"killed_workers": sum(shares[:args.kill]), "all_results": got == args.tasks,
                           "job_s": round(time.perf_counter() - t1, 3),
                           "undisturbed_job_s": round(wall, 3),
                           "noticed_s": None if noticed_at is None else round(noticed_at - killed_at, 3)}
    finally:
        ctx.close()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:36s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
