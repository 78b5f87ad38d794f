"""Chaos drill: DAG jobs with lineage, one after another, while workers are killed, frozen and cut off.

A local cluster of ``--workers`` (default 4) processes runs jobs in a loop for ``--duration``
seconds (default 600; ``--quick``: 60). Each job is ``--layers`` (4) layers of ``--width`` (8)
FuncTasks: a task of layer k takes the outputs of 2 or 3 tasks of layer k-1, chosen from
``random.Random(f"{seed}:dag:{job}")``. Values are integers mod 2**31-1 made from the job, the
layer, the position and the inputs; a quarter of the tasks below the last layer return their
value as a numpy array of 1, 2 or 4 MiB (``arange(n) * 1000003 + value``), so outputs move between
workers and every byte of them is checked where they are read. A task that reads a malformed
input returns -1, which propagates. The driver computes every task's value by itself and
checks every result that comes back (every task's; arrays element by element). Tasks sleep
0-100 ms so that faults find them running. ``execute(job, attempts=--attempts)`` (3). On a
driver whose ``ctx.jobs`` is a plain list (every job, with its results) the script keeps its last
20 jobs and runs ``gc.collect()`` after trimming, since a job's tasks refer to each other.

Meanwhile a drill thread (``random.Random(seed)``) injects a fault every 0.5-3 s:

* ``kill``: SIGKILL a worker process (the local cluster starts a new one). At most
  ``--max-kills`` (3) per worker slot in 60 s, below the local cluster's crash-loop limit
  (more than 5 exits of one slot in 60 s);
* ``stop``: SIGSTOP a worker, SIGCONT it after 0.2-8 s (longer than the 6 s heartbeat
  timeout, sometimes: the driver declares it lost, then it comes back);
* ``cut``: close the driver's connection to a worker from the driver's side, on the
  context's event loop: half with a CLOSE frame (``Connection.close(reason)``), half as a
  reset (``abort=True``). The worker dials the driver again.

A job that has not ended after ``--job-timeout`` s (120) is a HANG: the driver's threads'
stacks (faulthandler), the job's scheduler state, the workers' status and their threads' stacks
are printed to stderr and kept in the report, the job is cancelled and the drill goes on (if
the cancel does not end it within 30 s the run stops there). Every worker is continued
(SIGCONT) before the end, whatever happens. After the drill the script waits for every worker
to be back and runs one job without faults.

Reported: jobs run, succeeded, failed (by error type, with the faults during each failed job),
faults by kind, wrong results (must be 0), hangs (must be 0). Exit code 1 on a wrong result, a
hang, the local cluster giving up on a worker, workers not all back or the job without faults not
succeeding after the drill, or an error of the script itself; else 0. The table (or ``--json``)
goes to stdout; progress, the faults and the workers' log to stderr. All traffic stays on
127.0.0.1; every process is ended by pid.

Run from the repository root::

    python benchmarks/chaos.py                  # 10 minutes
    python benchmarks/chaos.py --quick          # 1 minute
    python benchmarks/chaos.py --duration 120 --seed 7
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MOD = 2**31 - 1  # task values are integers in [0, MOD)
STEP = 1_000_003  # an array output is arange(n) * STEP + value
CORRUPT = -1  # what a task returns when one of its inputs is malformed; it propagates
MIB = 1 << 20


# -- the workload: imported by name (module ``chaos``) on the workers ---------------------------


def seed_value(salt: int, j: int) -> int:
    """The value of task j of the first layer."""
    return (salt * 1_000_003 + j * 7919 + 17) % MOD


def combine_value(k: int, j: int, salt: int, values: list[int]) -> int:
    """The value of task j of layer k from its inputs' values, in order."""
    if CORRUPT in values:
        return CORRUPT
    acc = (salt + 31 * k + j) % MOD
    for i, value in enumerate(values):
        acc = (acc * 1_000_003 + (i + 1) * value) % MOD
    return acc


