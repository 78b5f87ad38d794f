"""The scheduler's state and how it moves: queueing ready tasks, placing them on workers, taking
back prefetched ones, losing outputs, and filling free slots. :class:`~.machine.Scheduler`
builds on it with the public interface and the event handlers.

The hot path (a task starts, succeeds, and its slot goes to the next one) avoids work that
cannot change a decision: the take-back queue is only kept while some worker is idle and
dropped after a stretch of fills without one (a rebuild costs O(prefetched tasks · log n),
paid for by that stretch, so the cost per decision stays O(log n) amortized); a task that
becomes ready and prefers some workers is staged until the fill, which places it on one of them
if it can, so that it never enters the queues; filling visits only workers with free slots
(kept in a set), and the decisions are built without the dataclasses' slow ``__init__``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from itertools import compress
from operator import not_
from typing import cast

from .decisions import (
    CancelTask,
    Decision,
    EndJob,
    JobOutcome,
    MarkOutputLost,
    RunTask,
    TakeBack,
    fast_constructor,
)
from .events import WorkerName
from .graph import Graph
from .queues import RankQueue, WorkerState
from .states import ASSIGNED, CANCELLED, LOST, MUST_RUN, READY, STATE_NAMES, WAITING

_new_run_task = fast_constructor(RunTask)
_new_take_back = fast_constructor(TakeBack)


class Placement:
    """Per-task state in lists indexed by task number, per-worker state, and the queues.

    A locality queue orders by locality (highest first), then rank, with one int per entry:
    ``rank - locality * n`` for ``n`` tasks, so that ``rank == key % n``.
    """

    _STEAL_PATIENCE = 16  # extra quiet fills before the take-back queue is dropped (see _fill)

    def __init__(self, graph: Graph, workers: Iterable[WorkerName], *, concurrency: int, prefetch: int,
                 attempts: int, worker_deaths: int, suspects: bool) -> None:
        self._concurrency, self._cap, self._attempts = concurrency, concurrency + prefetch, attempts
        self._worker_deaths = worker_deaths
        g = graph
        n = self._n = g.n
        self._ids, self._index, self._deps, self._dependents = g.ids, g.index, g.deps, g.dependents
        self._members, self._leader = g.members, g.leader
        self._rank, self._by_rank = g.rank, g.by_rank
        self._static_prefs, self._static_banned = g.static_prefs, g.static_banned
        self._pref_index, self._ban_index, self._data_locality = g.pref_index, g.ban_index, g.data_locality
        # per-task state
        self._status: list[int] = []  # (made below)
        self._counts = [0] * len(STATE_NAMES)
        self._counts[WAITING] = n
        no_deps = not any(g.deps)  # (every task a root); per leader (see graph): inputs not available
        self._missing = [0] * n if no_deps else list(map(len, g.deps))
        # outputs lost so far, and per group the count when none of its dependencies was LOST
        # (as _requeue saw): until another output is lost, requeueing its tasks needs no look
        self._loss_epoch = 0
        self._clean: dict[int, int] = {}
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
        self._n_deaths = self._n_stale = self._n_abandoned = 0
        # task -> workers lost holding it when no start on them was known (see Scheduler._on_worker_lost)
        self._suspects: dict[int, list[WorkerName]] = {}
        self._track_suspects = suspects  # the shell confirms the starts of suspects (see suspect())
        # queues and workers
        self._workers: dict[WorkerName, WorkerState] = {}
        self._free: set[WorkerName] = set()    # live, not held, below concurrency + prefetch
        self._hungry: set[WorkerName] = set()  # live, not held, assigned + stealing below concurrency
        # The take-back queue is only kept while some worker is hungry (and for a while after):
        # when slots fill from the ready queue, nobody takes back and nothing needs to be queued.
        self._steal = RankQueue()
        self._stealing_on = False
        self._steal_quiet = 0  # fills in a row without a hungry worker while the queue is kept
        self._staged: set[int] = set()  # became ready since the last fill and prefer some worker
        self._out: list[Decision] = []
        self._over = False
        self._stim: Hashable = 0  # the stimulus the decisions being made answer (see handle())
        # every root is ready, those with a static locality go the long way (C loops: 10^7 tasks)
        special = self._static_prefs.keys() | self._static_banned.keys()
        self._status = [READY] * n if no_deps else list(map((WAITING, READY).__getitem__, map(not_, g.deps)))
        for i in special:
            self._status[i] = WAITING
        # the ranks of the READY (1) tasks, not WAITING (0): all when every task is a plain root
        plain = self._rank if no_deps and not special else list(compress(self._rank, self._status))
        self._counts[WAITING] -= len(plain)
        self._counts[READY] += len(plain)
        self._ready = RankQueue(plain)
        for w in workers:
            if w not in self._workers:
                self._add_worker(w)
        for i in sorted(special):
            if not self._deps[i]:
                self._make_ready(i)

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

    def _holder(self, t: int) -> WorkerName:
        """The worker an assigned task is on."""
        return cast(WorkerName, self._where[t])

    def _add_worker(self, name: WorkerName) -> None:
        w = self._workers[name] = WorkerState(name)
        for t in set(self._ban_index.get(name, ())) | self._retry_index.get(name, set()):
            if self._status[t] == READY:
                if t not in self._staged:  # (a staged task gets its bans when it is queued)
                    self._ready.ban(self._rank[t], name)
            elif self._status[t] == ASSIGNED and t in self._workers[self._holder(t)].stealable:
                self._steal.ban(self._rank[t], name)
        for t, loc in self._pref_index.get(name, ()):
            if self._status[t] == READY and not self._forbidden(t, name):
                self._prefs.setdefault(t, {})[name] = loc
                if t not in self._staged:
                    w.local.add(self._rank[t] - loc * self._n)
        self._update_free(w)

    def _make_ready(self, t: int, holder: WorkerName | None = None) -> None:
        """A task whose dependencies' outputs are all available: queue it, or when it prefers
        some workers, stage it for the next fill, which places it on one of them if it can (then
        it never touches the queues) and queues it otherwise. ``holder``: its
        :meth:`_data_holder` when the caller knows it (the same for the tasks of a group)."""
        counts, status = self._counts, self._status
        counts[status[t]] -= 1
        counts[READY] += 1
        status[t] = READY
        prefs = None
        static = self._static_prefs.get(t)
        if static:
            prefs = {w: loc for w, loc in static if w in self._workers and not self._forbidden(t, w)}
        if self._data_locality[t] and self._deps[t]:
            if holder is None:
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
        # (the outputs of a ready task's dependencies are all available)
        deps, location, nbytes = self._deps[t], cast('list[WorkerName]', self._location), self._nbytes
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
        self._out.append(_new_run_task(self._ids[t], name, runs, self._stim))
        if len(assigned) >= self._cap:
            self._free.discard(name)
        if len(assigned) + len(w.stealing) >= self._concurrency:
            self._hungry.discard(name)
        if self._stealing_on:
            self._refresh_stealable(w)

    def _unassign(self, t: int) -> None:
        """Take the task off its worker (the caller sets the new status)."""
        name: WorkerName = self._where[t]  # type: ignore[assignment]  # (assigned)
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
        w = self._workers[self._where[t]]  # type: ignore[index]  # (assigned)
        self._started[t] = 1
        w.started += 1
        w.unstarted.discard(t)
        if self._stealing_on:
            self._refresh_stealable(w)

    def _take_back(self, t: int, thief: WorkerName | None) -> None:
        victim = self._workers[self._holder(t)]
        victim.unstarted.discard(t)
        self._pending[t] = thief
        if thief is not None:
            self._workers[thief].stealing.add(t)
            self._update_free(self._workers[thief])
        self._out.append(_new_take_back(self._ids[t], victim.name, self._stim))
        if self._stealing_on:
            self._refresh_stealable(victim)

    def _refresh_stealable(self, w: WorkerState) -> None:
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
        self._steal = RankQueue()
        for w in self._workers.values():
            if w.stealable:
                w.stealable = set()

    def _update_free(self, w: WorkerState) -> None:
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
        holder = cast(WorkerName, self._location[t])  # (a DONE task's)
        self._set(t, LOST)
        self._loss_epoch += 1
        self._location[t] = None
        self._lost_from[t] = holder
        if holder in self._workers:
            self._workers[holder].outputs.discard(t)
        missing, status = self._missing, self._status
        for k in self._dependents[t]:
            missing[k] += 1
            if missing[k] == 1:  # (a ready task has every input: only those of this group may be)
                for d in self._members.get(k, (k,)):
                    if status[d] == READY:
                        self._dequeue(d)
                        self._set(d, WAITING)

    def _needed(self, t: int) -> bool:
        status, members = self._status, self._members
        return any(status[d] in MUST_RUN for k in self._dependents[t] for d in members.get(k, (k,)))

    def _rerun_needed(self, lost: list[int]) -> None:
        for t in lost:
            if self._status[t] == LOST and self._needed(t):
                self._out.append(MarkOutputLost(self._ids[t], self._lost_from[t], self._stim))
                self._n_lost += 1
                self._requeue(t)

    def _requeue(self, t: int) -> None:
        """Put a task that must (re)run back in line, re-running the lost outputs it needs."""
        stack = [t]
        leader, clean, epoch = self._leader, self._clean, self._loss_epoch
        while stack:
            x = stack.pop()
            k = leader.get(x, x)
            if self._missing[k] == 0:
                self._make_ready(x)
                continue
            self._set(x, WAITING)
            if clean.get(k) == epoch:  # no output was lost since its group was seen to
                continue
            for d in self._deps[x]:
                if self._status[d] == LOST:
                    self._out.append(MarkOutputLost(self._ids[d], self._lost_from[d], self._stim))
                    self._n_lost += 1
                    self._set(d, WAITING)
                    stack.append(d)
            clean[k] = epoch

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

    def _end(self, decision: EndJob) -> None:
        """Cancel whatever is still assigned, then emit the job's final decision."""
        assigned = sorted((t for w in self._workers.values() for t in w.assigned), key=self._rank.__getitem__)
        for t in assigned:
            name = self._holder(t)
            self._unassign(t)
            self._set(t, LOST if self._succeeded[t] else CANCELLED)
            self._out.append(CancelTask(self._ids[t], name, self._stim))
        self._out.append(decision)
        self._over = True

    # -- filling slots -----------------------------------------------------------------------------------

    def _fill(self) -> None:
        """Give work to workers with free slots: preferred placements of newly ready tasks first,
        then every free worker pulls, then idle workers take back prefetched tasks."""
        if self._n_succeeded == self._n:
            self._end(EndJob(JobOutcome.DONE, stimulus_id=self._stim))
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
                        # the most preferred free worker; among equals, one with an idle run slot
                        # before one with room to prefetch only, then the least loaded, then by name
                        best_key = None
                        for name, score in prefs.items():
                            if name in free:
                                load = len(self._workers[name].assigned)
                                key = (-score, load >= self._concurrency, load, name)
                                if best_key is None or key < best_key:
                                    best, best_key = name, key
                if best is None:
                    staged.remove(t)
                    self._enqueue(t)
                else:
                    self._assign(t, best)
        counts = self._counts
        if free and counts[READY]:  # run slots everywhere first, then prefetch slots
            if len(free) == 1:  # (one worker: both passes come down to one)
                names, limits = list(free), [self._cap]
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

    def _flush(self) -> list[Decision]:
        out, self._out = self._out, []
        return out

