"""Tasks and jobs as the driver sees them."""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from .errors import JobCancelled, TaskCancelled
from .hooks import Hooks

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
_job_ids = itertools.count(1)


class _NoResult:
    """Stands in for a result the driver does not hold; ``Task.result()`` raises with its text."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"<{self.text}>"


# the driver holds a result only until execute() yields it
HANDED_OUT = _NoResult("handed out by execute() and not kept by the driver; keep the value execute() "
                       "yielded")
# the job ended before its turn came (a failed or cancelled job)
NOT_HANDED_OUT = _NoResult("not handed out before the job ended; the driver keeps no result after a job")
# execute(job, results=...) left it on the worker
NOT_FETCHED = _NoResult("not brought to the driver: execute(job, results=...) did not ask for it")


class Task:
    """A unit of work with dependencies; subclasses say how it executes.

    ``priority``: lower runs first; by default the order of the task ids.
    """

    __slots__ = ("ctx", "id", "priority", "_name", "desc", "group", "dependencies", "dependents",
                 "state", "executed_on", "_result", "_exception", "_listeners", "started_at",
                 "stopped_at", "attempts")

    def __init__(self, ctx, task_id: Hashable, *, priority=None, name: str | None = None,
                 desc: str | None = None, group: Any = None):
        try:
            hash(task_id)
        except TypeError:
            raise TypeError(f"task_id must be hashable, not {type(task_id).__name__}") from None
        self.ctx = ctx
        self.id = task_id
        self.priority = priority
        self._name = name
        self.desc = desc
        self.group = group
        # tuples until the first edge: most tasks of a large job have few or none
        self.dependencies: list[Task] | tuple = ()
        self.dependents: list[Task] | tuple = ()
        self.state = PENDING
        self.executed_on: list[str] = []
        self._result = None
        self._exception: BaseException | None = None
        self._listeners: list | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.attempts = 0

    @property
    def name(self) -> str:
        return self._name if self._name is not None else str(self.id)

    @name.setter
    def name(self, value: str | None) -> None:
        self._name = value

    # -- what subclasses provide ----------------------------------------------------------

    async def execute(self, scheduler, worker) -> Any:
        """Run the task on ``worker`` (a worker peer) and return its result."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it executes")

    def locality(self, workers) -> Iterable[tuple]:
        """``(worker, locality)`` pairs: -1 forbidden, 0 indifferent, 1+ preferred."""
        return ()

    # -- dependencies -------------------------------------------------------------------------

    def add_dependency(self, task: Task) -> None:
        if not isinstance(task, Task):
            raise TypeError(f"a dependency must be a Task, not {type(task).__name__}")
        if task is self:
            raise ValueError(f"task {self.id!r} cannot depend on itself")
        if task not in self.dependencies:
            if type(self.dependencies) is tuple:
                self.dependencies = list(self.dependencies)
            if type(task.dependents) is tuple:
                task.dependents = list(task.dependents)
            self.dependencies.append(task)
            task.dependents.append(self)

    # -- state ----------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.state != PENDING or bool(self.executed_on)

    @property
    def pending(self) -> bool:
        return self.state == PENDING

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def done(self) -> bool:
        return self.state in (DONE, FAILED, CANCELLED)

    @property
    def succeeded(self) -> bool:
        return self.state == DONE

    @property
    def failed(self) -> bool:
        return self.state == FAILED

    @property
    def cancelled(self) -> bool:
        return self.state == CANCELLED

    def executed_on_last(self) -> str | None:
        return self.executed_on[-1] if self.executed_on else None

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.stopped_at or time.time()) - self.started_at

    def set_executing(self, worker) -> None:
        name = getattr(worker, "name", worker)
        self.executed_on.append(name)
        self.state = RUNNING
        self.attempts += 1
        self.started_at = time.time()
        self.stopped_at = None
        self._exception = None
        if self._listeners:
            self._notify(0)

    def mark_done(self, result=None) -> None:
        self.state = DONE
        self._result = result
        self._exception = None
        self.stopped_at = time.time()
        if self._listeners:
            self._notify(1)

    def mark_failed(self, exc: BaseException) -> None:
        self.state = FAILED
        self._exception = exc
        self.stopped_at = time.time()
        self._notify(1)

    def mark_pending(self) -> None:
        """Back to pending (to run again), keeping the history of where it ran."""
        self.state = PENDING

    def cancel(self) -> None:
        if not self.done:
            self.state = CANCELLED
            self._exception = TaskCancelled(f"task {self.id!r} was cancelled")
            self.stopped_at = time.time()
            self._notify(1)

    def result(self) -> Any:
        """The result while the driver holds it (see ``ExecutionContext.execute``)."""
        if self.state == DONE:
            result = self._result
            if type(result) is _NoResult:
                raise RuntimeError(f"the result of task {self.id!r} was {result.text}")
            return result
        if self._exception is not None and self.state in (FAILED, CANCELLED):
            raise self._exception
        raise RuntimeError(f"task {self.id!r} has no result yet (state {self.state})")

    def exception(self) -> BaseException | None:
        return self._exception

    def add_listener(self, started: Callable | None = None, done: Callable | None = None) -> None:
        if self._listeners is None:
            self._listeners = []
        self._listeners.append((started, done))

    def remove_listener(self, started: Callable | None = None, done: Callable | None = None) -> None:
        if self._listeners:
            self._listeners.remove((started, done))

    def _notify(self, which: int) -> None:
        if self._listeners:
            for pair in list(self._listeners):
                if pair[which] is not None:
                    pair[which](self)

    def __reduce_ex__(self, protocol):
        # a Task holds its context (node, sockets, threads): it goes to a worker only as a
        # dependency, replaced by a marker; say so instead of failing deep inside the context
        raise TypeError(f"task {self.id!r} cannot be sent to a worker as an object: put it directly "
                        "among a FuncTask's arguments (or in a list, tuple, dict, set or deque there) "
                        "to make it a dependency")

    def __repr__(self) -> str:
        from ..display import task_repr
        return task_repr(self)

    def _repr_html_(self) -> str:
        from ..display import task_html
        return task_html(self)