def encode(value: int, nbytes: int):
    """The output of a task: the value itself, or an int64 array of ``nbytes`` that carries it."""
    if not nbytes:
        return value
    arr = np.arange(nbytes // 8, dtype=np.int64)
    arr *= STEP
    arr += value
    return arr


def decode(output, nbytes: int | None = None) -> int:
    """The value an output carries; CORRUPT when it is malformed (or not the expected kind)."""
    if isinstance(output, np.ndarray):
        if output.dtype != np.int64 or output.ndim != 1 or not len(output) or nbytes == 0 \
                or (nbytes is not None and output.nbytes != nbytes):
            return CORRUPT
        value = int(output[0])
        expect = np.arange(len(output), dtype=np.int64)
        expect *= STEP
        expect += value
        return value if np.array_equal(output, expect) else CORRUPT
    if type(output) is int and not nbytes and (0 <= output < MOD or output == CORRUPT):
        return output
    return CORRUPT


def first_layer(salt: int, j: int, nbytes: int, pause: float):
    time.sleep(pause)
    return encode(seed_value(salt, j), nbytes)


def next_layer(k: int, j: int, salt: int, nbytes: int, pause: float, *inputs):
    values = [decode(x) for x in inputs]
    time.sleep(pause)
    return encode(combine_value(k, j, salt, values), nbytes)


def thread_stacks() -> dict:
    """Every thread's stack in this process (asked of the workers when a job hangs)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return {"pid": os.getpid(),
            "threads": {f"{names.get(ident, '?')} ({ident})": "".join(traceback.format_stack(frame))
                        for ident, frame in sys._current_frames().items()}}


# -- everything below runs in the driver only ----------------------------------------------------

import argparse  # noqa: E402
import datetime  # noqa: E402
import faulthandler  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
from collections import Counter, defaultdict, deque  # noqa: E402
from dataclasses import dataclass  # noqa: E402

for _path in (ROOT, HERE):  # this checkout's bndl_like, as the workers get it (PYTHONPATH)
    if _path not in sys.path:
        sys.path.insert(0, _path)

from execute import err_text, note_leftovers, prepare_environment, progress, rss, stdout_to_stderr  # noqa: E402

from bndl_like.deploy.supervisor import describe_exit  # noqa: E402

BIG_SHARE = 0.25  # tasks below the last layer that return an array
BIG_SIZES = (1 * MIB, 2 * MIB, 4 * MIB)
MAX_PAUSE = 0.1  # a task sleeps up to this many seconds
KINDS = ("kill", "stop", "cut")
KEEP_JOBS = 20  # jobs left in a ctx.jobs that is a plain list (a driver without a bounded history)
CANCEL_GRACE = 30.0  # seconds a hung job's cancel may take before the run stops
KILL_WINDOW = 60.0  # the local cluster's crash-loop window, s


@dataclass(frozen=True)
class Spec:
    """Task j of layer k: the positions of its inputs in layer k-1, its output size, its pause."""

    k: int
    j: int
    deps: tuple
    nbytes: int
    pause: float


def plan_job(seed: int, n: int, layers: int, width: int) -> list[list[Spec]]:
    rng = random.Random(f"{seed}:dag:{n}")
    plan = []
    for k in range(layers):
        layer = []
        for j in range(width):
            deps = () if k == 0 else tuple(rng.sample(range(width), min(width, rng.choice((2, 3)))))
            big = k < layers - 1 and rng.random() < BIG_SHARE
            layer.append(Spec(k, j, deps, rng.choice(BIG_SIZES) if big else 0, rng.uniform(0, MAX_PAUSE)))
        plan.append(layer)
    return plan


def job_salt(seed: int, n: int) -> int:
    return (seed * 7_368_787 + n * 2_654_435 + 1) % MOD


def expected_values(plan: list[list[Spec]], salt: int) -> dict:
    values: dict = {}
    for layer in plan:
        for s in layer:
            if s.k == 0:
                values[(0, s.j)] = seed_value(salt, s.j)
            else:
                values[(s.k, s.j)] = combine_value(s.k, s.j, salt, [values[(s.k - 1, d)] for d in s.deps])
    return values


def build_job(ctx, fns, plan: list[list[Spec]], salt: int, name: str):
    """The Job of ``plan``; ``fns`` is this module imported as ``chaos``, so that the workers
    import the task functions by name."""
    from bndl_like import FuncTask, Job

    made: dict = {}
    for layer in plan:
        for s in layer:
            if s.k == 0:
                task = FuncTask(ctx, (0, s.j), fns.first_layer, args=(salt, s.j, s.nbytes, s.pause))
            else:
                inputs = [made[(s.k - 1, d)] for d in s.deps]
                task = FuncTask(ctx, (s.k, s.j), fns.next_layer,
                                args=(s.k, s.j, salt, s.nbytes, s.pause, *inputs))
            made[task.id] = task
    return Job(ctx, list(made.values()), name=name)


def alive(proc) -> bool:
    """Whether a worker process (a Popen) runs, without reaping it: the local cluster reaps its
    workers, and until then their pids cannot be taken by another process. A stopped one runs."""
    if proc.returncode is not None:
        return False
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # reaped meanwhile
        return False


def send(proc, signum: int) -> bool:
    """Signal a worker process that runs (not ``Popen.send_signal``: it reaps an exited one)."""
    if not alive(proc):
        return False
    try:
        os.kill(proc.pid, signum)
    except ProcessLookupError:
        return False
    return True


def _inject_name(kind: str) -> str:
    """The Drill method of a fault kind (``_stop`` is the drill's own stop event)."""
    return {"stop": "_stop_worker"}.get(kind, "_" + kind)


# -- the drill --------------------------------------------------------------------------------------


class Drill:
    """A thread that injects a fault at random intervals and continues what it stopped."""

    def __init__(self, ctx, args, t0: float):
        self.ctx, self.args, self.t0 = ctx, args, t0
        self.rng = random.Random(args.seed)
        self.heartbeat_timeout = ctx._node.heartbeat_timeout
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.events: list[dict] = []
        self.stopped: dict[int, tuple] = {}  # pid -> (Popen, continue at, label)
        self.kills: dict[int, deque] = defaultdict(deque)  # slot -> times of our kills
        self.killed: set[int] = set()  # pids we killed
        self.pid_slot: dict[int, int] = {}  # every worker pid seen -> its slot
        self.slot_proc: dict[int, object] = {}  # slot -> the last worker process (Popen) seen there
        self.exits: list[dict] = []  # worker exits we did not cause
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="chaos-drill", daemon=True)

    # -- bookkeeping

    def now(self) -> float:
        return time.monotonic() - self.t0

    def label(self, pid: int | None) -> str:
        slot = self.pid_slot.get(pid)
        return f"w{slot}/{pid}" if slot is not None else f"pid {pid}"

    def label_of_name(self, name: str) -> str:
        """A worker node's name (``host.pid.n``) as ``w<slot>/<pid>``."""
        try:
            return self.label(int(name.rsplit(".", 2)[-2]))
        except (ValueError, IndexError):
            return name

    def record(self, kind: str, worker: str, detail: str = "", fault: bool = True) -> None:
        with self.lock:
            self.counts[kind] += 1
            self.events.append({"t": round(self.now(), 2), "kind": kind, "worker": worker,
                                "detail": detail, "fault": fault})
        progress(f"{'fault' if fault else 'drill'}: {kind} {worker}" + (f" {detail}" if detail else ""))

    def faults_between(self, start: float, end: float) -> list[str]:
        with self.lock:
            return [f"{e['kind']} {e['worker']}" + (f" {e['detail']}" if e["detail"] else "")
                    + f" @{e['t']:.1f}" for e in self.events if start <= e["t"] <= end]

    def _workers(self) -> list[tuple[int, object]]:
        """(slot, Popen) of the worker processes alive now."""
        out = []
        for slot in self.ctx._local.supervisor.slots:
            proc = slot.process
            if proc is not None and alive(proc):
                out.append((slot.index, proc))
        return out

    def _watch_exits(self) -> None:
        """Note worker processes that went away without our SIGKILL (once the local cluster
        reaped them and put a new process, or none yet, in their slot)."""
        for slot in self.ctx._local.supervisor.slots:
            old, proc = self.slot_proc.get(slot.index), slot.process
            if old is not None and old is not proc:
                if old.pid not in self.killed:
                    how = "exited" if old.returncode is None else describe_exit(old.returncode)
                    self.exits.append({"t": round(self.now(), 2), "worker": self.label(old.pid), "exit": how})
                    self.record("exit (not a kill)", self.label(old.pid), how, fault=False)
                del self.slot_proc[slot.index]
            if proc is not None and slot.index not in self.slot_proc and alive(proc):
                self.slot_proc[slot.index] = proc
                self.pid_slot[proc.pid] = slot.index

    # -- running

    def start(self) -> None:
        self._watch_exits()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.continue_all()

    def continue_all(self) -> None:
        """SIGCONT every worker we stopped and, to be sure, every live worker process."""
        for pid, (proc, _, label) in list(self.stopped.items()):
            send(proc, signal.SIGCONT)
            self.stopped.pop(pid, None)
            progress(f"drill: continued {label}")
        for _, proc in self._workers():
            send(proc, signal.SIGCONT)

    def _main(self) -> None:
        low, high = self.args.interval
        next_at = time.monotonic() + self.rng.uniform(low, high)
        while not self._stop.wait(0.05):
            try:
                self._continue_due()
                self._watch_exits()
                if time.monotonic() >= next_at:
                    kind = self.rng.choices(KINDS, weights=self.args.weights)[0]
                    if not self.paused.is_set():
                        getattr(self, _inject_name(kind))()
                    next_at = time.monotonic() + self.rng.uniform(low, high)
            except Exception as exc:  # the drill must not die quietly
                self.record("drill error", "-", err_text(exc), fault=False)

    def _continue_due(self) -> None:
        now = time.monotonic()
        for pid, (proc, at, label) in list(self.stopped.items()):
            if now >= at:
                send(proc, signal.SIGCONT)
                del self.stopped[pid]
                progress(f"drill: continued {label}")

    # -- the faults

    def _kill(self) -> None:
        now = time.monotonic()
        eligible = []
        for slot, proc in self._workers():
            times = self.kills[slot]
            while times and now - times[0] > KILL_WINDOW:
                times.popleft()
            if len(times) < self.args.max_kills:
                eligible.append((slot, proc))
        if not eligible:
            self.record("kill skipped", "-", f"every live worker was killed {self.args.max_kills} times "
                        f"in {KILL_WINDOW:.0f} s", fault=False)
            return
        slot, proc = self.rng.choice(eligible)
        self.killed.add(proc.pid)
        self.kills[slot].append(now)
        send(proc, signal.SIGKILL)
        self.stopped.pop(proc.pid, None)
        self.record("kill", self.label(proc.pid))

    def _stop_worker(self) -> None:
        eligible = [(slot, proc) for slot, proc in self._workers() if proc.pid not in self.stopped]
        seconds = self.rng.uniform(*self.args.stop_for)
        if not eligible:
            self.record("stop skipped", "-", "every live worker is stopped", fault=False)
            return
        _, proc = self.rng.choice(eligible)
        label = self.label(proc.pid)
        send(proc, signal.SIGSTOP)
        self.stopped[proc.pid] = (proc, time.monotonic() + seconds, label)
        longer = seconds > self.heartbeat_timeout
        if longer:
            self.counts["stop longer than the heartbeat timeout"] += 1
        self.record("stop", label, f"{seconds:.1f}s")

    def _cut(self) -> None:
        peers = self.ctx.workers
        abort = self.rng.random() < 0.5
        if not peers:
            self.record("cut skipped", "-", "no worker is connected", fault=False)
            return
        peer = self.rng.choice(peers)
        label = self.label(peer.pid)
        done = threading.Event()
        outcome: dict = {}

        def cut() -> None:  # on the context's loop: the connection belongs to it
            try:
                conn = peer.connection
                if conn is None or conn.is_closed:
                    outcome["missed"] = True
                else:
                    conn.close("chaos drill: connection cut", abort=abort)
                    outcome["left"] = sum(1 for c in peer.connections if not c.is_closed)
            finally:
                done.set()
        self.ctx._loop.call_soon_threadsafe(cut)
        if not done.wait(5):
            self.record("cut", label, "not run: the driver's loop did not get to it within 5 s")
            return
        if outcome.get("missed"):
            self.record("cut missed", label, "no open connection", fault=False)
            return
        how = "reset" if abort else "CLOSE"
        self.counts[f"cut ({how})"] += 1
        left = outcome.get("left")
        self.record("cut", label, how + (f", {left} connection(s) left" if left else ""))


# -- one job ------------------------------------------------------------------------------------------


def error_key(exc: BaseException) -> str:
    """The error's type name; for a RemoteError also the remote type."""
    name = type(exc).__name__
    remote = getattr(exc, "exc_type", "")
    return f"{name}({remote})" if remote and remote != name else name


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:240]


