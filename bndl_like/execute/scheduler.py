"""The scheduler: a pure state machine that decides which task runs where.

No I/O, no threads, no clock reads, no randomness. The execution shell feeds it events
with :meth:`Scheduler.handle` and carries out the decisions it returns, in order. Every
decision costs O(log n) (O(log² n) when skipping tasks banned from a worker); memory
grows with tasks + edges + locality entries, never with tasks x workers.

Queues (sortedcontainers) hold task ranks: one global ready queue, one locality queue per
worker for the ready tasks that prefer it, and a queue of prefetched tasks that idle workers
may take back. Entries are removed eagerly (as cheap as a lazy pop with SortedList), which
keeps memory bounded and lets :meth:`Scheduler.validate_state` check the queues exactly.

The hot path (a task starts, succeeds, and its slot goes to the next one) avoids work that
cannot change a decision: the take-back queue is only kept while some worker is idle and
dropped after a stretch of fills without one (a rebuild costs O(prefetched tasks · log n),
paid for by that stretch, so the cost per decision stays O(log n) amortized); a task that
becomes ready and prefers some workers is staged until the fill, which places it on one of them
if it can, so that it never enters the queues; filling visits only workers with free slots
(kept in a set), and the decisions are built without the dataclasses' slow ``__init__``.

(The interface below is the contract between the shell and the core.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field, fields
from itertools import repeat
from operator import attrgetter, itemgetter

from sortedcontainers import SortedList

from .errors import WorkerDied

TaskId = Hashable
WorkerName = str


# -- what the shell tells the scheduler about the job ------------------------------------------------

@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A task as the scheduler sees it.

    ``priority``: lower runs first (ties: the order the specs were given).
    ``locality``: worker name -> int; -1 forbidden, 0 indifferent (may be omitted), 1+
    preferred, higher wins. Workers not named are indifferent.
    ``data_locality``: when true, the task also prefers the workers holding most bytes
    of its dependencies' outputs (added to the static locality; never overrides -1).
    """
    task_id: TaskId
    dependencies: tuple = ()
    priority: object = 0
    locality: dict | None = None
    data_locality: bool = True


# -- events (shell -> scheduler) ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WorkerAdded:
    worker: WorkerName


@dataclass(frozen=True, slots=True)
class WorkerLost:
    worker: WorkerName


@dataclass(frozen=True, slots=True)
class WorkerHeld:
    """No new tasks go to the worker; what runs there finishes."""
    worker: WorkerName


@dataclass(frozen=True, slots=True)
class WorkerReleased:
    worker: WorkerName


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """The worker started running a task it was given (it was not taken back)."""
    task_id: TaskId
    worker: WorkerName


@dataclass(frozen=True, slots=True)
class TaskSucceeded:
    task_id: TaskId
    worker: WorkerName
    nbytes: int = 0  # size of the output kept on the worker


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """The task raised. Counts an attempt. ``retry=False``: it would fail the same way on every
    attempt (e.g. it cannot be sent), so the job fails at once."""
    task_id: TaskId
    worker: WorkerName
    error: BaseException | None = None
    retry: bool = True


@dataclass(frozen=True, slots=True)
class TaskDependenciesFailed:
    """The task could not fetch dependency outputs: ``failures`` maps the worker that
    should have held them to the dependency task ids. Does not count an attempt."""
    task_id: TaskId
    worker: WorkerName
    failures: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TaskTakenBack:
    """Answer to :class:`TakeBack`: ``ok`` when the worker had not started the task."""
    task_id: TaskId
    worker: WorkerName
    ok: bool


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Cancel the job: every task assigned somewhere gets a CancelTask; then JobCancelled."""


# -- decisions (scheduler -> shell) ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RunTask:
    task_id: TaskId
    worker: WorkerName
    attempt: int  # 1 for the first attempt; re-runs after loss keep counting up


@dataclass(frozen=True, slots=True)
class TakeBack:
    """Ask ``worker`` to give back a task it was handed but has not started."""
    task_id: TaskId
    worker: WorkerName


@dataclass(frozen=True, slots=True)
class CancelTask:
    task_id: TaskId
    worker: WorkerName


@dataclass(frozen=True, slots=True)
class TaskDone:
    """The task's output is final (for now: lineage may re-run it if its holder is lost)."""
    task_id: TaskId
    worker: WorkerName


@dataclass(frozen=True, slots=True)
class TaskRetry:
    """The task failed and will be tried again (attempts left)."""
    task_id: TaskId
    worker: WorkerName
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class DependencyLost:
    """A finished task's output is gone (``worker`` lost or could not serve it) and it
    will run again; the shell marks it FailedDependency."""
    task_id: TaskId
    worker: WorkerName


@dataclass(frozen=True, slots=True)
class JobDone:
    pass


@dataclass(frozen=True, slots=True)
class JobFailed:
    """The job failed: a task failed for good (``task_id``, ``error``: its exception or a
    :class:`~bndl_like.execute.errors.WorkerDied`), or every worker was lost (both None)."""
    task_id: TaskId | None
    error: BaseException | None
    reason: str


@dataclass(frozen=True, slots=True)
class JobCancelled:
    pass


# -- the state machine -------------------------------------------------------------------------------

WAITING, READY, ASSIGNED, DONE, LOST, FAILED, CANCELLED = range(7)
_STATE_NAMES = ("waiting", "ready", "assigned", "done", "lost", "failed", "cancelled")
_MUST_RUN = (WAITING, READY, ASSIGNED)