class _Dependency:
    """Marks where a dependency's output goes in a task's arguments."""

    __slots__ = ("task_id",)

    def __init__(self, task_id):
        self.task_id = task_id

    def __reduce__(self):
        return _Dependency, (self.task_id,)

    def __repr__(self) -> str:
        return f"<output of {self.task_id!r}>"


# -- where dependencies are found in a task's arguments ------------------------------------------
#
# The walks below enter tuples (namedtuples too), lists, dicts (their values), OrderedDicts,
# defaultdicts, sets, frozensets and deques, nested in any way, and rebuild them with the same
# type (default_factory, maxlen, namedtuple class kept). Other objects, subclasses of these
# included, are not entered: a Task inside one is refused when the arguments are pickled.
# Most arguments are ints, strings, arrays: the walks test exact types first and remember the
# types they do not enter, so such an argument costs one set lookup.

_SET, _DEQUE, _ODICT, _DDICT, _NAMEDTUPLE, _TASK, _MARKER = range(7)
_KINDS: dict = {set: _SET, frozenset: _SET, deque: _DEQUE, OrderedDict: _ODICT,
                defaultdict: _DDICT, _Dependency: _MARKER}  # the rarer types entered, by type
# types not entered (no Task or marker inside), grown as types are met, up to _TYPES_MAX
_OPAQUE: set = {int, float, complex, bool, str, bytes, bytearray, type(None), range, slice}
_TASK_TYPES: set = set()  # Task and its subclasses met (tested first when extracting)
_TYPES_MAX = 1024  # each cache stays bounded when classes are made at run time