def consume(ctx, job, args, box: dict) -> None:
    """Run ``job`` to its end in this thread; results and the error go into ``box``."""
    results = box["results"]
    try:
        for result in ctx.execute(job, attempts=args.attempts, concurrency=args.concurrency):
            results.append(result)
    except BaseException as exc:
        box["error"] = exc


def check_results(job, results: list, expected: dict, nbytes: dict) -> list[dict]:
    """Every result that came back against its value; the wrong ones."""
    wrong = []
    for task, result in zip(job.tasks, results, strict=False):
        got = decode(result, nbytes[task.id])
        if got != expected[task.id]:
            shown = (f"array of {result.nbytes:,} B, {result.dtype}" if isinstance(result, np.ndarray)
                     else repr(result)[:80])
            wrong.append({"task": repr(task.id), "expected": expected[task.id],
                          "got": "malformed input or output" if got == CORRUPT else got, "result": shown,
                          "executed_on": list(task.executed_on), "attempts": task.attempts})
    return wrong


def scheduler_snapshot(ctx, job) -> dict:
    """The hung job's scheduler state (called on the context's loop, which owns it)."""
    run = job._run
    if run is None:
        return {"run": "none: the job is not executing (finished, or never started)"}
    s = run.scheduler
    states = {t.id: s.state(t.id) for t in job.tasks}
    return {"finished": run.finished, "counts": s.counts(),
            "states": dict(Counter(states.values())),
            "not_done": {repr(k): v for k, v in states.items() if v != "done"},
            "workers": {w: {"assigned": [repr(k) for k in s.assigned(w)], "outputs": len(s.outputs(w))}
                        for w in s.workers},
            "connected": sorted(p.name for p in ctx.workers),
            "results_queued": run.results.qsize()}