def _maker(cls):
    """A fast constructor for a frozen, slotted dataclass: fills the slots directly instead of
    going through the generated ``__init__`` (``object.__setattr__`` per field). Same object."""
    new = object.__new__
    setters = [getattr(cls, f.name).__set__ for f in fields(cls)]
    if len(setters) == 2:
        set_a, set_b = setters

        def make2(a, b):
            obj = new(cls)
            set_a(obj, a)
            set_b(obj, b)
            return obj
        return make2
    set_a, set_b, set_c = setters

    def make3(a, b, c):
        obj = new(cls)
        set_a(obj, a)
        set_b(obj, b)
        set_c(obj, c)
        return obj
    return make3


_new_run_task = _maker(RunTask)
_new_task_done = _maker(TaskDone)
_new_take_back = _maker(TakeBack)


class _Queue:
    """Task ranks in priority order and, per live worker, the queued ranks it may not take.

    ``banned[w]`` is always a subset of ``items``, so the first rank ``w`` may take is found
    by bisecting the common prefix of the two sorted lists: O(log² n), however many are banned.
    """

    __slots__ = ("items", "banned")

    def __init__(self, items: Iterable[int] = ()) -> None:
        self.items = SortedList(items)
        self.banned: dict[WorkerName, SortedList] = {}

    def add(self, rank: int, banned: Iterable[WorkerName]) -> None:
        self.items.add(rank)
        for w in banned:
            self.ban(rank, w)

    def ban(self, rank: int, worker: WorkerName) -> None:
        self.banned.setdefault(worker, SortedList()).add(rank)

    def remove(self, rank: int, banned: Iterable[WorkerName]) -> None:
        items = self.items
        if items[0] == rank:  # the usual case: popping the head is much cheaper
            items.pop(0)
        else:
            items.remove(rank)
        for w in banned:
            self.banned[w].remove(rank)

    def first_for(self, worker: WorkerName) -> int | None:
        items, banned = self.items, self.banned.get(worker)
        if not banned:
            return items[0] if items else None
        if len(banned) == len(items):
            return None
        lo, hi = 0, len(banned)  # items[i] == banned[i] holds exactly for i below the answer
        while lo < hi:
            mid = (lo + hi) // 2
            if items[mid] == banned[mid]:
                lo = mid + 1
            else:
                hi = mid
        return items[lo]


class _Worker:
    """What the scheduler knows about one live worker."""

    __slots__ = ("name", "held", "assigned", "started", "unstarted", "stealable", "stealing", "local",
                 "outputs")

    def __init__(self, name: WorkerName):
        self.name = name
        self.held = False
        self.assigned: set[int] = set()   # given (RunTask), not finished / taken back / lost
        self.started = 0                  # how many of those reported TaskStarted
        self.unstarted: set[int] = set()  # assigned, not started, no TakeBack outstanding
        self.stealable: set[int] = set()  # the part of ``unstarted`` in the take-back queue
        self.stealing: set[int] = set()   # tasks other workers were asked to give back for this one
        self.local = SortedList()         # ready tasks that prefer this worker (see Scheduler)
        self.outputs: set[int] = set()    # tasks whose output lives here