def _kind(cls: type) -> int | None:
    """What the walks do with an object of type ``cls`` other than tuple, list and dict: its
    ``_KINDS`` code, or None for a type they do not enter. Remembered for the next time."""
    kind = _KINDS.get(cls)
    if kind is not None:
        return kind
    if issubclass(cls, Task):
        kind = _TASK
        _TASK_TYPES.add(cls)  # bounded by the Task classes there are
    elif issubclass(cls, tuple) and hasattr(cls, "_make") and hasattr(cls, "_fields"):
        kind = _NAMEDTUPLE
    if kind is None:
        if len(_OPAQUE) < _TYPES_MAX:
            _OPAQUE.add(cls)
    elif len(_KINDS) < _TYPES_MAX:
        _KINDS[cls] = kind
    return kind


def _entered(value) -> bool:
    """Whether the walks enter ``value`` (the slow form of their test, for error messages)."""
    cls = type(value)
    if cls is tuple or cls is list or cls is dict:
        return True
    if cls in _OPAQUE or getattr(value, "__dict__", None):
        return False
    return _kind(cls) in (_SET, _DEQUE, _ODICT, _DDICT, _NAMEDTUPLE)


def _items(value, path: str) -> list:
    """``(path, item)`` for the items of a container the walks enter (a dict's values)."""
    if isinstance(value, dict):
        return [(f"{path}[{_key_text(k)}]", v) for k, v in value.items()]
    if isinstance(value, (set, frozenset)):  # no order: the i-th item as listed
        return [(f"list({path})[{i}]", v) for i, v in enumerate(value)]
    return [(f"{path}[{i}]", v) for i, v in enumerate(value)]


def _key_text(key) -> str:
    try:
        text = repr(key)
    except Exception:
        return "..."
    return text if len(text) <= 40 else "..."


def _tasks_in(value, tasks: list) -> list:
    """The Tasks in ``value``, also inside the containers the walks enter (keys of dicts too)."""
    if isinstance(value, Task):
        tasks.append(value)
    elif _entered(value):
        if isinstance(value, dict):
            for key in value:
                _tasks_in(key, tasks)
        for _, item in _items(value, ""):
            _tasks_in(item, tasks)
    return tasks


def _task_in_key(value, path: str) -> tuple | None:
    """``(task, path, whole key)`` for the first dict key under ``value`` that holds a Task."""
    if not _entered(value):
        return None
    if isinstance(value, dict):
        for key in value:
            tasks = _tasks_in(key, [])
            if tasks:
                return tasks[0], path, tasks[0] is key
    for item_path, item in _items(value, path):
        found = _task_in_key(item, item_path)
        if found is not None:
            return found
    return None


class _TaskInKey(Exception):
    """A dict key holds a Task (raised inside the walk; the caller finds the path)."""


def _check_keys(value: dict) -> None:
    """Raise _TaskInKey when a key of ``value`` is or holds a Task."""
    for key in value:
        if type(key) not in _OPAQUE and _tasks_in(key, []):
            raise _TaskInKey


def extract_dependencies(value, found: dict, root: str = "args"):
    """``value`` with every Task in it replaced by a marker, the Tasks put in ``found``
    (``id(task) -> task``). Finds them in tuples (namedtuples too), lists, dicts' values,
    OrderedDicts, defaultdicts, sets, frozensets and deques, nested in any way.

    A Task in a dict key is a ``TypeError`` naming the task and where it is (under ``root``).
    """
    try:
        return _extract(value, found)
    except _TaskInKey:
        where = _task_in_key(value, root)
        if where is None:  # not expected: the walks agree on what they enter
            raise TypeError(f"a Task is used in a dict key in {root}; a Task can be a dependency "
                            "only as a value") from None
        task, path, whole = where
        raise TypeError(f"task {task.id!r} is used {'as' if whole else 'in'} a dict key at {path}; "
                        "a Task can be a dependency only as a value") from None