def in_thread(fn, timeout: float):
    """``fn()`` in a daemon thread; its result, or a note that it did not return in time."""
    box: dict = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["value"] = f"failed: {err_text(exc)}"
    thread = threading.Thread(target=call, daemon=True, name="chaos-diagnosis")
    thread.start()
    thread.join(timeout)
    return box["value"] if "value" in box else f"no answer within {timeout:.0f} s"


def diagnose(ctx, fns, job, consumer: threading.Thread, drill: Drill, started: float, args) -> dict:
    """Everything that says why ``job`` hangs: printed to stderr and returned."""
    progress(f"HANG: job {job.name} has run for {args.job_timeout:.0f} s; the driver's threads follow "
             "(faulthandler), then the scheduler, the workers' status and their threads")
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    names = {t.ident: t.name for t in threading.enumerate()}
    frames = sys._current_frames()
    info: dict = {
        "job": job.name, "started_at_s": round(started, 1), "detected_at_s": round(drill.now(), 1),
        "job_state": job.state, "job_counts": job.counts,
        "faults_during_job": drill.faults_between(started - 1, drill.now()),
        "driver_stacks": {names.get(ident, str(ident)): "".join(traceback.format_stack(frame))
                          for ident, frame in frames.items()
                          if names.get(ident) in (consumer.name, "bndl-like-driver")},
    }
    try:
        info["scheduler"] = snap = ctx._portal.call(scheduler_snapshot, ctx, job, timeout=5)
        if "workers" in snap:
            snap["workers"] = {drill.label_of_name(w): v for w, v in snap["workers"].items()}
            snap["connected"] = [drill.label_of_name(w) for w in snap["connected"]]
    except Exception as exc:
        info["scheduler"] = f"the driver's loop did not answer within 5 s: {err_text(exc)}"
    status = {}
    for peer in ctx.workers:
        label = drill.label(peer.pid)
        try:
            status[label] = ctx._portal.run(lambda peer=peer: peer.call("tasks", "status"), timeout=5)
        except Exception as exc:
            status[label] = f"no status: {err_text(exc)}"
    info["worker_status"] = status
    stacks = in_thread(lambda: ctx.run_each_worker(fns.thread_stacks), 20)
    if isinstance(stacks, dict):
        stacks = {drill.label_of_name(name): value for name, value in stacks.items()}
    info["worker_stacks"] = stacks
    print(json.dumps({k: v for k, v in info.items() if k not in ("driver_stacks", "worker_stacks")},
                     indent=1, default=str), file=sys.stderr)
    if isinstance(stacks, dict):
        for label, value in stacks.items():
            for thread, stack in (value.get("threads", {}) if isinstance(value, dict) else {}).items():
                print(f"--- worker {label}, thread {thread}:\n{stack}", file=sys.stderr)
    else:
        print(f"worker stacks: {stacks}", file=sys.stderr)
    sys.stderr.flush()
    return info


