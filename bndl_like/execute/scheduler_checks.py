"""Invariant checks for the scheduler, for tests: :meth:`Scheduler.validate_state
<bndl_like.execute.scheduler.Scheduler.validate_state>` calls :func:`validate_state`.

Kept apart so that ``scheduler.py`` holds the state machine only.
"""

from __future__ import annotations

from .scheduler import (
    _MUST_RUN,
    _STATE_NAMES,
    ASSIGNED,
    CANCELLED,
    DONE,
    FAILED,
    LOST,
    READY,
    WAITING,
    Scheduler,
    WorkerName,
)


def validate_state(sched: Scheduler) -> None:
    """Assert the invariants of ``sched``: O(tasks + edges + queue entries)."""
    status, rank, n = sched._status, sched._rank, sched._n
    assert [status.count(s) for s in range(len(_STATE_NAMES))] == sched._counts, "status counts"
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
    for t in range(n):
        s = status[t]
        assert sched._missing[t] == sum(status[d] != DONE for d in sched._deps[t]), f"missing {t}"
        assert (sched._location[t] is not None) == (s == DONE), f"location {t}"
        assert s not in (DONE, LOST) or sched._succeeded[t], f"done without success {t}"
        assert s not in (FAILED, CANCELLED), f"{_STATE_NAMES[s]} task in a running job {t}"
        if s == DONE:
            outputs.setdefault(sched._location[t], set()).add(t)
        if s in _MUST_RUN:  # every dependency is available or on its way (lineage)
            assert all(status[d] != LOST for d in sched._deps[t]), f"lost dependency not re-run {t}"
        assert (s == WAITING) == (sched._missing[t] > 0 and s in (WAITING, READY)), f"waiting {t}"
        if s == ASSIGNED:
            w = sched._where[t]
            assert w in sched._workers and t in sched._workers[w].assigned, f"assignment {t}"
            assert not sched._forbidden(t, w), f"assigned to a forbidden worker {t}"
            assert all(sched._succeeded[d] for d in sched._deps[t]), f"ran before dependencies {t}"
        else:
            assert sched._where[t] is None and not sched._started[t] and t not in sched._pending
        if s == READY:
            for w in sched._banned_live(t):
                ready_banned.setdefault(w, []).append(rank[t])
            prefs = sched._prefs.get(t, {})
            assert all(prefs.get(w, 0) >= loc for w, loc in sched._static_prefs.get(t, ())
                       if w in sched._workers and not sched._forbidden(t, w)), f"static locality {t}"
        if s in (WAITING, READY) and any(w in sched._workers for w in sched._retry_banned.get(t, ())):
            assert any(not sched._forbidden(t, w) for w in sched._workers), f"retry bans block {t}"
        assert (t in sched._prefs) <= (s == READY), f"prefs of a task not ready {t}"
    assert list(sched._ready.items) == sorted(rank[t] for t in range(n) if status[t] == READY)
    assert {w: list(b) for w, b in sched._ready.banned.items() if b} == {
        w: sorted(b) for w, b in ready_banned.items()}, "ready queue bans"
    local: dict[WorkerName, list] = {}
    for t, prefs in sched._prefs.items():
        for w, loc in prefs.items():
            assert loc > 0 and not sched._forbidden(t, w), f"locality entry {t} {w}"
            local.setdefault(w, []).append(rank[t] - loc * n)
    steal_banned: dict[WorkerName, list[int]] = {}
    stealable = []
    for name, w in sched._workers.items():
        assert len(w.assigned) <= sched._cap, f"{name} over its slots"
        assert all(sched._where[t] == name for t in w.assigned)
        assert w.started == sum(sched._started[t] for t in w.assigned)
        assert w.unstarted == {t for t in w.assigned if not sched._started[t] and t not in sched._pending}
        spare = len(w.unstarted) - max(0, sched._concurrency - w.started)
        if sched._stealing_on:
            assert w.stealable == (w.unstarted if spare > 0 else set()), f"stealable on {name}"
        else:
            assert not w.stealable, f"stealable on {name} while no take-back queue is kept"
        assert list(w.local) == sorted(local.get(name, ())), f"locality queue of {name}"
        assert w.outputs == outputs.pop(name, set()), f"outputs on {name}"
        assert all(sched._pending.get(t) == name and sched._where[t] != name for t in w.stealing)
        assert (name in sched._free) == (not w.held and len(w.assigned) < sched._cap), f"free {name}"
        hungry = not w.held and len(w.assigned) + len(w.stealing) < sched._concurrency
        assert (name in sched._hungry) == hungry, f"hungry {name}"
        for t in w.stealable:
            stealable.append(rank[t])
            for b in sched._banned_live(t):
                steal_banned.setdefault(b, []).append(rank[t])
        if name in sched._free:  # filling reached a fixed point
            assert sched._next_for(w) is None, f"{name} has a free slot and a ready task"
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
        assert all(w in sched._retry_banned.get(t, ()) and status[t] in _MUST_RUN for t in tasks)
    assert sum(map(len, sched._retry_index.values())) == sum(map(len, sched._retry_banned.values()))