def _extract(value, found: dict):
    cls = type(value)
    if cls in _TASK_TYPES:
        found[id(value)] = value
        return _Dependency(value.id)
    if cls is tuple:
        return tuple([v if type(v) in _OPAQUE else _extract(v, found) for v in value])
    if cls is list:
        return [v if type(v) in _OPAQUE else _extract(v, found) for v in value]
    if cls is dict:
        _check_keys(value)
        return {k: v if type(v) in _OPAQUE else _extract(v, found) for k, v in value.items()}
    if cls in _OPAQUE:
        return value
    kind = _kind(cls)
    if kind == _TASK:  # the first of its class
        found[id(value)] = value
        return _Dependency(value.id)
    if kind is None or kind == _MARKER or getattr(value, "__dict__", None):
        return value  # not entered; or with attributes of its own, which a rebuild would lose
    if kind == _SET:
        return cls([_extract(v, found) for v in value])
    if kind == _DEQUE:
        return deque([_extract(v, found) for v in value], value.maxlen)
    if kind == _NAMEDTUPLE:
        return cls._make([_extract(v, found) for v in value])
    _check_keys(value)
    items = [(k, _extract(v, found)) for k, v in value.items()]
    return OrderedDict(items) if kind == _ODICT else defaultdict(value.default_factory, items)


def has_markers(value) -> bool:
    """Whether ``value`` holds a dependency marker (where :func:`extract_dependencies` puts them)."""
    cls = type(value)
    if cls is tuple or cls is list:
        for v in value:
            if type(v) not in _OPAQUE and has_markers(v):
                return True
        return False
    if cls is dict:
        for v in value.values():
            if type(v) not in _OPAQUE and has_markers(v):
                return True
        return False
    if cls is _Dependency:
        return True
    if cls in _OPAQUE:
        return False
    kind = _kind(cls)
    if kind is None or kind == _TASK or getattr(value, "__dict__", None):
        return False
    return any(has_markers(v) for v in (value.values() if kind == _ODICT or kind == _DDICT else value))


def fill_dependencies(value, outputs: dict):
    """The inverse of :func:`extract_dependencies`, on the worker: each marker replaced by the
    output of its task in ``outputs`` (task id -> output)."""
    cls = type(value)
    if cls is _Dependency:
        return outputs[value.task_id]
    if cls is tuple:
        return tuple([v if type(v) in _OPAQUE else fill_dependencies(v, outputs) for v in value])
    if cls is list:
        return [v if type(v) in _OPAQUE else fill_dependencies(v, outputs) for v in value]
    if cls is dict:
        return {k: v if type(v) in _OPAQUE else fill_dependencies(v, outputs) for k, v in value.items()}
    if cls in _OPAQUE:
        return value
    kind = _kind(cls)
    if kind is None or kind == _TASK or getattr(value, "__dict__", None):
        return value
    if kind == _SET:
        items = [fill_dependencies(v, outputs) for v in value]
        try:
            return cls(items)
        except TypeError:
            raise _unhashable_output(value, outputs, cls) from None
    if kind == _DEQUE:
        return deque([fill_dependencies(v, outputs) for v in value], value.maxlen)
    if kind == _NAMEDTUPLE:
        return cls._make([fill_dependencies(v, outputs) for v in value])
    items = [(k, fill_dependencies(v, outputs)) for k, v in value.items()]
    return OrderedDict(items) if kind == _ODICT else defaultdict(value.default_factory, items)


def _markers_in(value, markers: list) -> list:
    if type(value) is _Dependency:
        markers.append(value)
    elif _entered(value):
        for _, item in _items(value, ""):
            _markers_in(item, markers)
    return markers