def run_job(ctx, fns, n: int, args, drill: Drill, report: dict, counted: bool = True) -> str:
    """Run, check and tally job ``n``: "ok", "failed", "hang" or "stuck" (a hang that its cancel
    did not end)."""
    plan = plan_job(args.seed, n, args.layers, args.width)
    salt = job_salt(args.seed, n)
    expected = expected_values(plan, salt)
    nbytes = {(s.k, s.j): s.nbytes for layer in plan for s in layer}
    job = build_job(ctx, fns, plan, salt, f"chaos-{n}")
    box: dict = {"results": []}
    started, t0 = drill.now(), time.monotonic()
    consumer = threading.Thread(target=consume, args=(ctx, job, args, box), daemon=True,
                                name=f"chaos-job-{n}")
    consumer.start()
    consumer.join(args.job_timeout)
    status = "ok"
    if consumer.is_alive():
        status = "hang"
        drill.paused.set()  # no new faults while the state is collected
        try:
            hang = diagnose(ctx, fns, job, consumer, drill, started, args)
            job.cancel()
            consumer.join(CANCEL_GRACE)
            hang["cancel_ended_it"] = not consumer.is_alive()
            if consumer.is_alive():
                status = "stuck"
                progress(f"HANG: job {job.name} did not end within {CANCEL_GRACE:.0f} s of its cancel")
            report["hangs"].append(hang)
        finally:
            drill.paused.clear()
    seconds = time.monotonic() - t0
    results, error = list(box["results"]), box.get("error")
    wrong = check_results(job, results, expected, nbytes)
    if error is None and status == "ok" and len(results) != len(job.tasks):
        missing = {"task": "-", "expected": f"{len(job.tasks)} results", "got": f"{len(results)} results",
                   "job_state": job.state, "job_counts": job.counts}
        if len(results) < len(job.tasks):  # where the results stopped, and that task's state
            first = job.tasks[len(results)]
            error_of = getattr(first, "_exception", None)
            missing.update(first_missing=repr(first.id), its_state=first.state,
                           its_error=None if error_of is None else f"{type(error_of).__name__}: {error_of}",
                           executed_on=list(first.executed_on), attempts=first.attempts)
        wrong.append(missing)
    if counted:
        report["jobs"] += 1
        report["tasks_checked"] += len(results)
        report["retried"] += job.retried
    faults = drill.faults_between(started - 1, drill.now())
    for w in wrong:
        w.update(job=n, faults_during_job=faults)
        progress(f"WRONG RESULT: job {n} task {w['task']}: expected {w['expected']}, got {w['got']} "
                 + json.dumps({k: v for k, v in w.items() if k not in ("task", "expected", "got", "job")},
                              default=str))
    report["wrong"].extend(wrong)
    if status == "ok" and error is not None:
        status = "failed"
        key = error_key(error)
        report["errors"][key] += 1
        report["failures"].append({"job": n, "t": round(started, 1), "seconds": round(seconds, 2),
                                   "error": key, "message": first_line(error),
                                   "workers_connected_after": ctx.worker_count, "faults_during_job": faults})
        progress(f"job {n} failed after {seconds:.1f} s: {key}: {first_line(error)}")
        if key not in ("WorkersLost",) and report["errors"][key] <= 2:  # show the first two in full
            traceback.print_exception(error, file=sys.stderr)
            remote = getattr(error, "remote_traceback", "")
            if remote:
                print("remote traceback:\n" + remote, file=sys.stderr)
    elif status == "ok" and wrong:
        report["wrong_jobs"] += 1
    elif status == "ok":
        report["succeeded"] += 1
    if isinstance(ctx.jobs, list) and len(ctx.jobs) > KEEP_JOBS:
        # a driver whose ctx.jobs is a list keeps every job and its results: keep the last 20
        del ctx.jobs[:-KEEP_JOBS]
        # a job's tasks refer to each other (dependencies <-> dependents): only the cyclic GC
        # frees them and their results, and its own schedule lets hundreds of MiB wait
        gc.collect()
    return status