class Scheduler:
    """Decides which task runs where; see the module docstring.

    Tasks are numbered in spec order and ranked by ``(priority, spec order)``; all queues hold
    ranks. ``attempt`` in :class:`RunTask` counts the runs of a task that were not taken back:
    retries and re-runs after a loss count, a run taken back before it started does not.

    A locality queue orders by locality (highest first), then rank, with one int per entry:
    ``rank - locality * n`` for ``n`` tasks, so that ``rank == key % n``.

    A worker lost while a task was started on it (TaskStarted for that run) counts against the
    task, not as an attempt: at ``worker_deaths`` such losses the job fails with
    :class:`~bndl_like.execute.errors.WorkerDied` (a task that kills its worker would kill
    them all). Tasks handed to the worker and not started do not count, nor do re-runs reset it.
    With ``suspects=True`` such tasks, and tasks that died with a worker, are suspects
    (:meth:`suspect`): the shell runs them next alone on their worker with a confirmed start, so
    that their next death is known to be their own, and it then counts the earlier ones too.
    """

    _STEAL_PATIENCE = 16  # extra quiet fills before the take-back queue is dropped (see _fill)

    def __init__(self, tasks: Iterable[TaskSpec], workers: Iterable[WorkerName] = (), *,
                 concurrency: int = 1, prefetch: int = 0, attempts: int = 1, worker_deaths: int = 2,
                 suspects: bool = False):
        for name, value, low in (("concurrency", concurrency, 1), ("prefetch", prefetch, 0),
                                 ("attempts", attempts, 1), ("worker_deaths", worker_deaths, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self._concurrency, self._cap, self._attempts = concurrency, concurrency + prefetch, attempts
        self._worker_deaths = worker_deaths
        specs = list(tasks)
        n = self._n = len(specs)
        index = self._index = {}
        if all(map(isinstance, specs, repeat(TaskSpec))):
            self._ids = list(map(attrgetter("task_id"), specs))
            index.update(zip(self._ids, range(n), strict=True))
        if len(index) != n:
            self._spec_error(specs)
        # dependencies (deduplicated, in the order given) and dependents (in spec order); few
        # objects per task, as the cyclic garbage collector walks every one of them
        dependents: dict[int, list[int]] = {}
        deps_of: list[tuple[int, ...]] = [()] * n
        get = index.__getitem__
        ordered = True  # every task depends on earlier ones only: no cycle
        for i, spec in enumerate(specs):
            named = spec.dependencies
            if not named:
                continue
            if type(named) is not tuple:
                named = tuple(named)
            try:
                deps = tuple(map(get, named))
            except KeyError:
                unknown = next(d for d in dict.fromkeys(named) if d not in index)
                raise ValueError(f"task {spec.task_id!r} depends on unknown task {unknown!r}") from None
            if len(deps) > 1:
                deps = tuple(dict.fromkeys(deps))
            if ordered and max(deps) >= i:
                ordered = False
            for d in deps:
                if d in dependents:
                    dependents[d].append(i)
                else:
                    dependents[d] = [i]
            deps_of[i] = deps
        self._deps = deps_of
        self._dependents: list[tuple[int, ...]] = [()] * n
        for d, after in dependents.items():
            self._dependents[d] = tuple(after)
        if not ordered:
            self._check_acyclic()
        self._rank_tasks(specs)
        # static locality, sparse: only tasks that name a worker appear
        self._static_prefs: dict[int, tuple[tuple[WorkerName, int], ...]] = {}
        self._static_banned: dict[int, frozenset[WorkerName]] = {}
        self._pref_index: dict[WorkerName, list[tuple[int, int]]] = {}
        self._ban_index: dict[WorkerName, list[int]] = {}
        for i, spec in enumerate(specs):
            loc = spec.locality
            if not loc:
                continue
            prefs = tuple((w, int(v)) for w, v in loc.items() if v > 0)
            banned = frozenset(w for w, v in loc.items() if v < 0)
            if prefs:
                self._static_prefs[i] = prefs
                for w, v in prefs:
                    self._pref_index.setdefault(w, []).append((i, v))
            if banned:
                self._static_banned[i] = banned
                for w in banned:
                    self._ban_index.setdefault(w, []).append(i)
        self._data_locality = bytearray(map(bool, map(attrgetter("data_locality"), specs)))
        # per-task state
        self._status = [WAITING] * n
        self._counts = [0] * len(_STATE_NAMES)
        self._counts[WAITING] = n
        self._missing = list(map(len, deps_of))              # dependencies whose output is not available
        self._where: list[WorkerName | None] = [None] * n     # assigned worker
        self._started = bytearray(n)
        self._location: list[WorkerName | None] = [None] * n  # output holder (DONE tasks only)
        self._nbytes = [0] * n
        self._runs = [0] * n                                  # the last RunTask.attempt
        self._succeeded = bytearray(n)
        self._failures: dict[int, int] = {}
        self._depfails: dict[int, int] = {}
        self._deaths: dict[int, list[WorkerName]] = {}       # workers lost while running it, oldest first
        self._lost_from: dict[int, WorkerName] = {}
        self._retry_banned: dict[int, set[WorkerName]] = {}
        self._retry_index: dict[WorkerName, set[int]] = {}
        self._prefs: dict[int, dict[WorkerName, int]] = {}   # ready tasks: live worker -> locality
        self._pending: dict[int, WorkerName | None] = {}     # TakeBack outstanding -> thief (or None)
        self._n_succeeded = self._n_failed = self._n_retried = self._n_lost = self._n_taken_back = 0
        self._n_deaths = 0
        # task -> workers lost holding it when no start on them was known (see _on_worker_lost)
        self._suspects: dict[int, list[WorkerName]] = {}
        self._track_suspects = suspects  # the shell confirms the starts of suspects (see suspect())
        # queues and workers
        self._workers: dict[WorkerName, _Worker] = {}
        self._free: set[WorkerName] = set()    # live, not held, below concurrency + prefetch
        self._hungry: set[WorkerName] = set()  # live, not held, assigned + stealing below concurrency
        # The take-back queue is only kept while some worker is hungry (and for a while after):
        # when slots fill from the ready queue, nobody takes back and nothing needs to be queued.
        self._steal = _Queue()
        self._stealing_on = False
        self._steal_quiet = 0  # fills in a row without a hungry worker while the queue is kept
        self._staged: set[int] = set()  # became ready since the last fill and prefer some worker
        self._out: list = []
        self._over = False
        # every root is ready; those with a static locality go the long way
        plain = []
        special = self._static_prefs.keys() | self._static_banned.keys()
        status, rank = self._status, self._rank
        for i, deps in enumerate(self._deps):
            if not deps and i not in special:
                status[i] = READY
                plain.append(rank[i])
        self._counts[WAITING] -= len(plain)
        self._counts[READY] += len(plain)
        self._ready = _Queue(plain)
        for w in workers:
            if w not in self._workers:
                self._add_worker(w)
        for i in sorted(special):
            if not self._deps[i]:
                self._make_ready(i)

    def _spec_error(self, specs: list) -> None:
        """Raise the error for the first spec that is not a TaskSpec or repeats a task id."""
        seen = set()
        for spec in specs:
            if not isinstance(spec, TaskSpec):
                raise TypeError(f"expected a TaskSpec, got {spec!r}")
            if spec.task_id in seen:
                raise ValueError(f"duplicate task id {spec.task_id!r}")
            seen.add(spec.task_id)
        raise AssertionError("unreachable")

    def _rank_tasks(self, specs: list[TaskSpec]) -> None:
        """Rank by (priority, spec order)."""
        n = self._n
        priorities = list(map(attrgetter("priority"), specs))
        try:
            # a stable sort on the priorities alone gives the order of the (priority, index)
            # pairs without building them; they are the fallback for priorities that are
            # equal but do not order (None, say)
            self._by_rank = sorted(range(n), key=priorities.__getitem__)
        except TypeError:
            try:
                self._by_rank = list(map(itemgetter(1), sorted(zip(priorities, range(n), strict=True))))
            except TypeError as exc:
                raise ValueError(f"task priorities must be mutually comparable: {exc}")
        self._rank = sorted(range(n), key=self._by_rank.__getitem__)  # the inverse permutation

    def _check_acyclic(self) -> None:
        """Raise ValueError naming a cycle if there is one."""
        pending = [len(d) for d in self._deps]
        stack = [i for i, c in enumerate(pending) if c == 0]
        seen = 0
        dependents = self._dependents
        while stack:
            seen += 1
            for j in dependents[stack.pop()]:
                pending[j] -= 1
                if pending[j] == 0:
                    stack.append(j)
        if seen == len(pending):
            return
        # every task left waits on a task left: follow such dependencies until one repeats
        i = next(i for i, c in enumerate(pending) if c)
        path: list[int] = []
        position: dict[int, int] = {}
        while i not in position:
            position[i] = len(path)
            path.append(i)
            i = next(d for d in self._deps[i] if pending[d])
        cycle = " -> ".join(repr(self._ids[k]) for k in path[position[i]:] + [i])
        raise ValueError(f"dependency cycle (-> means 'depends on'): {cycle}")

    # -- public interface ---------------------------------------------------------------------------

    def start(self) -> list:
        """Initial decisions (RunTask for what can run on the initial workers)."""
        if not self._over:
            self._fill()
        return self._flush()

    def handle(self, *events) -> list:
        """Apply events in order; return the decisions they lead to, in order.

        Events are checked before any is applied: an unknown task id raises ValueError and
        leaves the state untouched. Slots are filled once, after the last event.
        """
        if self._over:
            return []
        index = self._index
        for event in events:
            kind = type(event)
            if kind in _TASK_EVENTS:
                if event.task_id not in index:
                    raise ValueError(f"unknown task id {event.task_id!r}")
                if kind is TaskDependenciesFailed:
                    self._check_failures(event)
            elif kind not in _HANDLERS:
                raise TypeError(f"not a scheduler event: {event!r}")
        for event in events:
            if self._over:
                break
            _HANDLERS[type(event)](self, event)
        if not self._over:
            self._fill()
        out, self._out = self._out, []
        return out

    @property
    def done(self) -> bool:
        """True once the job is over (JobDone, JobFailed or JobCancelled was emitted)."""
        return self._over

    @property
    def workers(self) -> list[WorkerName]:
        """Live workers, by name."""
        return sorted(self._workers)

    def state(self, task_id: TaskId) -> str:
        """waiting, ready, assigned (not started), running, done, lost (output gone, not needed
        now), failed or cancelled."""
        t = self._task(task_id)
        if self._status[t] == ASSIGNED and self._started[t]:
            return "running"
        return _STATE_NAMES[self._status[t]]

    def assigned(self, worker: WorkerName) -> list[TaskId]:
        """Tasks given to ``worker`` and not finished, taken back or lost, by priority."""
        w = self._workers.get(worker)
        return [self._ids[t] for t in sorted(w.assigned, key=self._rank.__getitem__)] if w else []

    def outputs(self, worker: WorkerName) -> list[TaskId]:
        """Tasks whose output ``worker`` holds (as far as this job knows), by priority."""
        w = self._workers.get(worker)
        return [self._ids[t] for t in sorted(w.outputs, key=self._rank.__getitem__)] if w else []

    def suspect(self, task_id: TaskId) -> bool:
        """True when ``task_id`` was held by a worker that died before reporting any start, or
        was running on a worker that died: its next run should report its start before it runs,
        so that a next death is known to be its own (see ``_on_worker_lost``)."""
        if not self._track_suspects:
            return False
        t = self._index[task_id]
        return t in self._suspects or t in self._deaths

    def location(self, task_id: TaskId) -> WorkerName | None:
        """The worker holding the task's output, if it is available."""
        return self._location[self._task(task_id)]

    def counts(self) -> dict[str, int]:
        """Progress counts; ``done`` counts tasks that succeeded at least once."""
        c = self._counts
        return {"tasks": self._n, "done": self._n_succeeded,
                "pending": self._n - self._n_succeeded, "waiting": c[WAITING], "ready": c[READY],
                "assigned": c[ASSIGNED], "running": sum(w.started for w in self._workers.values()),
                "failed_attempts": self._n_failed, "retried": self._n_retried,
                "dependencies_lost": self._n_lost, "taken_back": self._n_taken_back,
                "worker_deaths": self._n_deaths}

    def validate_state(self) -> None:
        """Assert the invariants (for tests: O(tasks + edges + queue entries))."""
        from .scheduler_checks import validate_state  # only tests need it

        validate_state(self)

    # -- events ---------------------------------------------------------------------------------------

    def _task(self, task_id: TaskId) -> int:
        try:
            return self._index[task_id]
        except KeyError:
            raise ValueError(f"unknown task id {task_id!r}")

    def _check_failures(self, event: TaskDependenciesFailed) -> None:
        deps = set(self._deps[self._index[event.task_id]])
        for holder, dep_ids in event.failures.items():
            for dep in dep_ids:
                if self._task(dep) not in deps:
                    raise ValueError(f"{dep!r} (on {holder!r}) is not a dependency "
                                     f"of {event.task_id!r}")

    def _current(self, event) -> int | None:
        """The task's index if it is assigned to the event's worker, else None (a stale event)."""
        t = self._index[event.task_id]
        return t if self._where[t] == event.worker else None

    def _on_worker_added(self, event: WorkerAdded) -> None:
        if event.worker not in self._workers:
            self._add_worker(event.worker)
            if self._retry_index.get(event.worker):
                self._lift_retry_bans()

    def _on_worker_lost(self, event: WorkerLost) -> None:
        w = self._workers.get(event.worker)
        if w is None:
            return
        for t in w.stealing:
            self._pending[t] = None
        w.stealing.clear()
        requeue = sorted(w.assigned, key=self._rank.__getitem__)
        died = [t for t in requeue if self._started[t]] if w.started else None
        if self._track_suspects:
            # a task that ends its process at once dies before its start (and the events before
            # it) leave the worker: every task it held without a known start is a suspect, run
            # next alone with a confirmed start; a later death of its own counts these too
            started = self._started
            for t in requeue:
                if not started[t]:
                    self._suspects.setdefault(t, []).append(w.name)
        for t in requeue:
            self._unassign(t)
        lost = sorted(w.outputs, key=self._rank.__getitem__)
        for t in [self._by_rank[key % self._n] for key in w.local] + [
                t for t in self._staged if w.name in self._prefs.get(t, ())]:
            prefs = self._prefs[t]
            del prefs[w.name]
            if not prefs:
                del self._prefs[t]
        self._ready.banned.pop(w.name, None)
        self._steal.banned.pop(w.name, None)
        self._free.discard(w.name)
        self._hungry.discard(w.name)
        del self._workers[w.name]
        for t in lost:
            self._lose_output(t)
        if died and self._count_deaths(died, w.name, requeue):
            return
        for t in requeue:
            self._requeue(t)
        self._rerun_needed(lost)
        if not self._workers:
            left = self._n - self._n_succeeded
            self._end(JobFailed(None, None, f"every worker was lost (the last: {w.name!r}); "
                                            f"{left} of {self._n} tasks never finished"))
            return
        self._lift_retry_bans()

    def _count_deaths(self, died: list[int], name: WorkerName, requeue: list[int]) -> bool:
        """Count the loss of ``name`` against the tasks it was running (``died``, by rank). When
        one reaches the limit, end the job with WorkerDied for the first such task: True."""
        deaths, limit = self._deaths, self._worker_deaths
        fatal = None
        for t in died:
            workers = deaths.get(t)
            if workers is None:
                workers = deaths[t] = []
            earlier = self._suspects.pop(t, ())
            workers.extend(earlier)
            workers.append(name)
            self._n_deaths += len(earlier) + 1
            if fatal is None and len(workers) >= limit:
                fatal = t
        if fatal is None:
            return False
        for t in requeue:  # they went with the worker and will not run again
            self._set(t, LOST if self._succeeded[t] else CANCELLED)
        self._set(fatal, FAILED)
        task_id, workers = self._ids[fatal], deaths[fatal]
        error = WorkerDied(task_id, name, len(workers), workers)
        self._end(JobFailed(task_id, error, f"task {task_id!r} was running on {len(workers)} worker(s) "
                                            f"that died ({', '.join(workers)}), the maximum "
                                            f"(worker_deaths={limit})"))
        return True

    def _on_worker_held(self, event: WorkerHeld) -> None:
        w = self._workers.get(event.worker)
        if w is not None and not w.held:
            w.held = True
            self._update_free(w)
            for t in sorted(w.unstarted, key=self._rank.__getitem__):
                self._take_back(t, None)

    def _on_worker_released(self, event: WorkerReleased) -> None:
        w = self._workers.get(event.worker)
        if w is not None and w.held:
            w.held = False
            self._update_free(w)

    def _on_task_started(self, event: TaskStarted) -> None:
        t = self._index[event.task_id]
        if self._where[t] == event.worker and not self._started[t]:
            w = self._workers[event.worker]
            self._started[t] = 1
            w.started += 1
            w.unstarted.discard(t)
            if self._stealing_on:
                self._refresh_stealable(w)

    def _on_task_succeeded(self, event: TaskSucceeded) -> None:
        t = self._index[event.task_id]
        name = event.worker
        if self._where[t] != name:
            return
        self._unassign(t)
        counts, status = self._counts, self._status
        counts[status[t]] -= 1
        counts[DONE] += 1
        status[t] = DONE
        self._location[t] = name
        nbytes = event.nbytes
        if type(nbytes) is not int:
            nbytes = int(nbytes or 0)
        self._nbytes[t] = nbytes if nbytes > 0 else 0
        self._workers[name].outputs.add(t)
        if self._retry_banned and t in self._retry_banned:  # bans hold for retries, not for a re-run
            for w in self._retry_banned.pop(t):
                self._retry_index[w].discard(t)
        if not self._succeeded[t]:
            self._succeeded[t] = 1
            self._n_succeeded += 1
        self._out.append(_new_task_done(event.task_id, name))
        missing = self._missing
        for d in self._dependents[t]:
            missing[d] -= 1
            if missing[d] == 0 and status[d] == WAITING:
                self._make_ready(d)
        if self._n_succeeded == self._n:
            self._end(JobDone())

    def _on_task_failed(self, event: TaskFailed) -> None:
        t = self._current(event)
        if t is None:
            return
        self._unassign(t)
        self._set(t, WAITING)
        failures = self._failures[t] = self._failures.get(t, 0) + 1
        self._n_failed += 1
        if failures >= self._attempts or not event.retry:
            self._set(t, FAILED)
            why = f"the maximum (attempts={self._attempts})" if event.retry else "it cannot be retried"
            self._end(JobFailed(event.task_id, event.error, f"task {event.task_id!r} failed "
                                                            f"{failures} time(s), {why}: {event.error!r}"))
            return
        self._out.append(TaskRetry(event.task_id, event.worker, event.error))
        self._n_retried += 1
        # ban the worker for the retry, unless no other worker could take it now
        if any(name != event.worker and not w.held and not self._forbidden(t, name)
               for name, w in self._workers.items()):
            self._retry_banned.setdefault(t, set()).add(event.worker)
            self._retry_index.setdefault(event.worker, set()).add(t)
        self._requeue(t)

    def _on_dependencies_failed(self, event: TaskDependenciesFailed) -> None:
        t = self._current(event)
        if t is None:
            return
        self._unassign(t)
        self._set(t, WAITING)
        tries = self._depfails[t] = self._depfails.get(t, 0) + 1
        if tries > max(10, 5 * self._attempts):
            self._set(t, FAILED)
            what = "; ".join(f"{list(deps)!r} from {holder!r}" for holder, deps in event.failures.items())
            self._end(JobFailed(event.task_id, None,
                                f"task {event.task_id!r} could not fetch its dependencies {tries} times "
                                f"(last: {what or 'none named'})"))
            return
        lost = []
        for holder, dep_ids in event.failures.items():
            for dep in dep_ids:
                d = self._index[dep]
                if self._status[d] == DONE and self._location[d] == holder:
                    self._lose_output(d)
                    lost.append(d)
        self._requeue(t)
        self._rerun_needed(lost)

    def _on_taken_back(self, event: TaskTakenBack) -> None:
        t = self._current(event)
        if t is None or t not in self._pending:
            return
        thief = self._pending.pop(t)
        if thief is not None:
            self._workers[thief].stealing.discard(t)
            self._update_free(self._workers[thief])
        if not event.ok:  # it had started
            if not self._started[t]:
                self._mark_started(t)
            return
        self._unassign(t)
        self._set(t, WAITING)
        self._runs[t] -= 1  # a run taken back before it started is not an attempt
        self._n_taken_back += 1
        self._requeue(t)
        if (thief is not None and self._status[t] == READY and thief in self._free
                and not self._forbidden(t, thief)):
            self._assign(t, thief)

    def _on_cancel_job(self, event: CancelJob) -> None:
        self._end(JobCancelled())

    # -- transitions -----------------------------------------------------------------------------------

    def _set(self, t: int, status: int) -> None:
        self._counts[self._status[t]] -= 1
        self._counts[status] += 1
        self._status[t] = status

    def _forbidden(self, t: int, worker: WorkerName) -> bool:
        return worker in self._static_banned.get(t, ()) or worker in self._retry_banned.get(t, ())

    def _banned_live(self, t: int) -> list[WorkerName]:
        static, retry = self._static_banned.get(t), self._retry_banned.get(t)
        if not static and not retry:
            return []
        return [w for w in (static or frozenset()) | (retry or set()) if w in self._workers]

    def _add_worker(self, name: WorkerName) -> None:
        w = self._workers[name] = _Worker(name)
        for t in set(self._ban_index.get(name, ())) | self._retry_index.get(name, set()):
            if self._status[t] == READY:
                if t not in self._staged:  # (a staged task gets its bans when it is queued)
                    self._ready.ban(self._rank[t], name)
            elif self._status[t] == ASSIGNED and t in self._workers[self._where[t]].stealable:
                self._steal.ban(self._rank[t], name)
        for t, loc in self._pref_index.get(name, ()):
            if self._status[t] == READY and not self._forbidden(t, name):
                self._prefs.setdefault(t, {})[name] = loc
                if t not in self._staged:
                    w.local.add(self._rank[t] - loc * self._n)
        self._update_free(w)

    def _make_ready(self, t: int) -> None:
        """A task whose dependencies' outputs are all available: queue it, or when it prefers
        some workers, stage it for the next fill, which places it on one of them if it can (then
        it never touches the queues) and queues it otherwise."""
        counts, status = self._counts, self._status
        counts[status[t]] -= 1
        counts[READY] += 1
        status[t] = READY
        prefs = None
        static = self._static_prefs.get(t)
        if static:
            prefs = {w: loc for w, loc in static if w in self._workers and not self._forbidden(t, w)}
        if self._data_locality[t] and self._deps[t]:
            holder = self._data_holder(t)
            if not self._forbidden(t, holder):
                if prefs is None:
                    prefs = {holder: 1}
                else:
                    prefs[holder] = prefs.get(holder, 0) + 1
        if prefs:
            self._prefs[t] = prefs
            self._staged.add(t)
        else:
            self._enqueue(t)

    def _enqueue(self, t: int) -> None:
        """Put a ready task in the ready queue and in the locality queues of its workers."""
        rank = self._rank[t]
        if t in self._static_banned or t in self._retry_banned:
            self._ready.add(rank, self._banned_live(t))
        else:
            self._ready.items.add(rank)
        prefs = self._prefs.get(t)
        if prefs:
            workers, n = self._workers, self._n
            for w, loc in prefs.items():
                workers[w].local.add(rank - loc * n)

    def _data_holder(self, t: int) -> WorkerName:
        """The worker holding most bytes of the task's dependency outputs (then most outputs)."""
        deps, location, nbytes = self._deps[t], self._location, self._nbytes
        if len(deps) == 1:
            return location[deps[0]]
        if len(deps) == 2:
            a, b = deps
            wa, wb = location[a], location[b]
            if wa == wb:
                return wa
            if nbytes[a] != nbytes[b]:
                return wa if nbytes[a] > nbytes[b] else wb
            return min(wa, wb)
        where = list(map(location.__getitem__, deps))
        count = Counter(where)
        if len(count) == 1:
            return where[0]
        held = dict.fromkeys(count, 0)
        for w, size in zip(where, map(nbytes.__getitem__, deps), strict=True):
            held[w] += size
        return min(held, key=lambda w: (-held[w], -count[w], w))

    def _dequeue(self, t: int) -> None:
        """Take a ready task off the queues (or out of the staging set)."""
        if t in self._staged:
            self._staged.remove(t)
            self._prefs.pop(t, None)
            return
        rank = self._rank[t]
        items = self._ready.items
        if items[0] == rank:
            items.pop(0)
        else:
            items.remove(rank)
        self._unqueue(t, rank)

    def _unqueue(self, t: int, rank: int) -> None:
        """The rest of :meth:`_dequeue` once the rank is off the ready list: bans, locality entries."""
        if t in self._static_banned or t in self._retry_banned:
            banned = self._ready.banned
            for w in self._banned_live(t):
                banned[w].remove(rank)
        prefs = self._prefs.pop(t, None)
        if prefs:
            workers, n = self._workers, self._n
            for w, loc in prefs.items():
                workers[w].local.remove(rank - loc * n)

    def _assign(self, t: int, name: WorkerName) -> None:
        self._dequeue(t)
        self._place(t, name)

    def _place(self, t: int, name: WorkerName) -> None:
        """Run a task that was just taken off the queues on ``name``."""
        w = self._workers[name]
        counts, status = self._counts, self._status
        counts[status[t]] -= 1
        counts[ASSIGNED] += 1
        status[t] = ASSIGNED
        self._where[t] = name
        assigned = w.assigned
        assigned.add(t)
        w.unstarted.add(t)
        runs = self._runs[t] = self._runs[t] + 1
        self._out.append(_new_run_task(self._ids[t], name, runs))
        if len(assigned) >= self._cap:
            self._free.discard(name)
        if len(assigned) + len(w.stealing) >= self._concurrency:
            self._hungry.discard(name)
        if self._stealing_on:
            self._refresh_stealable(w)

    def _unassign(self, t: int) -> None:
        """Take the task off its worker (the caller sets the new status)."""
        name = self._where[t]
        w = self._workers[name]
        if t in self._pending:
            thief = self._pending.pop(t)
            if thief is not None:
                self._workers[thief].stealing.discard(t)
                self._update_free(self._workers[thief])
        assigned = w.assigned
        assigned.remove(t)
        if self._started[t]:
            self._started[t] = 0
            w.started -= 1
        else:
            w.unstarted.discard(t)
        self._where[t] = None
        if not w.held:  # fewer tasks: maybe free, maybe hungry
            self._free.add(name)
            if len(assigned) + len(w.stealing) < self._concurrency:
                self._hungry.add(name)
        if self._stealing_on:
            self._refresh_stealable(w)

    def _mark_started(self, t: int) -> None:
        w = self._workers[self._where[t]]
        self._started[t] = 1
        w.started += 1
        w.unstarted.discard(t)
        if self._stealing_on:
            self._refresh_stealable(w)

    def _take_back(self, t: int, thief: WorkerName | None) -> None:
        victim = self._workers[self._where[t]]
        victim.unstarted.discard(t)
        self._pending[t] = thief
        if thief is not None:
            self._workers[thief].stealing.add(t)
            self._update_free(self._workers[thief])
        self._out.append(_new_take_back(self._ids[t], victim.name))
        if self._stealing_on:
            self._refresh_stealable(victim)

    def _refresh_stealable(self, w: _Worker) -> None:
        """A worker's unstarted tasks may be taken back only while more of them wait than the
        worker has free run slots (they are prefetched); this also rules out ping-pong."""
        spare = len(w.unstarted) - max(0, self._concurrency - w.started)
        if spare <= 0 and not w.stealable:
            return
        want = w.unstarted if spare > 0 else set()
        for t in w.stealable - want:
            self._steal.remove(self._rank[t], self._banned_live(t))
        for t in want - w.stealable:
            self._steal.add(self._rank[t], self._banned_live(t))
        w.stealable = set(want)

    def _start_stealing(self) -> None:
        """Build the take-back queue: O(prefetched tasks), paid for by the fills since it was dropped."""
        self._stealing_on = True
        self._steal_quiet = 0
        for w in self._workers.values():
            self._refresh_stealable(w)

    def _stop_stealing(self) -> None:
        self._stealing_on = False
        self._steal = _Queue()
        for w in self._workers.values():
            if w.stealable:
                w.stealable = set()

    def _update_free(self, w: _Worker) -> None:
        name = w.name
        if w.held:
            self._free.discard(name)
            self._hungry.discard(name)
            return
        n = len(w.assigned)
        if n < self._cap:
            self._free.add(name)
        else:
            self._free.discard(name)
        if n + len(w.stealing) < self._concurrency:
            self._hungry.add(name)
        else:
            self._hungry.discard(name)

    def _lose_output(self, t: int) -> None:
        """The output of a DONE task is gone; its dependents wait again."""
        holder = self._location[t]
        self._set(t, LOST)
        self._location[t] = None
        self._lost_from[t] = holder
        if holder in self._workers:
            self._workers[holder].outputs.discard(t)
        for d in self._dependents[t]:
            self._missing[d] += 1
            if self._status[d] == READY:
                self._dequeue(d)
                self._set(d, WAITING)

    def _needed(self, t: int) -> bool:
        return any(self._status[d] in _MUST_RUN for d in self._dependents[t])

    def _rerun_needed(self, lost: list[int]) -> None:
        for t in lost:
            if self._status[t] == LOST and self._needed(t):
                self._out.append(DependencyLost(self._ids[t], self._lost_from[t]))
                self._n_lost += 1
                self._requeue(t)

    def _requeue(self, t: int) -> None:
        """Put a task that must (re)run back in line, re-running the lost outputs it needs."""
        stack = [t]
        while stack:
            x = stack.pop()
            if self._missing[x] == 0:
                self._make_ready(x)
                continue
            self._set(x, WAITING)
            for d in self._deps[x]:
                if self._status[d] == LOST:
                    self._out.append(DependencyLost(self._ids[d], self._lost_from[d]))
                    self._n_lost += 1
                    self._set(d, WAITING)
                    stack.append(d)

    def _lift_retry_bans(self) -> None:
        """Retry bans that leave a task no live worker are dropped: run it where it failed
        rather than wait (after a loss, or when the banned worker comes back alone)."""
        for t, banned in list(self._retry_banned.items()):
            if self._status[t] not in (WAITING, READY) or not any(w in self._workers for w in banned):
                continue
            if any(not self._forbidden(t, w) for w in self._workers):
                continue
            ready = self._status[t] == READY
            if ready:
                self._dequeue(t)
            for w in banned:
                self._retry_index[w].discard(t)
            del self._retry_banned[t]
            if ready:
                self._make_ready(t)

    def _end(self, decision) -> None:
        """Cancel whatever is still assigned, then emit the job's final decision."""
        assigned = sorted((t for w in self._workers.values() for t in w.assigned), key=self._rank.__getitem__)
        for t in assigned:
            name = self._where[t]
            self._unassign(t)
            self._set(t, LOST if self._succeeded[t] else CANCELLED)
            self._out.append(CancelTask(self._ids[t], name))
        self._out.append(decision)
        self._over = True

    # -- filling slots -----------------------------------------------------------------------------------

    def _fill(self) -> None:
        """Give work to workers with free slots: preferred placements of newly ready tasks first,
        then every free worker pulls, then idle workers take back prefetched tasks."""
        if self._n_succeeded == self._n:
            self._end(JobDone())
            return
        free = self._free
        staged = self._staged
        if staged:  # place newly ready tasks on their best free worker, else queue them
            for t in sorted(staged, key=self._rank.__getitem__) if len(staged) > 1 else list(staged):
                prefs = self._prefs.get(t)
                best = None
                if prefs:
                    if len(prefs) == 1:
                        (best,) = prefs
                        if best not in free:
                            best = None
                    else:
                        for name, _ in sorted(prefs.items(), key=lambda item: (-item[1], item[0])):
                            if name in free:
                                best = name
                                break
                if best is None:
                    staged.remove(t)
                    self._enqueue(t)
                else:
                    self._assign(t, best)
        counts = self._counts
        if free and counts[READY]:  # run slots everywhere first, then prefetch slots
            if len(free) == 1:  # (one worker: both passes come down to one)
                names, limits = list(free), (self._cap,)
            else:
                names, limits = sorted(free), sorted({self._concurrency, self._cap})
            workers, by_rank, n = self._workers, self._by_rank, self._n
            items, banned = self._ready.items, self._ready.banned
            prefs_of, static_banned, retry_banned = self._prefs, self._static_banned, self._retry_banned
            for limit in limits:
                for name in names:
                    w = workers[name]
                    local, assigned = w.local, w.assigned
                    while len(assigned) < limit:  # (a free worker is not held: no other check)
                        if prefs_of and local:
                            self._assign(by_rank[local[0] % n], name)
                        elif not counts[READY]:  # (as many as in the ready queue, once staged ones are in)
                            break
                        elif banned.get(name):
                            rank = self._ready.first_for(name)
                            if rank is None:
                                break
                            self._assign(by_rank[rank], name)
                        else:  # the head of the ready queue: pop it
                            rank = items.pop(0)
                            t = by_rank[rank]
                            if t in prefs_of or t in static_banned or t in retry_banned:
                                self._unqueue(t, rank)
                            self._place(t, name)
        hungry = self._hungry
        if hungry:  # take back prefetched tasks for workers with idle run slots
            self._steal_quiet = 0
            if not self._stealing_on:
                self._start_stealing()
            if self._steal.items:
                concurrency = self._concurrency
                for name in sorted(hungry):
                    if not self._steal.items:
                        break
                    w = self._workers[name]
                    for _ in range(concurrency - len(w.assigned) - len(w.stealing)):
                        rank = self._steal.first_for(name)
                        if rank is None:
                            break
                        self._take_back(self._by_rank[rank], name)
        elif self._stealing_on:
            # nobody was hungry for a while: drop the queue (rebuilding it costs no more than that)
            self._steal_quiet += 1
            if self._steal_quiet > len(self._workers) * self._cap + self._STEAL_PATIENCE:
                self._stop_stealing()

    def _next_for(self, w: _Worker) -> int | None:
        """The best ready task ``w`` may run: its own locality queue first, then by priority."""
        if w.local:
            return self._by_rank[w.local[0] % self._n]
        rank = self._ready.first_for(w.name)
        return None if rank is None else self._by_rank[rank]

    def _flush(self) -> list:
        out, self._out = self._out, []
        return out


_HANDLERS = {WorkerAdded: Scheduler._on_worker_added, WorkerLost: Scheduler._on_worker_lost,
             WorkerHeld: Scheduler._on_worker_held, WorkerReleased: Scheduler._on_worker_released,
             TaskStarted: Scheduler._on_task_started, TaskSucceeded: Scheduler._on_task_succeeded,
             TaskFailed: Scheduler._on_task_failed, TaskDependenciesFailed: Scheduler._on_dependencies_failed,
             TaskTakenBack: Scheduler._on_taken_back, CancelJob: Scheduler._on_cancel_job}
_TASK_EVENTS = frozenset((TaskStarted, TaskSucceeded, TaskFailed, TaskDependenciesFailed, TaskTakenBack))