def _unhashable_output(value, outputs: dict, cls: type) -> TypeError:
    """The error for a set (or frozenset) of the arguments that cannot hold a dependency's output."""
    for marker in _markers_in(value, []):
        output = outputs[marker.task_id]
        try:
            hash(output)
        except TypeError as exc:
            name = type(output).__name__
            article = "an" if name[:1] in "aeiou" else "a"
            return TypeError(f"the result of task {marker.task_id!r} is {article} {name}, which cannot "
                             f"go in a {cls.__name__} among the arguments ({exc}); "
                             "put the task in a list or tuple instead")
    return TypeError(f"a {cls.__name__} among the arguments cannot hold the results of its tasks")


_NO_KWARGS: dict = {}  # shared by tasks without keyword arguments; never mutated


class RmiTask(Task):
    """Runs the callable ``method(*args, **kwargs)`` on a worker."""

    __slots__ = ("method", "args", "kwargs", "timeout")

    def __init__(self, ctx, task_id, method: Callable, args=(), kwargs=None, *, priority=None,
                 name=None, desc=None, group=None, timeout: float | None = None):
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"task {task_id!r}: timeout must be a positive number of seconds, "
                             f"not {timeout!r}")
        if not callable(method):
            raise TypeError(f"task {task_id!r}: method must be callable, not {type(method).__name__}")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"task {task_id!r}: args must be a tuple or list, not {type(args).__name__} "
                            "(one argument x is args=(x,))")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"task {task_id!r}: kwargs must be a dict, not {type(kwargs).__name__}")
        super().__init__(ctx, task_id, priority=priority, name=name, desc=desc, group=group)
        self.method = method
        self.args = tuple(args)
        self.kwargs = kwargs or _NO_KWARGS
        self.timeout = timeout  # seconds a run may take; then it is cancelled and fails (TimeoutError)

    @property
    def thread_timeout(self) -> float | None:
        """Seconds after which the worker interrupts the running task (TaskTimeout)."""
        return self.timeout

    @property
    def name(self) -> str:
        if self._name is not None:
            return self._name
        fn = getattr(self.method, "__name__", None)
        return f"{fn}[{self.id}]" if fn else str(self.id)

    @name.setter
    def name(self, value: str | None) -> None:
        self._name = value

    def payload(self) -> tuple:
        """What the worker needs: (callable, args, kwargs)."""
        return self.method, self.args, self.kwargs

    async def execute(self, scheduler, worker) -> Any:
        return await worker.call("functions", "call", self.method, *self.args, **self.kwargs)


class FuncTask(RmiTask):
    """An RmiTask whose Task arguments are dependencies, replaced by their results.

    A Task among ``args``/``kwargs`` (also inside tuples, lists, dicts' values, sets and
    deques, nested in any way) is a dependency; ``dependencies=`` adds more. By default
    the task prefers the worker holding most of its dependencies' output bytes;
    ``locality`` is a ``{worker name: int}`` dict or a callable ``workers -> [(worker, int)]``.
    """

    __slots__ = ("_locality",)

    def __init__(self, ctx, task_id, fn: Callable, args=(), kwargs=None, *, dependencies=(),
                 locality=None, **task_kw):
        found: dict = {}
        try:
            if type(args) is tuple:
                for arg in args:
                    if type(arg) not in _OPAQUE:
                        args = extract_dependencies(args, found)
                        break
                # else: ints, strings and the like only: no Task to look for
            else:
                args = extract_dependencies(tuple(args) if isinstance(args, list) else args, found)
            kwargs = extract_dependencies(kwargs or {}, found, "kwargs") if kwargs is not None else None
        except TypeError as exc:  # a Task in a dict key
            raise TypeError(f"task {task_id!r}: {exc}") from None
        except RecursionError:
            raise ValueError(f"task {task_id!r}: its arguments nest too deep, or hold a list or dict "
                             "that contains itself, for the search of dependencies") from None
        super().__init__(ctx, task_id, fn, args, kwargs, **task_kw)
        for dep in found.values():
            self.add_dependency(dep)
        for dep in dependencies:
            self.add_dependency(dep)
        if locality is not None and not (callable(locality) or isinstance(locality, dict)):
            raise TypeError(f"task {task_id!r}: locality must be a dict or a callable")
        self._locality = locality

    def locality(self, workers) -> Iterable[tuple]:
        loc = self._locality
        if loc is None:
            return ()
        if callable(loc):
            return loc(workers)
        by_name = {getattr(w, "name", w): w for w in workers}
        return [(by_name[name], value) for name, value in loc.items() if name in by_name]


