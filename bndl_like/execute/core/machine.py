"""The scheduler: a pure state machine that decides which task runs where.

No I/O, no threads, no clock reads, no randomness. The execution shell feeds it events with
:meth:`Scheduler.handle` and carries out the decisions it returns, in order. Every decision
costs O(log n) (O(log² n) when skipping tasks banned from a worker); memory grows with
tasks + edges + locality entries, never with tasks x workers.

Queues (sortedcontainers) hold task ranks: one global ready queue, one locality queue per
worker for the ready tasks that prefer it, and a queue of prefetched tasks that idle workers may
take back. Entries are removed eagerly (as cheap as a lazy pop with SortedList), which keeps
memory bounded and lets :meth:`Scheduler.validate_state` check the queues exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .checks import validate_state
from .decisions import Decision, EndJob, JobOutcome, MarkTaskDone, RetryTask, fast_constructor
from .events import (
    TASK_EVENTS,
    CancelJob,
    Event,
    TaskAbandoned,
    TaskDependenciesFailed,
    TaskEvent,
    TaskFailed,
    TaskId,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    TaskTakenBack,
    WorkerAdded,
    WorkerHeld,
    WorkerLost,
    WorkerName,
    WorkerResumed,
)
from .graph import build_graph
from .placement import Placement
from .states import ASSIGNED, CANCELLED, DONE, FAILED, LOST, READY, STATE_NAMES, WAITING, TaskState

_new_task_done = fast_constructor(MarkTaskDone)


class Scheduler(Placement):
    """Decides which task runs where; see the module docstring.

    Tasks are numbered in spec order and ranked by ``(priority, spec order)``; all queues hold
    ranks. ``attempt`` in :class:`~.decisions.RunTask` numbers the runs of a task that were not
    taken back: retries, re-runs after a loss and runs after an abandon count, a run taken back
    before it started does not. A task event naming another worker or another attempt than the
    task's current run is stale: ignored, and counted (:attr:`stale_events`).

    A worker lost while a task was started on it (TaskStarted for that run) counts against the
    task, not as an attempt: at ``worker_deaths`` such losses the job fails (:class:`~.decisions.EndJob`
    with ``deaths``; a task that kills its worker would kill them all). Tasks handed to the worker
    and not started do not count, nor do re-runs reset it. With ``suspects=True`` such tasks,
    and tasks that died with a worker, are suspects (:meth:`suspect`): the shell runs them next
    alone on their worker with a confirmed start, so that their next death is known to be their
    own, and it then counts the earlier ones too.
    """

    def __init__(self, tasks: Iterable[TaskSpec], workers: Iterable[WorkerName] = (), *,
                 concurrency: int = 1, prefetch: int = 0, attempts: int = 1, worker_deaths: int = 2,
                 suspects: bool = False) -> None:
        for name, value, low in (("concurrency", concurrency, 1), ("prefetch", prefetch, 0),
                                 ("attempts", attempts, 1), ("worker_deaths", worker_deaths, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        super().__init__(build_graph(list(tasks)), workers, concurrency=concurrency, prefetch=prefetch,
                         attempts=attempts, worker_deaths=worker_deaths, suspects=suspects)
        self._seq = 0  # events handled: the stimulus id of one that comes without one

    # -- public interface ---------------------------------------------------------------------------

    def start(self) -> list[Decision]:
        """Initial decisions (RunTask for what can run on the initial workers); stimulus id 0."""
        if not self._over:
            self._fill()
        return self._flush()

    def handle(self, *events: Event) -> list[Decision]:
        """Apply events in order; return the decisions they lead to, in order.

        Events are checked before any is applied: an unknown task id raises ValueError and
        leaves the state untouched. Slots are filled once, after the last event (those
        decisions name the last event as their stimulus). An event without a stimulus id gets
        the number of events handled so far, itself included.
        """
        if self._over:
            return []
        index = self._index
        for event in events:
            kind = type(event)
            if kind in TASK_EVENTS:
                if event.task_id not in index:  # type: ignore[union-attr]
                    raise ValueError(f"unknown task id {event.task_id!r}")  # type: ignore[union-attr]
                if kind is TaskDependenciesFailed:
                    self._check_failures(event)  # type: ignore[arg-type]
            elif kind not in _HANDLERS:
                raise TypeError(f"not a scheduler event: {event!r}")
        seq = self._seq
        for event in events:
            if self._over:
                break
            seq += 1
            stim = event.stimulus_id
            self._stim = seq if stim is None else stim
            _HANDLERS[type(event)](self, event)
        self._seq = seq
        if not self._over:
            self._fill()
        out, self._out = self._out, []
        return out

    @property
    def over(self) -> bool:
        """True once the job ended (the EndJob decision was made)."""
        return self._over

    @property
    def workers(self) -> list[WorkerName]:
        """Live workers, by name."""
        return sorted(self._workers)

    @property
    def stale_events(self) -> int:
        """Task events ignored because they named another worker or attempt than the task's run."""
        return self._n_stale

    def task_state(self, task_id: TaskId) -> TaskState:
        t = self._task(task_id)
        return TaskState(self._status[t])

    def state(self, task_id: TaskId) -> str:
        """The task's state by name (:class:`~.states.TaskState` in lower case), where an
        assigned task that reported its start is ``running``."""
        t = self._task(task_id)
        if self._status[t] == ASSIGNED and self._started[t]:
            return "running"
        return STATE_NAMES[self._status[t]]

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
                "abandoned": self._n_abandoned, "worker_deaths": self._n_deaths}

    def validate_state(self) -> None:
        """Assert the invariants (for tests: O(tasks + edges + queue entries))."""
        validate_state(self)

    # -- events ---------------------------------------------------------------------------------------

    def _task(self, task_id: TaskId) -> int:
        try:
            return self._index[task_id]
        except KeyError:
            raise ValueError(f"unknown task id {task_id!r}") from None

    def _check_failures(self, event: TaskDependenciesFailed) -> None:
        t = self._index[event.task_id]
        k = self._leader.get(t, t)  # (its dependents entries name its group's leader)
        dependents = self._dependents
        for holder, dep_ids in event.failures.items():
            for dep in dep_ids:
                if k not in dependents[self._task(dep)]:
                    raise ValueError(f"{dep!r} (on {holder!r}) is not a dependency "
                                     f"of {event.task_id!r}")

    def _current(self, event: TaskEvent) -> int | None:
        """The task's index if the event reports its current run, else None (a stale event)."""
        t = self._index[event.task_id]
        attempt = event.attempt
        if self._where[t] != event.worker or (attempt is not None and attempt != self._runs[t]):
            self._n_stale += 1
            return None
        return t

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
        if self._workers:
            self._lift_retry_bans()
        else:
            left = self._n - self._n_succeeded
            self._end(EndJob(JobOutcome.FAILED, None, None, f"every worker was lost (the last: {w.name!r}); "
                                                            f"{left} of {self._n} tasks never finished",
                             (), self._stim))

    def _count_deaths(self, died: list[int], name: WorkerName, requeue: list[int]) -> bool:
        """Count the loss of ``name`` against the tasks it was running (``died``, by rank). When
        one reaches the limit, end the job for the first such task (EndJob with its deaths): True."""
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
        if fatal is not None:
            for t in requeue:  # they went with the worker and will not run again
                self._set(t, LOST if self._succeeded[t] else CANCELLED)
            self._set(fatal, FAILED)
            task_id, workers = self._ids[fatal], deaths[fatal]
            self._end(EndJob(JobOutcome.FAILED, task_id, None,
                             f"task {task_id!r} was running on {len(workers)} worker(s) that died "
                             f"({', '.join(workers)}), the maximum (worker_deaths={limit})",
                             tuple(workers), self._stim))
        return fatal is not None

    def _on_worker_held(self, event: WorkerHeld) -> None:
        w = self._workers.get(event.worker)
        if w is not None and not w.held:
            w.held = True
            self._update_free(w)
            for t in sorted(w.unstarted, key=self._rank.__getitem__):
                self._take_back(t, None)

    def _on_worker_resumed(self, event: WorkerResumed) -> None:
        w = self._workers.get(event.worker)
        if w is not None and w.held:
            w.held = False
            self._update_free(w)

    def _on_task_started(self, event: TaskStarted) -> None:
        t = self._index[event.task_id]
        if self._where[t] != event.worker or (event.attempt is not None and event.attempt != self._runs[t]):
            self._n_stale += 1
        elif not self._started[t]:
            w = self._workers[event.worker]
            self._started[t] = 1
            w.started += 1
            w.unstarted.discard(t)
            if self._stealing_on:
                self._refresh_stealable(w)

    def _on_task_succeeded(self, event: TaskSucceeded) -> None:
        t = self._index[event.task_id]
        name = event.worker
        if self._where[t] != name or (event.attempt is not None and event.attempt != self._runs[t]):
            self._n_stale += 1
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
        self._out.append(_new_task_done(event.task_id, name, self._stim))
        missing = self._missing
        for k in self._dependents[t]:
            missing[k] -= 1
            if missing[k] == 0:  # k (and its group) have every input now
                group = self._members.get(k)
                if group is None:
                    if status[k] == WAITING:
                        self._make_ready(k)
                    continue
                holder = None
                for d in group:
                    if status[d] == WAITING:
                        if holder is None and self._data_locality[d] and len(self._deps[d]) > 2:
                            holder = self._data_holder(d)  # (once for the group)
                        self._make_ready(d, holder)
        if self._n_succeeded == self._n:
            self._end(EndJob(JobOutcome.DONE, stimulus_id=self._stim))

    def _on_task_failed(self, event: TaskFailed) -> None:
        t = self._current(event)
        if t is None:
            return
        self._unassign(t)  # (_requeue or _set(FAILED) sets its state)
        failures = self._failures[t] = self._failures.get(t, 0) + 1
        self._n_failed += 1
        if failures >= self._attempts or not event.retry:
            self._set(t, FAILED)
            why = f"the maximum (attempts={self._attempts})" if event.retry else "it cannot be retried"
            self._end(EndJob(JobOutcome.FAILED, event.task_id, event.error,
                             f"task {event.task_id!r} failed {failures} time(s), {why}: {event.error!r}",
                             (), self._stim))
            return
        self._out.append(RetryTask(event.task_id, event.worker, event.error, self._stim))
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
        self._unassign(t)  # (_requeue or _set(FAILED) sets its state)
        tries = self._depfails[t] = self._depfails.get(t, 0) + 1
        if tries > max(10, 5 * self._attempts):
            self._set(t, FAILED)
            what = "; ".join(f"{list(deps)!r} from {holder!r}" for holder, deps in event.failures.items())
            self._end(EndJob(JobOutcome.FAILED, event.task_id, None,
                             f"task {event.task_id!r} could not fetch its dependencies {tries} times "
                             f"(last: {what or 'none named'})", (), self._stim))
            return
        for holder, dep_ids in event.failures.items():
            for dep in dep_ids:
                d = self._index[dep]
                if self._status[d] == DONE and self._location[d] == holder:
                    self._lose_output(d)
        self._requeue(t)  # (which re-runs the outputs just lost: they are all dependencies of t)

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
        self._unassign(t)  # (_requeue or _set(FAILED) sets its state)
        self._runs[t] -= 1  # a run taken back before it started is not an attempt
        self._n_taken_back += 1
        self._requeue(t)
        if (thief is not None and self._status[t] == READY and thief in self._free
                and not self._forbidden(t, thief)):
            self._assign(t, thief)

    def _on_task_abandoned(self, event: TaskAbandoned) -> None:
        t = self._current(event)
        if t is None:
            return
        self._unassign(t)  # (_requeue or _set(FAILED) sets its state)
        self._n_abandoned += 1
        self._requeue(t)

    def _on_cancel_job(self, event: CancelJob) -> None:
        self._end(EndJob(JobOutcome.CANCELLED, stimulus_id=self._stim))


_HANDLERS: dict[type, Callable[[Scheduler, Any], None]] = {
    WorkerAdded: Scheduler._on_worker_added, WorkerLost: Scheduler._on_worker_lost,
    WorkerHeld: Scheduler._on_worker_held, WorkerResumed: Scheduler._on_worker_resumed,
    TaskStarted: Scheduler._on_task_started, TaskSucceeded: Scheduler._on_task_succeeded,
    TaskFailed: Scheduler._on_task_failed, TaskDependenciesFailed: Scheduler._on_dependencies_failed,
    TaskAbandoned: Scheduler._on_task_abandoned, TaskTakenBack: Scheduler._on_taken_back,
    CancelJob: Scheduler._on_cancel_job}
