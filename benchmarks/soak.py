"""Soak: a million no-op tasks through one ExecutionContext; does the driver's memory stay flat?

One local cluster (``--workers``, default 2) and one ``ExecutionContext`` run ``--tasks``
(default 1,000,000) no-op tasks in jobs of ``--per-job`` (default 10,000), one job after the
other, every result consumed and not kept. After every job the driver's resident set size
(RSS, from ``/proc/self/statm``; no tracemalloc, so the run goes at full speed) is sampled,
and so is each worker's (from ``/proc/<pid>/statm``, for information).

Two ways to submit, ``--mode``:

* ``jobs`` (default): ``ctx.execute(Job(ctx, [FuncTask(ctx, i, noop, args=(base + i,)) ...]))``,
  every result checked against its argument as it is yielded;
* ``map``: ``ctx.map(noop, range(base, base + per_job))``, the list checked.

PASS when the driver's RSS stays within ``--limit`` % (default 10) of its value after the
first ``--warmup-jobs`` (default 10) jobs, up to the end, and every result was right; else FAIL
and exit code 1. The table (or ``--json``) goes to stdout, progress to stderr. Every job has a
timeout; the workers are stopped by ``ctx.close()`` and anything of ours still alive after it by
pid. All traffic stays on 127.0.0.1.

Run from the repository root::

    python benchmarks/soak.py                 # 1,000,000 tasks in 100 jobs of 10,000
    python benchmarks/soak.py --quick         # 100,000 tasks in 200 jobs of 500 (a smoke run)
    python benchmarks/soak.py --mode map      # the same through ctx.map
    python benchmarks/soak.py --json          # one JSON object instead of the table
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):  # this checkout's bndl_like, as the workers get it (PYTHONPATH)
    if _path not in sys.path:
        sys.path.insert(0, _path)

from execute import (  # noqa: E402
    Watchdog,
    err_text,
    note_leftovers,
    prepare_environment,
    progress,
    rss,
    stdout_to_stderr,
)
from execute_tasks import noop  # noqa: E402

MIB = 1 << 20


def slope(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index (per step)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values)
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def run_job(ctx, mode: str, index: int, per_job: int, watchdog: Watchdog, timeout: float) -> int:
    """One job of ``per_job`` no-op tasks; the number of wrong or missing results."""
    from bndl_like import FuncTask, Job

    base = index * per_job  # distinct arguments per job: a result from another job shows
    if mode == "map":
        # ctx.map builds its Job inside; the watchdog cancels the newest job of the context
        with watchdog.armed(lambda: ctx.jobs[-1].cancel(), timeout, f"map {index}"):
            out = ctx.map(noop, range(base, base + per_job))
        return sum(1 for i, v in enumerate(out) if v != base + i) + abs(len(out) - per_job)
    job = Job(ctx, [FuncTask(ctx, i, noop, args=(base + i,)) for i in range(per_job)], name=f"soak-{index}")
    wrong = count = 0
    with watchdog.armed(job.cancel, timeout, f"job {index}"):
        for i, value in enumerate(ctx.execute(job)):
            count += 1
            if value != base + i:
                wrong += 1
    return wrong + abs(count - per_job)


def soak(args, report: dict) -> None:
    from bndl_like import ExecutionContext

    jobs = -(-args.tasks // args.per_job)
    watchdog = Watchdog()
    ctx = ExecutionContext.local(workers=args.workers)
    try:
        joined = ctx.await_workers()
        if joined < args.workers:
            raise RuntimeError(f"only {joined} of {args.workers} workers joined")
        report["worker_pids"] = pids = [p.pid for p in ctx._local.processes]
        samples, worker_samples, walls = [], [], []
        wrong = done_tasks = 0
        t0 = last_note = time.perf_counter()
        for index in range(jobs):
            n = min(args.per_job, args.tasks - index * args.per_job)
            start = time.perf_counter()
            wrong += run_job(ctx, args.mode, index, n, watchdog, args.job_timeout)
            walls.append(time.perf_counter() - start)
            done_tasks += n
            samples.append(rss())
            worker_samples.append([rss(pid) for pid in pids])
            now = time.perf_counter()
            if now - last_note >= 5 or index + 1 == jobs:
                last_note = now
                progress(f"job {index + 1}/{jobs}: {done_tasks / (now - t0):,.0f} tasks/s, "
                         f"driver RSS {samples[-1] / MIB:,.1f} MiB, ctx.jobs {len(ctx.jobs)}")
            if samples[-1] > args.rss_limit * MIB:
                report["notes"].append(f"stopped after job {index + 1}: the driver's RSS "
                                       f"{samples[-1] / MIB:,.0f} MiB passed --rss-limit "
                                       f"{args.rss_limit} MiB")
                break
            if watchdog.fired:
                break
        wall = time.perf_counter() - t0
        rates = [min(args.per_job, args.tasks - i * args.per_job) / w for i, w in enumerate(walls)]
        report.update(jobs=len(samples), tasks=done_tasks, wall_s=wall, tasks_per_s=done_tasks / wall,
                      job_tasks_per_s_median=statistics.median(rates), wrong_results=wrong,
                      ctx_jobs_at_end=len(ctx.jobs), rss=samples,
                      worker_rss=[[row[i] for row in worker_samples] for i in range(len(pids))],
                      watchdog=list(watchdog.fired))
    finally:
        watchdog.close()
        ctx.close()


def judge(args, report: dict) -> None:
    """Fill in the figures of the RSS series and the verdict."""
    samples = report.get("rss") or []
    warm = args.warmup_jobs
    report["verdict"], report["reasons"] = "PASS", []
    if len(samples) <= warm:
        report["verdict"] = "FAIL"
        report["reasons"].append(f"only {len(samples)} jobs ran; the figures need more than "
                                 f"--warmup-jobs {warm}")
    else:
        base, after = samples[warm - 1], samples[warm:]
        peak = max(after)
        report.update(rss_after_warmup=base, rss_end=samples[-1], rss_max=max(samples),
                      rss_max_job=samples.index(max(samples)) + 1,
                      growth_end_pct=100 * (samples[-1] - base) / base,
                      growth_max_pct=100 * (peak - base) / base,
                      slope_kib_per_job=slope(samples[warm - 1:]) / 1024)
        if report["growth_max_pct"] > args.limit:
            report["verdict"] = "FAIL"
            report["reasons"].append(f"the driver's RSS grew {report['growth_max_pct']:.1f} % after job "
                                     f"{warm} (limit {args.limit:g} %)")
    if report.get("wrong_results"):
        report["verdict"] = "FAIL"
        report["reasons"].append(f"{report['wrong_results']} wrong or missing results")
    if report.get("error"):
        report["verdict"] = "FAIL"
        report["reasons"].append(f"error: {report['error']}")
    if report.get("watchdog"):
        report["verdict"] = "FAIL"
        report["reasons"].append("cancelled by the watchdog: " + ", ".join(report["watchdog"]))
    expected = -(-args.tasks // args.per_job)
    if report.get("jobs", 0) < expected and not report.get("error"):
        report["verdict"] = "FAIL"
        report["reasons"].append(f"ran {report.get('jobs', 0)} of {expected} jobs")


def print_table(args, report: dict, file=sys.stdout) -> None:
    p = lambda *a: print(*a, file=file)  # noqa: E731
    meta = report["meta"]
    mib = lambda b: "-" if b is None else f"{b / MIB:,.1f} MiB"  # noqa: E731
    p(f"bndl_like soak  {meta['date']}  {meta['machine']}  Python {meta['python']}")
    what = ("Jobs of FuncTasks through ctx.execute" if args.mode == "jobs" else "ctx.map calls")
    p(f"{what}: {args.tasks:,} no-op tasks, {args.per_job:,} per job, {args.workers} workers, "
      "one ExecutionContext")
    rows = [("jobs run", f"{report.get('jobs', 0):,}"),
            ("tasks run", f"{report.get('tasks', 0):,}")]
    if "tasks_per_s" in report:
        rows += [("wall", f"{report['wall_s']:.1f} s"),
                 ("tasks/s, overall (median job)",
                  f"{report['tasks_per_s']:,.0f} ({report['job_tasks_per_s_median']:,.0f})")]
    rows.append(("wrong or missing results", f"{report.get('wrong_results', '-')}"))
    if "rss_after_warmup" in report:
        rows += [(f"driver RSS after job {args.warmup_jobs}", mib(report["rss_after_warmup"])),
                 ("driver RSS at the end", mib(report["rss_end"])),
                 ("driver RSS max", f"{mib(report['rss_max'])} (after job {report['rss_max_job']})"),
                 (f"growth after job {args.warmup_jobs}, at the end / max",
                  f"{report['growth_end_pct']:+.1f} % / {report['growth_max_pct']:+.1f} %"
                  f"   (limit {args.limit:g} %)"),
                 (f"trend after job {args.warmup_jobs}", f"{report['slope_kib_per_job']:+,.1f} KiB/job "
                  f"({report['slope_kib_per_job'] * 1024 / args.per_job:+,.0f} B per task)")]
    if "ctx_jobs_at_end" in report:
        rows.append(("len(ctx.jobs) at the end", f"{report['ctx_jobs_at_end']:,}"))
    for i, series in enumerate(report.get("worker_rss") or []):
        live = [v for v in series if v is not None]
        if live:
            w = min(args.warmup_jobs, len(series)) - 1
            rows.append((f"worker {i} RSS after job {w + 1} / end / max",
                         f"{mib(series[w])} / {mib(series[-1])} / {mib(max(live))}"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        p(f"    {name:<{width}}  {value}")
    reasons = "; ".join(report["reasons"])
    p(f"result: {report['verdict']}" + (f"  ({reasons})" if reasons else ""))
    for note in report["notes"]:
        p(f"note: {note}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=None,
                    help="tasks in all (default 1,000,000; --quick 100,000)")
    ap.add_argument("--per-job", type=int, default=None,
                    help="tasks per job (default 10,000; --quick 500)")
    ap.add_argument("--workers", type=int, default=2,
                    help="worker processes of the local cluster (default 2)")
    ap.add_argument("--mode", choices=("jobs", "map"), default="jobs",
                    help="jobs: ctx.execute(Job(...)) of FuncTasks (default); map: ctx.map")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 100,000 tasks in 200 jobs of 500")
    ap.add_argument("--warmup-jobs", type=int, default=10, help="jobs before the RSS baseline (default 10)")
    ap.add_argument("--limit", type=float, default=10.0, help="allowed RSS growth after the warm-up, %%")
    ap.add_argument("--rss-limit", type=int, default=4096,
                    help="stop early (FAIL) when the driver's RSS passes this many MiB (default 4096)")
    ap.add_argument("--job-timeout", type=float, default=300.0, help="seconds one job may take (default 300)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    if args.tasks is None:
        args.tasks = 100_000 if args.quick else 1_000_000
    if args.per_job is None:
        args.per_job = 500 if args.quick else 10_000
    for name in ("tasks", "per_job", "workers", "warmup_jobs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_environment()
    report: dict = {"notes": [], "meta": {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "args": vars(args),
    }}
    try:
        with stdout_to_stderr():
            soak(args, report)
    except KeyboardInterrupt:
        report["error"] = "interrupted"
    except Exception as exc:
        report["error"] = err_text(exc)
        progress(f"soak failed: {report['error']}")
    finally:
        note_leftovers(report)
    judge(args, report)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_table(args, report)
    return 0 if report["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
