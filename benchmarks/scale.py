"""The Scheduler at scale: the real core driven by a simulated cluster, up to 10^7 tasks.

A discrete-event simulation plays the shell and the workers around
:class:`bndl_like.execute.core.Scheduler`: a heap of timed events (integer microseconds, seeded
durations) in which every ``RunTask`` reaches its worker after a one-way latency, starts when the
worker has a free run slot (``TaskStarted``), and ends after a seeded duration
(``TaskSucceeded`` with ``nbytes``; a seeded fraction fails once and is retried). Workers are
lost mid-run (what ran there dies, their outputs go) and join again under the same name, others
are held and resumed, a seeded fraction of dependency fetches fail (``TaskDependenciesFailed``
naming the holder), and every ``TakeBack`` is answered (ok when the task had not started). The
driver handles what reached it at the same instant in one ``Scheduler.handle`` call (``--tick``
widens that instant, as a busy driver reading its inbox now and then would).

The simulation checks the scheduler as it goes: never more than ``concurrency + prefetch`` tasks
handed to a worker nor more than ``concurrency`` running on one, never a task handed out twice
or running twice at once, never a task on a worker it forbids, never a task sent to a worker
that is gone or held, and the job must end (DONE unless tasks were made to fail for good).

Only the scheduler is timed: CPU time (``time.process_time``) inside ``start`` and ``handle``,
less the clock's own cost (calibrated at start-up; both are in the JSON). Memory: the resident
set's growth over the Scheduler's construction and its peak over build and run (the simulator's
per-task lists are made before the baseline), or with ``--trace-memory`` tracemalloc's figures
(slower: the times of such a run are not comparable).

Shapes (``--tasks N``):

* ``independent``: N tasks, no dependencies;
* ``shuffle``: N//2 producers x (N - N//2) consumers, every consumer depends on every producer
  (all-to-all): N tasks and about N^2/4 edges, so ``--tasks 6324`` is a 3,162 x 3,162 shuffle
  of 9,998,244 edges (about 10^7);
* ``chain``: task i depends on task i-1;
* ``tree``: a binary reduction, N tasks, every inner task depends on two others;
* ``dag``: a random DAG (up to 3 dependencies among the previous 1,000 tasks), a fifth of the
  tasks preferring a worker, one in fifty forbidding one, some with a priority.

Run from the repository root::

    python benchmarks/scale.py                          # 100,000 independent tasks on 100 workers
    python benchmarks/scale.py --shape shuffle --tasks 6324 --workers 100   # a 10^7-edge shuffle
    python benchmarks/scale.py --sweep                  # the sweep and the fitted exponents
    python benchmarks/scale.py --sweep --big            # ... with 10^7 tasks too (minutes)
    python benchmarks/scale.py --quick                  # smoke runs (seconds)
    python benchmarks/scale.py --json                   # one JSON object instead of the table

The sweep runs every point in a child process of its own, so that each one's peak memory and
garbage collector start clean.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import math
import os
import platform
import random
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bndl_like.execute.core import (  # noqa: E402
    CancelTask,
    EndJob,
    JobOutcome,
    MarkOutputLost,
    MarkTaskDone,
    RetryTask,
    RunTask,
    Scheduler,
    TakeBack,
    TaskDependenciesFailed,
    TaskFailed,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    TaskTakenBack,
    WorkerAdded,
    WorkerHeld,
    WorkerLost,
    WorkerResumed,
)

SHAPES = ("independent", "shuffle", "chain", "tree", "dag")


# -- the jobs -------------------------------------------------------------------------------------------

@dataclass
class Job:
    """The specs of a job (task ids are 0..n-1, in spec order) and what the simulation needs of it."""
    shape: str
    specs: list[TaskSpec]
    edges: int
    forbidden: dict[int, frozenset[str]] = field(default_factory=dict)  # task -> workers it forbids


def worker_names(count: int) -> list[str]:
    return [f"w{i:04d}" for i in range(count)]


def make_job(shape: str, n: int, names: Sequence[str], seed: int = 0) -> Job:
    """The job of ``shape`` with ``n`` tasks (see the module docstring)."""
    if shape == "independent":
        return Job(shape, list(map(TaskSpec, range(n))), 0)
    if shape == "shuffle":
        producers = n // 2
        below = tuple(range(producers))  # one tuple shared by every consumer, as a shell would
        specs = list(map(TaskSpec, below))
        specs += [TaskSpec(i, below) for i in range(producers, n)]
        return Job(shape, specs, producers * (n - producers))
    if shape == "chain":
        return Job(shape, [TaskSpec(0)] + [TaskSpec(i, (i - 1,)) for i in range(1, n)], max(0, n - 1))
    if shape == "tree":
        # heap numbering reversed: node k (0 = the root) has children 2k+1 and 2k+2, and task
        # n-1-k is node k, so dependencies come first in spec order
        specs = []
        for i in range(n):
            k = n - 1 - i
            specs.append(TaskSpec(i, tuple(n - 1 - c for c in (2 * k + 1, 2 * k + 2) if c < n)))
        return Job(shape, specs, max(0, n - 1))
    if shape == "dag":
        return _random_dag(n, names, seed)
    raise ValueError(f"unknown shape {shape!r} (one of {', '.join(SHAPES)})")


def _random_dag(n: int, names: Sequence[str], seed: int) -> Job:
    rng = random.Random(seed ^ 0x5EED)
    specs, forbidden, edges = [], {}, 0
    for i in range(n):
        low = max(0, i - 1000)
        k = min(i - low, rng.randrange(4))
        deps = tuple(rng.sample(range(low, i), k)) if k else ()
        edges += len(deps)
        locality = None
        r = rng.random()
        if r < 0.2:
            locality = {rng.choice(names): rng.choice((1, 2))}
        elif r < 0.22 and len(names) > 1:
            banned = rng.choice(names)
            locality = {banned: -1}
            forbidden[i] = frozenset((banned,))
        priority = rng.randrange(3) if rng.random() < 0.1 else 0
        specs.append(TaskSpec(i, deps, priority, locality))
    return Job("dag", specs, edges, forbidden)


# -- the simulated cluster ----------------------------------------------------------------------------

# what an entry of the event heap is: (time, sequence, kind, payload)
_TO_DRIVER = 0   # an event reaches the driver: payload is the event
_RUN = 1         # a RunTask reaches its worker: (incarnation, task, attempt, holders of the dependencies)
_TAKE_BACK = 2   # a TakeBack reaches its worker: (incarnation, task, attempt)
_CANCEL = 3      # a CancelTask reaches its worker: (incarnation, task)
_FINISH = 4      # a run ends on its worker: (incarnation, task, attempt, event to send)
_TROUBLE = 5     # a worker is lost, joins again, is held: (what, name)

_OK, _FAIL, _DEPS = 0, 1, 2


class Incarnation:
    """One life of a worker process: a name may come back as a new incarnation after a loss."""

    __slots__ = ("number", "name", "alive", "queue", "running")

    def __init__(self, number: int, name: str) -> None:
        self.number, self.name, self.alive = number, name, True
        self.queue: dict[int, int] = {}    # handed to it, not started: task -> attempt (in arrival order)
        self.running: dict[int, int] = {}  # task -> attempt


@dataclass
class Trouble:
    """What goes wrong during a run. Rates are fractions of runs; losses and holds strike at
    drawn times, between 5 % and 80 % of the time the job's runs would take on every slot."""
    fail_rate: float = 0.01      # runs that fail once (TaskFailed, retried)
    depfail_rate: float = 0.01   # runs of tasks with dependencies whose fetch of one fails
    losses: int = 2              # workers lost mid-run (each joins again later)
    holds: int = 2               # workers held for a while, then resumed
    doomed: int = 0              # tasks that fail on every attempt: the job must fail
    away_for: int = 5            # a lost worker joins again, a held one is resumed, after so many
                                 # mean task durations