def new_tally() -> dict:
    """The counts run_job adds to."""
    return {"jobs": 0, "succeeded": 0, "wrong_jobs": 0, "tasks_checked": 0, "retried": 0, "errors": Counter(),
            "failures": [], "wrong": [], "hangs": []}


# -- the run --------------------------------------------------------------------------------------------


def drill_run(args, report: dict) -> None:
    import chaos as fns  # this file by its module name, so the workers import the task functions

    from bndl_like import ExecutionContext

    ctx = ExecutionContext.local(workers=args.workers)
    drill = None
    try:
        joined = ctx.await_workers()
        if joined < args.workers:
            raise RuntimeError(f"only {joined} of {args.workers} workers joined")
        t0 = time.monotonic()
        drill = Drill(ctx, args, t0)
        report["heartbeat_timeout"] = drill.heartbeat_timeout
        progress("warm-up job, no faults")
        warm = new_tally()
        if run_job(ctx, fns, -1, args, drill, warm, counted=False) != "ok" or warm["wrong"]:
            raise RuntimeError(f"the warm-up job without faults did not succeed: {warm}")
        drill.start()
        progress(f"drill on for {args.duration:.0f} s: {args.workers} workers, seed {args.seed}")
        deadline = t0 + args.duration
        n = last_note = 0
        while time.monotonic() < deadline:
            if ctx._local.failure:
                break
            status = run_job(ctx, fns, n, args, drill, report)
            report["rss"].append(rss())
            n += 1
            if status == "stuck":
                report["notes"].append(f"stopped after job {n - 1}: its cancel did not end it")
                break
            if drill.now() - last_note >= 10:
                last_note = drill.now()
                progress(f"{drill.now():.0f} s: {report['jobs']} jobs, {report['succeeded']} ok, "
                         f"{sum(report['errors'].values())} failed, {len(report['wrong'])} wrong, "
                         f"{len(report['hangs'])} hangs; faults {dict(drill.counts)}")
        report["drill_seconds"] = round(drill.now(), 1)
        report["cluster_failure"] = ctx._local.failure
        drill.stop()
        # after the drill: every worker back, and a job without faults
        start = time.monotonic()
        if not ctx._local.failure:
            back = ctx.await_workers(worker_count=args.workers, stable_timeout=60)
        else:
            back = ctx.worker_count
        after = {"workers": back, "of": args.workers, "seconds": round(time.monotonic() - start, 2)}
        if not ctx._local.failure:
            clean = new_tally()
            start = time.monotonic()
            status = run_job(ctx, fns, n, args, drill, clean, counted=False)
            after["clean_job"] = status if not clean["failures"] else \
                f"failed: {clean['failures'][0]['error']}: {clean['failures'][0]['message']}"
            after["clean_job_seconds"] = round(time.monotonic() - start, 2)
            report["wrong"].extend(clean["wrong"])
            report["hangs"].extend(clean["hangs"])
        report["after"] = after
    finally:
        if drill is not None:
            drill.stop()  # idempotent: SIGCONT every worker before anything else
            report["faults"] = {k: v for k, v in drill.counts.items()}
            report["fault_log"] = drill.events
            report["unexpected_exits"] = drill.exits
        ctx.close()


