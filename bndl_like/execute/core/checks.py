"""The scheduler's invariants, for tests: :meth:`Scheduler.validate_state
<bndl_like.execute.core.machine.Scheduler.validate_state>` calls :func:`validate_state`."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .events import WorkerName
from .states import ASSIGNED, CANCELLED, DONE, FAILED, LOST, MUST_RUN, READY, STATE_NAMES, WAITING

if TYPE_CHECKING:
    from .machine import Scheduler


def validate_state(sched: Scheduler) -> None:
    """Assert the invariants of ``sched``: O(tasks + edges + queue entries)."""
    status, rank, n = sched._status, sched._rank, sched._n
    counted = Counter(status)
    assert [counted[s] for s in range(len(STATE_NAMES))] == sched._counts, "status counts"
    assert sched._n_succeeded == sum(sched._succeeded), "succeeded count"
    deaths, limit = sched._deaths, sched._worker_deaths
    assert sched._n_deaths == sum(map(len, deaths.values())), "worker deaths count"
    assert all(0 <= t < n and workers for t, workers in deaths.items()), "worker deaths entries"
    if sched._over:
        assert not any(w.assigned for w in sched._workers.values()) and not sched._pending
        # a job ended by WorkerDied failed one task (the first of those that reached the limit at once)
        at_limit = [t for t, workers in deaths.items() if len(workers) >= limit]
        assert not at_limit or sum(status[t] == FAILED for t in at_limit) == 1, "worker deaths at the end"
        return
    assert all(len(workers) < limit for workers in deaths.values()), "a task died too often"
    assert sched._n_succeeded < n, "every task succeeded but the job is not over"
    assert not sched._staged, "staged tasks left after filling"
    ready_banned: dict[WorkerName, list[int]] = {}
    outputs: dict[WorkerName, set[int]] = {}
    missing, deps_of, location, succeeded = sched._missing, sched._deps, sched._location, sched._succeeded
    leader, members = sched._leader, sched._members
    assert all(k == m[0] and all(leader[t] == k for t in m[1:]) for k, m in members.items())
    assert all(t in members[k] for t, k in leader.items()), "group leaders"
    where, started, pending = sched._where, sched._started, sched._pending
    workers, prefs_of = sched._workers, sched._prefs
    forbidden, retry_banned = sched._forbidden, sched._retry_banned
    for t in range(n):
        s = status[t]
        deps = deps_of[t]
        dep_status = [status[d] for d in deps]
        assert missing[leader.get(t, t)] == len(deps) - dep_status.count(DONE), f"missing {t}"
        holder = location[t]
        assert (holder is not None) == (s == DONE), f"location {t}"
        assert s not in (DONE, LOST) or succeeded[t], f"done without success {t}"
        assert s not in (FAILED, CANCELLED), f"{STATE_NAMES[s]} task in a running job {t}"
        if holder is not None:
            outputs.setdefault(holder, set()).add(t)
        if s in MUST_RUN:  # every dependency is available or on its way (lineage)
            assert LOST not in dep_status, f"lost dependency not re-run {t}"
        assert (s == WAITING) == (missing[leader.get(t, t)] > 0 and s in (WAITING, READY)), f"waiting {t}"
        if s == ASSIGNED:
            on = where[t]
            assert on is not None and on in workers, f"assigned to no live worker {t}"
            assert t in workers[on].assigned, f"assignment {t}"
            assert not forbidden(t, on), f"assigned to a forbidden worker {t}"
            assert all(succeeded[d] for d in deps), f"ran before dependencies {t}"
        else:
            assert where[t] is None and not started[t] and t not in pending
        if s == READY:
            for w in sched._banned_live(t):
                ready_banned.setdefault(w, []).append(rank[t])
            prefs = prefs_of.get(t, {})
            assert all(prefs.get(w, 0) >= loc for w, loc in sched._static_prefs.get(t, ())
                       if w in workers and not forbidden(t, w)), f"static locality {t}"
        if s in (WAITING, READY) and t in retry_banned and any(w in workers for w in retry_banned[t]):
            assert any(not forbidden(t, w) for w in workers), f"retry bans block {t}"
        assert (t in prefs_of) <= (s == READY), f"prefs of a task not ready {t}"
    assert list(sched._ready.items) == sorted(rank[t] for t in range(n) if status[t] == READY)
    assert {w: list(b) for w, b in sched._ready.banned.items() if b} == {
        w: sorted(b) for w, b in ready_banned.items()}, "ready queue bans"
    local: dict[WorkerName, list[int]] = {}
    for t, prefs in sched._prefs.items():
        for w, loc in prefs.items():
            assert loc > 0 and not sched._forbidden(t, w), f"locality entry {t} {w}"
            local.setdefault(w, []).append(rank[t] - loc * n)
    steal_banned: dict[WorkerName, list[int]] = {}
    stealable = []
    for name, ws in sched._workers.items():
        assert len(ws.assigned) <= sched._cap, f"{name} over its slots"
        assert all(sched._where[t] == name for t in ws.assigned)
        assert ws.started == sum(sched._started[t] for t in ws.assigned)
        assert ws.unstarted == {t for t in ws.assigned if not sched._started[t] and t not in sched._pending}
        spare = len(ws.unstarted) - max(0, sched._concurrency - ws.started)
        if sched._stealing_on:
            assert ws.stealable == (ws.unstarted if spare > 0 else set()), f"stealable on {name}"
        else:
            assert not ws.stealable, f"stealable on {name} while no take-back queue is kept"
        assert list(ws.local) == sorted(local.get(name, ())), f"locality queue of {name}"
        assert ws.outputs == outputs.pop(name, set()), f"outputs on {name}"
        assert all(sched._pending.get(t) == name and sched._where[t] != name for t in ws.stealing)
        assert (name in sched._free) == (not ws.held and len(ws.assigned) < sched._cap), f"free {name}"
        hungry = not ws.held and len(ws.assigned) + len(ws.stealing) < sched._concurrency
        assert (name in sched._hungry) == hungry, f"hungry {name}"
        for t in ws.stealable:
            stealable.append(rank[t])
            for x in sched._banned_live(t):
                steal_banned.setdefault(x, []).append(rank[t])
        if name in sched._free:  # filling reached a fixed point
            # no ready task it may run: none prefers it, none in the ready queue it is not banned from
            assert not ws.local and sched._ready.first_for(name) is None, \
                f"{name} has a free slot and a ready task"
            if hungry:  # (then the take-back queue is kept)
                assert sched._stealing_on and sched._steal.first_for(name) is None, \
                    f"{name} idle while it could take back"
    assert sum(len(w.assigned) for w in sched._workers.values()) == sched._counts[ASSIGNED]
    assert not outputs and set(local) <= set(sched._workers) and set(sched._free) <= set(sched._workers)
    assert sched._hungry <= sched._free
    assert list(sched._steal.items) == sorted(stealable), "take-back queue"
    assert {w: list(b) for w, b in sched._steal.banned.items() if b} == {
        w: sorted(b) for w, b in steal_banned.items()}, "take-back queue bans"
    for t, thief in sched._pending.items():
        assert thief is None or t in sched._workers[thief].stealing
    for w, tasks in sched._retry_index.items():
        assert all(w in sched._retry_banned.get(t, ()) and status[t] in MUST_RUN for t in tasks)
    assert sum(map(len, sched._retry_index.values())) == sum(map(len, sched._retry_banned.values()))