@dataclass
class SimResult:
    outcome: str
    decisions: int
    events: int
    handle_calls: int
    sched_cpu_s: float        # CPU time in start/handle, the clock's own cost taken off
    sched_cpu_raw_s: float    # as measured
    sim_time_us: int          # simulated time at the end
    runs: int                 # RunTask decisions
    counts: dict[str, int]
    max_batch: int


class ClusterSim:
    """Plays the shell and the workers around a real Scheduler; see the module docstring.

    ``check_every``: call ``validate_state()`` after every so many ``handle`` calls (0: never).
    """

    def __init__(self, job: Job, names: Sequence[str], *, concurrency: int = 2, prefetch: int = 1,
                 trouble: Trouble | None = None, seed: int = 0, latency_us: int = 20,
                 mean_duration_us: int = 1000, tick_us: int = 0, check_every: int = 0,
                 clock: Callable[[], float] = time.process_time, clock_cost: float = 0.0) -> None:
        self.job, self.names = job, list(names)
        self.trouble = trouble or Trouble()
        self.concurrency, self.cap = concurrency, concurrency + prefetch
        self.rng = random.Random(seed)
        self.latency, self.mean, self.tick = latency_us, mean_duration_us, max(1, tick_us)
        self.check_every = check_every
        self.clock, self.clock_cost = clock, clock_cost
        n = len(job.specs)
        self.n = n
        self.deps = [spec.dependencies for spec in job.specs]
        # per-task lists, made before the scheduler so that its memory is measured apart
        needed = bytearray(n)
        for deps in self.deps:
            for d in deps:
                needed[d] = 1
        self.needed = needed
        self.produced_by = [-1] * n if any(needed) else []  # incarnation holding the output (needed ones)
        self.location: list[str | None] = [None] * n if self.produced_by else []  # as the driver knows it
        self.failed_once: set[int] = set()
        self.doomed = frozenset(self.rng.sample(range(n), min(n, self.trouble.doomed)))
        self.worker_deaths = self.trouble.losses + 2  # a task killed with every lost worker still finishes
        # the driver's view
        self.on: dict[int, tuple[str, int]] = {}        # handed out: task -> (worker, attempt)
        self.on_worker: dict[str, set[int]] = {w: set() for w in self.names}
        self.known: set[str] = set(self.names)          # workers the scheduler knows
        self.held: set[str] = set()
        # the workers
        self.incarnations: list[Incarnation] = []
        self.current: dict[str, Incarnation] = {}
        for name in self.names:
            self._incarnate(name)
        self.running_anywhere: set[int] = set()
        self._plans: dict[int, tuple[str, ...]] = {}  # handed out: where its dependencies' outputs are
        # the clock and the heap
        self.now = 0
        self.heap: list[tuple[int, int, int, Any]] = []
        self.seq = 0
        self.outcome: str | None = None
        self.end: EndJob | None = None
        self.decisions = self.events = self.calls = self.runs = self.max_batch = 0
        self.cpu_raw = 0.0
        self.sched: Scheduler | None = None
        self._plan_trouble()

    # -- building and running ----------------------------------------------------------------------------

    def build(self) -> Scheduler:
        """Construct the Scheduler (timed by the caller)."""
        self.sched = Scheduler(self.job.specs, self.names, concurrency=self.concurrency,
                               prefetch=self.cap - self.concurrency, attempts=2,
                               worker_deaths=self.worker_deaths)
        return self.sched

    def run(self) -> SimResult:
        """Play the job to its end."""
        sched = self.sched or self.build()
        clock = self.clock
        began = clock()
        out = sched.start()
        self.cpu_raw += clock() - began
        self.calls += 1
        self._apply(out)
        heap, pop, handle = self.heap, heapq.heappop, sched.handle
        check_every = self.check_every
        while heap and self.outcome is None:
            now = self.now = heap[0][0]
            batch: list[Any] = []
            while heap and heap[0][0] == now:
                _, _, kind, payload = pop(heap)
                if kind == _TO_DRIVER:
                    batch.append(payload)
                elif kind == _FINISH:
                    self._finish(*payload)
                elif kind == _RUN:
                    self._arrive_run(*payload)
                elif kind == _TAKE_BACK:
                    self._arrive_take_back(*payload)
                elif kind == _CANCEL:
                    self._arrive_cancel(*payload)
                else:
                    self._trouble(*payload)
            if batch:
                began = clock()
                out = handle(*batch)
                self.cpu_raw += clock() - began
                self.calls += 1
                if len(batch) > self.max_batch:
                    self.max_batch = len(batch)
                self._apply(out, batch)
                self.events += len(batch)
                if check_every and self.calls % check_every == 0:
                    sched.validate_state()
        if self.outcome is None:
            raise AssertionError(f"the job did not end: nothing left to happen at t={self.now} us, "
                                 f"{sched.counts()}")
        expected = "failed" if self.doomed else "done"
        assert self.outcome == expected, f"the job ended {self.outcome}, expected {expected}: {self.end}"
        assert not self.on, "tasks left handed out after the end of the job"
        cpu = max(0.0, self.cpu_raw - self.calls * self.clock_cost)
        return SimResult(self.outcome, self.decisions, self.events, self.calls, cpu, self.cpu_raw, self.now,
                         self.runs, sched.counts(), self.max_batch)

    # -- the driver: decisions out, events in ------------------------------------------------------------

    def _push(self, at: int, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, payload))

    def _send_to_driver(self, event: Any) -> None:
        at = self.now + self.latency
        if self.tick > 1:  # the driver reads its inbox every tick
            at = -(-at // self.tick) * self.tick
        self._push(at, _TO_DRIVER, event)

    def _apply(self, decisions: list[Any], batch: Sequence[Any] = ()) -> None:
        """Carry out the decisions, each after the driver's own bookkeeping of the events of
        ``batch`` up to the one that caused it (the scheduler numbers the events it is given
        without a stimulus id: the n-th event it handles is stimulus n)."""
        self.decisions += len(decisions)
        at = self.now + self.latency
        seen, done = self.events, 0  # events handled before the batch; those of it booked
        for d in decisions:
            while done < len(batch) and seen + done < d.stimulus_id:
                self._book(batch[done])
                done += 1
            kind = type(d)
            if kind is RunTask:
                self._run_task(d, at)
            elif kind is MarkTaskDone:
                if self.location:
                    self.location[d.task_id] = d.worker
            elif kind is TakeBack:
                t, w = d.task_id, d.worker
                assert self.on[t][0] == w, f"TakeBack of {t} from {w}, where it is not: {self.on.get(t)}"
                self._push(at, _TAKE_BACK, (self.current[w], t, self.on[t][1]))
            elif kind is MarkOutputLost:
                if self.location:
                    self.location[d.task_id] = None
            elif kind is RetryTask:
                pass
            elif kind is CancelTask:
                t, w = d.task_id, d.worker
                assert self.on.get(t, (None,))[0] == w, f"CancelTask of {t} on {w}: {self.on.get(t)}"
                self._off(t)
                self._push(at, _CANCEL, (self.current[w], t))
            elif kind is EndJob:
                self.outcome, self.end = d.outcome.value, d
                if d.outcome is JobOutcome.FAILED:
                    assert self.doomed, f"the job failed with no task doomed to: {d}"
            else:
                raise AssertionError(f"unexpected decision {d!r}")
        for event in batch[done:]:
            self._book(event)

    def _run_task(self, d: RunTask, at: int) -> None:
        t, w = d.task_id, d.worker
        assert t not in self.on, f"{t} handed to {w} while on {self.on[t]}"
        assert w in self.known and w not in self.held, f"{t} sent to {w}, which is gone or held"
        banned = self.job.forbidden.get(t)
        assert banned is None or w not in banned, f"{t} sent to {w}, which it forbids"
        tasks = self.on_worker[w]
        tasks.add(t)
        assert len(tasks) <= self.cap, f"{w} was handed {len(tasks)} tasks, more than {self.cap}"
        self.on[t] = (w, d.attempt)
        self.runs += 1
        deps = self.deps[t]
        holders = None
        if deps:
            location = self.location
            holders = tuple(map(location.__getitem__, deps))
            assert None not in holders, f"{t} sent before its dependencies' outputs were available"
        self._push(at, _RUN, (self.current[w], t, d.attempt, holders))

    def _off(self, t: int) -> None:
        w, _ = self.on.pop(t)
        self.on_worker[w].discard(t)

    def _book(self, event: Any) -> None:
        """The driver's own bookkeeping of an event it handed to the scheduler."""
        kind = type(event)
        if kind is TaskStarted:
            return
        if kind is WorkerLost:
            self.known.discard(event.worker)
            self.held.discard(event.worker)
            for t in self.on_worker[event.worker]:
                del self.on[t]
            self.on_worker[event.worker] = set()
        elif kind is WorkerAdded:
            self.known.add(event.worker)
        elif kind is WorkerHeld:
            if event.worker in self.known:
                self.held.add(event.worker)
        elif kind is WorkerResumed:
            self.held.discard(event.worker)
        elif kind is not TaskTakenBack or event.ok:  # the run is over (the task may go elsewhere)
            if self.on.get(event.task_id) == (event.worker, event.attempt):
                self._off(event.task_id)

    # -- the workers ------------------------------------------------------------------------------------

    def _incarnate(self, name: str) -> Incarnation:
        inc = Incarnation(len(self.incarnations), name)
        self.incarnations.append(inc)
        self.current[name] = inc
        return inc

    def _arrive_run(self, inc: Incarnation, t: int, attempt: int, holders: tuple[str, ...] | None) -> None:
        if inc.alive:
            inc.queue[t] = attempt
            if holders is not None:
                self._plans[t] = holders
            self._pump(inc)

    def _pump(self, inc: Incarnation) -> None:
        """Start queued tasks while a run slot is free."""
        queue, running = inc.queue, inc.running
        while queue and len(running) < self.concurrency:
            t = next(iter(queue))
            attempt = queue.pop(t)
            assert t not in self.running_anywhere, f"{t} starts on {inc.name} while running elsewhere"
            self.running_anywhere.add(t)
            running[t] = attempt
            assert len(running) <= self.concurrency
            self._send_to_driver(TaskStarted(t, inc.name, attempt))
            self._start(inc, t, attempt)

    def _start(self, inc: Incarnation, t: int, attempt: int) -> None:
        rng, trouble, name = self.rng, self.trouble, inc.name
        deps = self.deps[t]
        if deps:
            holders = self._plans.pop(t)
            failures: dict[str, list[int]] = {}
            produced_by, incarnations = self.produced_by, self.incarnations
            for d, h in zip(deps, holders, strict=True):
                p = produced_by[d]
                if p < 0 or not incarnations[p].alive or incarnations[p].name != h:
                    failures.setdefault(h, []).append(d)
            if not failures and rng.random() < trouble.depfail_rate:
                d = rng.choice(deps)
                failures = {holders[deps.index(d)]: [d]}
            if failures:
                self._push(self.now + self.latency, _FINISH,
                           (inc, t, attempt, TaskDependenciesFailed(t, name, failures, attempt)))
                return
        duration = self.mean // 2 + int(rng.random() * self.mean)
        if t in self.doomed or (trouble.fail_rate and t not in self.failed_once
                                and rng.random() < trouble.fail_rate):
            self.failed_once.add(t)
            event: Any = TaskFailed(t, name, RuntimeError(f"task {t} failed"), True, attempt)
        else:
            event = TaskSucceeded(t, name, int(rng.random() * 1_000_000), attempt)
        self._push(self.now + duration, _FINISH, (inc, t, attempt, event))

    def _finish(self, inc: Incarnation, t: int, attempt: int, event: Any) -> None:
        if not inc.alive or inc.running.get(t) != attempt:  # killed with its worker, or cancelled
            return
        del inc.running[t]
        self.running_anywhere.discard(t)
        if type(event) is TaskSucceeded and self.needed and self.needed[t]:
            self.produced_by[t] = inc.number
        self._send_to_driver(event)
        self._pump(inc)

    def _arrive_take_back(self, inc: Incarnation, t: int, attempt: int) -> None:
        if not inc.alive:
            return
        ok = inc.queue.get(t) == attempt
        if ok:
            del inc.queue[t]
            self._plans.pop(t, None)
        self._send_to_driver(TaskTakenBack(t, inc.name, ok, attempt))

    def _arrive_cancel(self, inc: Incarnation, t: int) -> None:
        inc.queue.pop(t, None)
        if inc.running.pop(t, None) is not None:
            self.running_anywhere.discard(t)

    # -- trouble ---------------------------------------------------------------------------------------

    def _plan_trouble(self) -> None:
        """Draw when losses and holds strike (as numbers of runs, turned into times)."""
        n, rng, trouble = self.n, self.rng, self.trouble
        plan = [(int(n * rng.uniform(0.05, 0.8)), "lose") for _ in range(trouble.losses)]
        plan += [(int(n * rng.uniform(0.05, 0.8)), "hold") for _ in range(trouble.holds)]
        self._trouble_plan = sorted(plan, reverse=True)  # the next one last
        self._schedule_next_trouble()

    def _schedule_next_trouble(self) -> None:
        if self._trouble_plan:
            at_runs, what = self._trouble_plan.pop()
            # on the clock, at the time so many runs would take at a steady pace
            slots = max(1, len(self.names) * self.concurrency)
            self._push(max(1, at_runs * self.mean // slots), _TROUBLE, (what, None))

    def _trouble(self, what: str, name: str | None) -> None:
        rng = self.rng
        if what == "join":
            self._incarnate(name)  # type: ignore[arg-type]
            self._send_to_driver(WorkerAdded(name))  # type: ignore[arg-type]
            return
        if what == "resume":
            self._send_to_driver(WorkerResumed(name))  # type: ignore[arg-type]
            return
        alive = sorted(w for w, inc in self.current.items() if inc.alive and w in self.known)
        if what == "lose" and len(alive) > 1:
            inc = self.current[rng.choice(alive)]
            inc.alive = False
            for t in inc.running:
                self.running_anywhere.discard(t)
            for t in inc.queue:
                self._plans.pop(t, None)
            inc.running.clear()
            inc.queue.clear()
            self._send_to_driver(WorkerLost(inc.name))  # after whatever it sent before it died
            self._push(self.now + self.trouble.away_for * self.mean, _TROUBLE, ("join", inc.name))
        elif what == "hold" and alive:
            name = rng.choice(alive)
            self._send_to_driver(WorkerHeld(name))
            self._push(self.now + self.trouble.away_for * self.mean, _TROUBLE, ("resume", name))
        self._schedule_next_trouble()


# -- measuring ------------------------------------------------------------------------------------------

def clock_cost(clock: Callable[[], float] = time.process_time, rounds: int = 20_000) -> float:
    """What a timed interval of nothing measures with ``clock``: taken off every handle call."""
    total = 0.0
    for _ in range(rounds):
        a = clock()
        total += clock() - a
    return total / rounds


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(shape: str, n: int, n_workers: int, *, seed: int = 0, concurrency: int = 2, prefetch: int = 1,
            trouble: Trouble | None = None, tick_us: int = 0, trace_memory: bool = False,
            build_only: bool = False, collect: bool = True) -> dict[str, Any]:
    """One run: build and play the job (or only build it), with the figures of the module docstring.
    ``collect=False``: the cyclic garbage collector off over build and run (the scheduler's own
    cost, apart from the collections that the simulation's and the job's objects bring about)."""
    names = worker_names(n_workers)
    wall0 = time.perf_counter()
    job = make_job(shape, n, names, seed)
    cost = clock_cost()
    sim = ClusterSim(job, names, concurrency=concurrency, prefetch=prefetch, trouble=trouble, seed=seed,
                     tick_us=tick_us, clock_cost=cost)
    gc.collect()
    if trace_memory:
        tracemalloc.start()
    base = rss_bytes()
    traced0 = tracemalloc.get_traced_memory()[0] if trace_memory else 0
    if not collect:
        gc.disable()
    b_cpu, b_wall = time.process_time(), time.perf_counter()
    sim.build()
    build_cpu, build_wall = time.process_time() - b_cpu, time.perf_counter() - b_wall
    build_rss = rss_bytes() - base
    traced_build = tracemalloc.get_traced_memory()[0] - traced0 if trace_memory else None
    r_wall = time.perf_counter()
    result = SimResult("built", 0, 0, 0, 0.0, 0.0, 0, 0, sim.sched.counts(), 0) if build_only else sim.run()
    run_wall = time.perf_counter() - r_wall
    gc.enable()
    peak = peak_rss_bytes() - base
    traced_peak = tracemalloc.get_traced_memory()[1] - traced0 if trace_memory else None
    if trace_memory:
        tracemalloc.stop()
    build_bytes = traced_build if traced_build is not None else build_rss
    cpu = result.sched_cpu_s
    edges = job.edges
    return {
        "shape": shape, "tasks": n, "edges": edges, "workers": n_workers, "concurrency": concurrency,
        "prefetch": prefetch, "seed": seed, "tick_us": tick_us, "trace_memory": trace_memory, "gc": collect,
        "outcome": result.outcome, "build_only": build_only,
        "build_cpu_s": build_cpu, "build_wall_s": build_wall,
        "decisions": result.decisions, "events": result.events, "handle_calls": result.handle_calls,
        "max_batch": result.max_batch, "runs": result.runs,
        "sched_cpu_s": cpu, "sched_cpu_raw_s": result.sched_cpu_raw_s, "clock_cost_s": cost,
        "decisions_per_s": result.decisions / cpu if cpu else None,
        "events_per_s": result.events / cpu if cpu else None,
        "cpu_per_decision_us": 1e6 * cpu / result.decisions if result.decisions else None,
        "edges_per_s": edges / (build_cpu + cpu) if edges and build_cpu + cpu else None,
        "build_edges_per_s": edges / build_cpu if edges and build_cpu else None,
        "build_bytes": build_bytes, "build_bytes_per_task": build_bytes / n if n else None,
        "build_bytes_per_edge": build_bytes / edges if edges else None,
        "peak_bytes": traced_peak if traced_peak is not None else peak,
        "peak_bytes_per_task": (traced_peak if traced_peak is not None else peak) / n if n else None,
        "run_wall_s": run_wall, "wall_s": time.perf_counter() - wall0, "sim_time_us": result.sim_time_us,
        "counts": result.counts,
    }


def direct(n: int, n_workers: int, per_call: int, *, concurrency: int = 2, prefetch: int = 16,
           collect: bool = False) -> dict[str, Any]:
    """The core alone, no simulation: every RunTask answered at once by its TaskStarted and
    TaskSucceeded, ``per_call`` tasks' events per ``handle`` call; the time in ``start``/``handle``
    only (``perf_counter``, once per call), the events made outside it."""
    names = worker_names(n_workers)
    sched = Scheduler(list(map(TaskSpec, range(n))), names, concurrency=concurrency, prefetch=prefetch)
    if not collect:
        gc.disable()
    try:
        clock = time.perf_counter
        began = clock()
        pending = [d for d in sched.start() if type(d) is RunTask]
        spent = clock() - began
        decisions, calls = len(pending), 1
        while pending:
            batch, pending = pending[:per_call], pending[per_call:]
            events: list[Any] = []
            for d in batch:
                events.append(TaskStarted(d.task_id, d.worker, d.attempt))
                events.append(TaskSucceeded(d.task_id, d.worker, 0, d.attempt))
            began = clock()
            out = sched.handle(*events)
            spent += clock() - began
            calls += 1
            decisions += len(out)
            pending += [d for d in out if type(d) is RunTask]
    finally:
        gc.enable()
    assert sched.over and sched.counts()["done"] == n
    return {"mode": "direct", "tasks": n, "workers": n_workers, "tasks_per_call": per_call, "gc": collect,
            "decisions": decisions, "handle_calls": calls, "cpu_s": spent,
            "decisions_per_s": decisions / spent, "us_per_task": 1e6 * spent / n}


# -- the sweep ------------------------------------------------------------------------------------------

def sweep_points(quick: bool, big: bool) -> list[tuple[str, int, int]]:
    sizes = [1_000, 10_000] if quick else [10_000, 100_000, 1_000_000] + ([10_000_000] if big else [])
    widths = [10, 100] if quick else [10, 100, 1_000]
    points = [("independent", n, w) for n in sizes for w in widths]
    if quick:
        points += [("shuffle", 632, 10), ("chain", 2_000, 10), ("tree", 10_000, 10), ("dag", 10_000, 10)]
    else:
        points += [("shuffle", 6_324, 100), ("chain", 100_000, 100), ("tree", 1_000_000, 100),
                   ("dag", 1_000_000, 100)]
    return points


def fit_exponents(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Least squares of log(cost per decision) = a + b log N + c log W over the independent runs."""
    pts = [(math.log(r["tasks"]), math.log(r["workers"]), math.log(r["cpu_per_decision_us"]))
           for r in rows if r["shape"] == "independent" and r.get("cpu_per_decision_us")]
    if len({p[0] for p in pts}) < 2 or len({p[1] for p in pts}) < 2:
        return None
    import numpy as np  # only here: the simulation itself needs nothing beyond the package

    a = np.array([[1.0, x, y] for x, y, _ in pts])
    z = np.array([c for _, _, c in pts])
    coef, *_ = np.linalg.lstsq(a, z, rcond=None)
    return {"per_decision_vs_tasks": float(coef[1]), "per_decision_vs_workers": float(coef[2])}


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    import subprocess  # the sweep alone starts processes: one child per point

    rows = []
    for shape, n, w in sweep_points(args.quick, args.big):
        cmd = [sys.executable, os.path.abspath(__file__), "--json", "--shape", shape, "--tasks", str(n),
               "--workers", str(w), "--seed", str(args.seed), "--concurrency", str(args.concurrency),
               "--prefetch", str(args.prefetch), "--tick", str(args.tick)]
        if args.trace_memory:
            cmd.append("--trace-memory")
        if args.no_gc:
            cmd.append("--no-gc")
        if args.quiet_cluster:
            cmd.append("--quiet-cluster")
        print(f"  {shape} N={n:,} W={w:,} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
        rows.append(json.loads(proc.stdout)["runs"][0])
    return {"runs": rows, "exponents": fit_exponents(rows)}


# -- output ---------------------------------------------------------------------------------------------

def _fmt(value: Any, unit: float = 1.0, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value / unit:,.{digits}f}"


def table(report: dict[str, Any]) -> str:
    head = ("shape", "N", "edges", "W", "build s", "B/task", "B/edge", "peak B/task", "decisions/s",
            "events/s", "us/dec", "edges/s", "batch", "wall s", "end")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in report["runs"]:
        lines.append(" | ".join((
            r["shape"], _fmt(r["tasks"]), _fmt(r["edges"]), _fmt(r["workers"]),
            _fmt(r["build_cpu_s"], digits=2),
            _fmt(r["build_bytes_per_task"]), _fmt(r["build_bytes_per_edge"], digits=1),
            _fmt(r["peak_bytes_per_task"]), _fmt(r["decisions_per_s"]), _fmt(r["events_per_s"]),
            _fmt(r["cpu_per_decision_us"], digits=2), _fmt(r["edges_per_s"]),
            f"{r['events'] / max(1, r['handle_calls']):.1f}", _fmt(r["wall_s"], digits=1), r["outcome"])))
    out = "\n".join("| " + line + " |" for line in lines)
    exps = report.get("exponents")
    if exps:
        out += (f"\n\ncost per decision ~ N^{exps['per_decision_vs_tasks']:.3f} x "
                f"W^{exps['per_decision_vs_workers']:.3f} (least squares, log-log, independent runs)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="shuffle: --tasks N is N//2 producers x (N - N//2) consumers, "
                                       "all-to-all; --tasks 6324 gives 3,162 x 3,162 = 9,998,244 edges "
                                       "(about 10^7)")
    p.add_argument("--tasks", type=int, default=None, help="tasks (default 100,000; 20,000 with --quick)")
    p.add_argument("--workers", type=int, default=100, help="workers (default 100)")
    p.add_argument("--shape", choices=SHAPES, default="independent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=2, help="run slots per worker (default 2)")
    p.add_argument("--prefetch", type=int, default=1, help="prefetch slots per worker (default 1)")
    p.add_argument("--tick", type=int, default=0,
                   help="the driver reads its inbox every TICK us (default 0: what arrives at once)")
    p.add_argument("--quiet-cluster", action="store_true", help="no failures, losses or holds")
    p.add_argument("--trace-memory", action="store_true",
                   help="tracemalloc over build and run (exact, much slower: times not comparable)")
    p.add_argument("--build-only", action="store_true", help="construct the Scheduler, measure, stop")
    p.add_argument("--direct", type=int, metavar="B", default=None,
                   help="no simulation: feed the core B tasks' events per handle call (independent tasks)")
    p.add_argument("--no-gc", action="store_true",
                   help="the cyclic garbage collector off over build and run (the scheduler's own cost)")
    p.add_argument("--sweep", action="store_true", help="the sweep of the module docstring")
    p.add_argument("--big", action="store_true", help="with --sweep: 10^7 tasks too")
    p.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    p.add_argument("--timeout", type=float, default=3600.0, help="per sweep point, seconds")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.direct is not None:
        n = args.tasks if args.tasks is not None else 200_000
        row = direct(n, args.workers, args.direct, concurrency=args.concurrency,
                     prefetch=args.prefetch, collect=not args.no_gc)
        print(json.dumps(row) if args.json else
              f"direct: {row['tasks']:,} tasks, {row['workers']:,} workers, {args.direct} per call, "
              f"collector {'on' if row['gc'] else 'off'}: {row['decisions_per_s']:,.0f} decisions/s, "
              f"{row['us_per_task']:.2f} us per task")
        return 0
    if args.sweep:
        report = run_sweep(args)
    else:
        n = args.tasks if args.tasks is not None else (20_000 if args.quick else 100_000)
        trouble = Trouble(0, 0, 0, 0) if args.quiet_cluster else Trouble()
        report = {"runs": [measure(args.shape, n, args.workers, seed=args.seed, concurrency=args.concurrency,
                                   prefetch=args.prefetch, trouble=trouble, tick_us=args.tick,
                                   trace_memory=args.trace_memory, build_only=args.build_only,
                                   collect=not args.no_gc)]}
    report["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                         "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.json:
        print(json.dumps(report))
    else:
        print(table(report))
        m = report["machine"]
        print(f"\nPython {m['python']}, {m['cpus']} CPUs, load {m['load'][0]:.2f} {m['load'][1]:.2f} "
              f"{m['load'][2]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