class Job:
    """A set of tasks executed together; ``ctx.execute(job)`` runs it."""

    def __init__(self, ctx, tasks: Iterable[Task], name: str | None = None, desc: str | None = None):
        self.ctx = ctx
        self.id = next(_job_ids)
        self.tasks: list[Task] = list(tasks)
        self.name = name or f"job-{self.id}"
        self.desc = desc
        self.state = "created"
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.retried = 0       # retries after failures and re-runs of lost outputs
        self.done_count = 0    # tasks done (kept up to date while running, for progress)
        self.failed_count = 0  # tasks that failed for good
        self.error: BaseException | None = None  # what the last run ended with
        self._run = None  # the JobRun while executing
        # its scheduler's events and decisions, when execute.record_events is on (a JobRecording)
        self.recording = None
        self._cancel_requested = False
        self._hooks = Hooks()
        by_id: dict = {}
        for task in self.tasks:
            if not isinstance(task, Task):
                raise TypeError(f"job {self.name}: {task!r} is not a Task")
            if task.ctx is not ctx:
                raise ValueError(f"job {self.name}: task {task.id!r} belongs to another context")
            if task.id in by_id:
                raise ValueError(f"job {self.name}: duplicate task id {task.id!r}")
            by_id[task.id] = task
        for task in self.tasks:
            for dep in task.dependencies:
                if by_id.get(dep.id) is not dep:
                    raise ValueError(f"job {self.name}: task {task.id!r} depends on {dep.id!r}, "
                                     "which is not a task of this job")
        self._by_id = by_id
        from .graph import find_cycle
        # a task without dependencies is on no cycle: a job of independent tasks walks no graph
        cycle = find_cycle({t.id: [d.id for d in t.dependencies] for t in self.tasks if t.dependencies})
        if cycle:
            raise ValueError(f"job {self.name}: the task graph has a cycle: "
                             + " -> ".join(repr(i) for i in cycle))

    def task(self, task_id) -> Task:
        return self._by_id[task_id]

    def add_hook(self, event: str, fn: Callable) -> None:
        """Call ``fn(arg)`` on ``event`` of this job (see :mod:`bndl_like.execute.hooks`)."""
        self._hooks.add(event, fn)

    def cancel(self) -> None:
        """Cancel the job on every worker; ``execute`` raises JobCancelled."""
        self._cancel_requested = True
        run = self._run
        if run is not None:
            run.cancel_threadsafe()

    @property
    def counts(self) -> dict:
        counts = {PENDING: 0, RUNNING: 0, DONE: 0, FAILED: 0, CANCELLED: 0}
        for task in self.tasks:
            counts[task.state] += 1
        counts["retried"] = self.retried
        counts["total"] = len(self.tasks)
        return counts

    @property
    def done(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.stopped_at or time.time()) - self.started_at

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        from ..display import job_repr
        return job_repr(self)

    def _repr_html_(self) -> str:
        from ..display import job_html
        return job_html(self)


def map_chunk(fn: Callable, items: list, *args: Any) -> list:
    """Run on a worker: ``fn`` over one chunk of ``map``'s items (each followed by ``args``)."""
    if args:
        return [fn(x, *args) for x in items]
    return [fn(x) for x in items]


__all__ = ["Task", "RmiTask", "FuncTask", "Job", "JobCancelled", "TaskCancelled", "map_chunk"]