def summarize(args, report: dict) -> None:
    report["failed"] = sum(report["errors"].values())
    reasons = []
    if report["wrong"]:
        reasons.append(f"{len(report['wrong'])} wrong results")
    if report["hangs"]:
        reasons.append(f"{len(report['hangs'])} hangs")
    after = report.get("after") or {}
    if report.get("cluster_failure"):
        reasons.append(f"the local cluster gave up: {report['cluster_failure']}")
    if report.get("error"):
        reasons.append(f"error: {report['error']}")
    elif after.get("workers", args.workers) < args.workers or after.get("clean_job", "ok") != "ok":
        reasons.append("the cluster did not recover after the drill")
    report["verdict"] = "FAIL" if reasons else "OK"
    report["reasons"] = reasons


def print_table(args, report: dict, file=sys.stdout) -> None:
    p = lambda *a: print(*a, file=file)  # noqa: E731
    meta = report["meta"]
    p(f"bndl_like chaos drill  {meta['date']}  {meta['machine']}  Python {meta['python']}")
    p(f"seed {args.seed}, {args.duration:.0f} s, {args.workers} workers (concurrency {args.concurrency}), "
      f"jobs of {args.layers} layers x {args.width} tasks, attempts {args.attempts}, "
      f"job timeout {args.job_timeout:.0f} s, a fault every {args.interval[0]:g}-{args.interval[1]:g} s")
    faults = report.get("faults") or {}
    kinds = []
    for kind in KINDS:
        text = f"{kind} {faults.get(kind, 0)}"
        if kind == "stop":
            text += f" ({faults.get('stop longer than the heartbeat timeout', 0)} longer than the " \
                    f"{report.get('heartbeat_timeout', 6):g} s heartbeat timeout)"
        if kind == "cut":
            text += f" ({faults.get('cut (reset)', 0)} reset, {faults.get('cut (CLOSE)', 0)} CLOSE)"
        kinds.append(text)
    skipped = {k: v for k, v in faults.items() if "skipped" in k or "missed" in k or "error" in k}
    after = report.get("after") or {}
    rows = [("jobs run", f"{report['jobs']:,}"),
            ("succeeded", f"{report['succeeded']:,}"),
            ("failed with an error", f"{report['failed']:,}"),
            ("ended without one, results wrong or missing", f"{report['wrong_jobs']:,}"),
            ("hangs (must be 0)", f"{len(report['hangs'])}"),
            ("wrong results (must be 0)", f"{len(report['wrong'])}"),
            ("results checked", f"{report['tasks_checked']:,}"),
            ("tasks re-run (job.retried)", f"{report['retried']:,}"),
            ("faults injected", ", ".join(kinds)),
            ("faults not injected", ", ".join(f"{k} {v}" for k, v in skipped.items()) or "none"),
            ("worker exits not from a kill", f"{len(report.get('unexpected_exits') or [])}"),
            ("driver RSS after job " + str(KEEP_JOBS) + " / at the end / max", rss_text(report["rss"]))]
    if after:
        clean = after.get("clean_job", "not run")
        rows.append(("after the drill", f"{after['workers']}/{after['of']} workers back in "
                     f"{after['seconds']} s; a job without faults: {clean}"
                     + (f" in {after['clean_job_seconds']} s" if "clean_job_seconds" in after else "")))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        p(f"    {name:<{width}}  {value}")
    if report["errors"]:
        p("failed jobs by error type")
        for key, count in report["errors"].most_common():
            same = [f for f in report["failures"] if f["error"] == key]
            connected = sorted({f["workers_connected_after"] for f in same})
            p(f"    {key:<28} {count:>5}   connected workers just after: "
              f"{', '.join(map(str, connected))}; e.g. {same[0]['message'][:120]!r}")
        p(f"failed jobs (first {min(20, len(report['failures']))}): job, start, seconds, error; "
          "the faults during the job (@ s since the start)")
        for f in report["failures"][:20]:
            p(f"    {f['job']:>5}  {f['t']:>6.1f} s  {f['seconds']:>5.1f} s  {f['error']}: "
              + ("; ".join(f["faults_during_job"]) or "no fault"))
    for hang in report["hangs"]:
        p(f"HANG: {hang['job']} (started at {hang['started_at_s']} s), scheduler: "
          f"{json.dumps(hang.get('scheduler'), default=str)[:400]}; cancel ended it: "
          f"{hang.get('cancel_ended_it')}; faults: {'; '.join(hang['faults_during_job']) or 'none'}")
    for w in report["wrong"][:20]:
        faults = "; ".join(w.get("faults_during_job") or []) or "none"
        where = (f"the results stopped at task {w['first_missing']} ({w['its_state']}: {w['its_error']}), "
                 f"job state {w['job_state']}" if "first_missing" in w else f"result {w.get('result')}")
        p(f"WRONG: job {w.get('job')} task {w['task']}: expected {w['expected']}, got {w['got']}; {where}; "
          f"executed on {w.get('executed_on')}; faults: {faults}")
    for e in (report.get("unexpected_exits") or [])[:10]:
        p(f"worker exit not from a kill: {e['worker']} at {e['t']} s: {e['exit']}")
    p(f"result: {report['verdict']}" + (f"  ({'; '.join(report['reasons'])})" if report["reasons"] else ""))
    for note in report["notes"]:
        p(f"note: {note}")


