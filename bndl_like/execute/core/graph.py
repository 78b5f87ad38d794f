"""The job's task graph as the scheduler keeps it: tasks numbered in spec order, dependencies
as tuples of numbers, ranks, and the static locality (sparse).

Tasks that name the same (two or more) dependencies -- the consumers of a shuffle, say -- form
a *group*, known by its first task, the leader: they share one tuple of dependencies, and a
task's dependents name the leaders of the groups. What the scheduler counts per dependency
edge (outputs still missing, where the inputs lie) it counts once per group, so a shuffle of p
producers and c consumers costs p x groups, not p x c. A task alone is its own leader and
costs nothing more; only groups of two or more are written down (``members``, ``leader``)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress, repeat
from operator import attrgetter, itemgetter, not_

from .events import TaskId, TaskSpec, WorkerName


class Graph:
    """Built once from the specs (:func:`build_graph`); never changes afterwards."""

    __slots__ = ("n", "ids", "index", "deps", "members", "leader", "dependents", "rank", "by_rank",
                 "static_prefs", "static_banned", "pref_index", "ban_index", "data_locality")

    def __init__(self, ids: list[TaskId], index: dict[TaskId, int]) -> None:
        self.n = len(ids)
        self.ids = ids
        self.index = index
        self.deps: list[tuple[int, ...]] = [()] * self.n         # deduplicated, in the order given
        self.members: dict[int, tuple[int, ...]] = {}            # leader -> its group's tasks (2 or more)
        self.leader: dict[int, int] = {}                         # task of a group -> its leader (not itself)
        self.dependents: list[tuple[int, ...]] = [()] * self.n   # task -> the leaders depending on it
        self.rank: list[int] = []       # task -> rank, by (priority, spec order)
        self.by_rank: list[int] = []    # rank -> task
        # static locality, sparse: only tasks that name a worker appear
        self.static_prefs: dict[int, tuple[tuple[WorkerName, int], ...]] = {}
        self.static_banned: dict[int, frozenset[WorkerName]] = {}
        self.pref_index: dict[WorkerName, list[tuple[int, int]]] = {}
        self.ban_index: dict[WorkerName, list[int]] = {}
        self.data_locality = bytearray()


def build_graph(specs: Sequence[TaskSpec]) -> Graph:
    """Number, link and rank the tasks; ValueError or TypeError for specs that make no job."""
    n = len(specs)
    index: dict[TaskId, int] = {}
    ids: list[TaskId] = []
    # the task numbers, made once: the index, the ranks and the queues refer to these int objects
    numbers = list(range(n))
    if all(map(isinstance, specs, repeat(TaskSpec))):
        ids = list(map(attrgetter("task_id"), specs))
        index.update(zip(ids, numbers, strict=True))
    if len(index) != n:
        _spec_error(specs)
    g = Graph(ids, index)
    # few objects per task, as the cyclic garbage collector walks every one of them
    dependents: dict[int, list[int]] = {}
    deps_of, leader = g.deps, g.leader
    members: dict[int, list[int]] = {}
    by_named: dict[tuple[TaskId, ...], int] = {}  # dependencies as named (two or more) -> their leader
    get = index.__getitem__
    ordered = True  # every task depends on earlier ones only: no cycle
    # (a job without any dependency, or locality, skips the lists below: one pass that stops early)
    named_all = list(map(attrgetter("dependencies"), specs)) \
        if any(map(attrgetter("dependencies"), specs)) else []
    for i in compress(range(n), named_all):  # (the tasks with dependencies only: C loops for the rest)
        named = named_all[i]
        if type(named) is not tuple:
            named = tuple(named)
        if len(named) > 1:
            k = by_named.get(named)
            if k is not None:  # (its leader came earlier: no new edge, no new cycle)
                if k in members:
                    members[k].append(i)
                else:
                    members[k] = [k, i]
                leader[i] = k
                deps_of[i] = deps_of[k]
                continue
            by_named[named] = i
        try:
            deps = tuple(map(get, named))
        except KeyError:
            unknown = next(d for d in dict.fromkeys(named) if d not in index)
            raise ValueError(f"task {specs[i].task_id!r} depends on unknown task {unknown!r}") from None
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
    del by_named
    g.members = {k: tuple(m) for k, m in members.items()}
    for d, after in dependents.items():
        g.dependents[d] = tuple(after)
    if not ordered:
        _check_acyclic(g)
    _rank_tasks(g, specs, numbers)
    localities = list(map(attrgetter("locality"), specs)) if any(map(attrgetter("locality"), specs)) else []
    for i in compress(range(n), localities):
        loc = localities[i]
        prefs = tuple((w, int(v)) for w, v in loc.items() if v > 0)
        banned = frozenset(w for w, v in loc.items() if v < 0)
        if prefs:
            g.static_prefs[i] = prefs
            for w, v in prefs:
                g.pref_index.setdefault(w, []).append((i, v))
        if banned:
            g.static_banned[i] = banned
            for w in banned:
                g.ban_index.setdefault(w, []).append(i)
    g.data_locality = bytearray(b"\x01") * n if all(map(attrgetter("data_locality"), specs)) \
        else bytearray(map(bool, map(attrgetter("data_locality"), specs)))
    return g


def _spec_error(specs: Sequence[object]) -> None:
    """Raise the error for the first spec that is not a TaskSpec or repeats a task id."""
    seen = set()
    for spec in specs:
        if not isinstance(spec, TaskSpec):
            raise TypeError(f"expected a TaskSpec, got {spec!r}")
        if spec.task_id in seen:
            raise ValueError(f"duplicate task id {spec.task_id!r}")
        seen.add(spec.task_id)
    raise AssertionError("unreachable")


def _rank_tasks(g: Graph, specs: Sequence[TaskSpec], numbers: list[int]) -> None:
    """Rank by (priority, spec order)."""
    n = g.n
    priorities = list(map(attrgetter("priority"), specs))
    if not n or priorities.count(priorities[0]) == n:  # all alike: spec order; one list for both
        g.by_rank = g.rank = numbers
        return
    try:
        # a stable sort on the priorities alone gives the order of the (priority, index) pairs
        # without building them; they are the fallback for priorities that are equal but do
        # not order (None, say)
        g.by_rank = sorted(numbers, key=priorities.__getitem__)
    except TypeError:
        try:
            g.by_rank = list(map(itemgetter(1), sorted(zip(priorities, numbers, strict=True))))
        except TypeError as exc:
            raise ValueError(f"task priorities must be mutually comparable: {exc}") from None
    g.rank = sorted(numbers, key=g.by_rank.__getitem__)  # the inverse permutation


def _check_acyclic(g: Graph) -> None:
    """Raise ValueError naming a cycle if there is one."""
    waiting = list(map(len, g.deps))  # per leader: dependencies not yet seen
    stack = list(compress(range(g.n), map(not_, waiting)))
    seen = 0
    dependents, members = g.dependents, g.members
    while stack:
        seen += 1
        for k in dependents[stack.pop()]:
            waiting[k] -= 1
            if waiting[k] == 0:
                stack.extend(members.get(k, (k,)))
    if seen == g.n:
        return
    # every task left waits on a task left: follow such dependencies until one repeats
    lead = g.leader
    pending = [waiting[lead.get(i, i)] for i in range(g.n)]
    i = next(i for i, c in enumerate(pending) if c)
    path: list[int] = []
    position: dict[int, int] = {}
    while i not in position:
        position[i] = len(path)
        path.append(i)
        i = next(d for d in g.deps[i] if pending[d])
    cycle = " -> ".join(repr(g.ids[k]) for k in path[position[i]:] + [i])
    raise ValueError(f"dependency cycle (-> means 'depends on'): {cycle}")