def rss_text(samples: list) -> str:
    """The driver's RSS once ctx.jobs is full, at the end and at most, from one sample per job."""
    samples = [s for s in samples if s]
    if not samples:
        return "-"
    first = samples[min(KEEP_JOBS, len(samples)) - 1]
    return f"{first / MIB:,.0f} / {samples[-1] / MIB:,.0f} / {max(samples) / MIB:,.0f} MiB"


def pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    low_f, high_f = float(low), float(high or low)
    if not 0 < low_f <= high_f:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 0 < LOW <= HIGH, not {text!r}")
    return low_f, high_f


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=None, help="seconds of drill (default 600; --quick 60)")
    ap.add_argument("--quick", action="store_true", help="a 60 s drill")
    ap.add_argument("--seed", type=int, default=1,
                    help="seed of the drill and of the jobs' graphs (default 1)")
    ap.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    ap.add_argument("--concurrency", type=int, default=2, help="tasks at once per worker (default 2)")
    ap.add_argument("--attempts", type=int, default=3, help="execute(attempts=...) (default 3)")
    ap.add_argument("--layers", type=int, default=4, help="layers per job (default 4)")
    ap.add_argument("--width", type=int, default=8, help="tasks per layer (default 8)")
    ap.add_argument("--job-timeout", type=float, default=120.0,
                    help="seconds after which a running job is a hang (default 120)")
    ap.add_argument("--interval", type=pair, default=(0.5, 3.0),
                    help="seconds between faults, LOW,HIGH (0.5,3)")
    ap.add_argument("--stop-for", type=pair, default=(0.2, 8.0),
                    help="seconds a stopped worker stays stopped, LOW,HIGH (0.2,8)")
    ap.add_argument("--weights", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 1.0, 1.0],
                    help="relative weights of kill,stop,cut (default 1,1,1; 0 turns a kind off)")
    ap.add_argument("--max-kills", type=int, default=3,
                    help=f"kills per worker slot in {KILL_WINDOW:.0f} s at most (default 3; the local "
                         "cluster gives up on a slot after more than 5 exits)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    if args.duration is None:
        args.duration = 60.0 if args.quick else 600.0
    if len(args.weights) != len(KINDS) or any(w < 0 for w in args.weights) or not any(args.weights):
        ap.error("--weights takes 3 non-negative numbers, not all 0: kill,stop,cut")
    for name in ("workers", "concurrency", "attempts", "layers", "width", "max_kills"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.width < 3:
        ap.error("--width must be at least 3 (a task takes 2 or 3 of the layer before)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_environment()
    report = new_tally()
    report.update(notes=[], rss=[], meta={
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "args": vars(args)})
    # the last resort: if the run itself stops moving, show where (each job and cancel is bounded)
    faulthandler.dump_traceback_later(args.duration + 3 * args.job_timeout + 300, exit=False)
    try:
        with stdout_to_stderr():
            drill_run(args, report)
    except KeyboardInterrupt:
        report["error"] = "interrupted"
    except Exception as exc:
        report["error"] = err_text(exc)
        progress(f"chaos failed: {report['error']}")
        traceback.print_exc(file=sys.stderr)
    finally:
        faulthandler.cancel_dump_traceback_later()
        note_leftovers(report)
    summarize(args, report)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_table(args, report)
    return 0 if report["verdict"] == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
