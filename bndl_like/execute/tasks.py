"""Tasks and jobs as the driver sees them."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from .errors import JobCancelled, TaskCancelled
from .hooks import Hooks

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
_job_ids = itertools.count(1)


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
        self._notify(0)

    def mark_done(self, result=None) -> None:
        self.state = DONE
        self._result = result
        self._exception = None
        self.stopped_at = time.time()
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
        if self.state == DONE:
            return self._result
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


def extract_dependencies(value, found: dict):
    """Replace every Task in ``value`` (nested in lists, tuples, dicts) by a marker."""
    cls = type(value)
    if isinstance(value, Task):
        found[id(value)] = value
        return _Dependency(value.id)
    if cls is list or cls is tuple:
        items = [extract_dependencies(v, found) for v in value]
        return items if cls is list else tuple(items)
    if cls is dict:
        return {k: extract_dependencies(v, found) for k, v in value.items()}
    return value


def has_markers(value) -> bool:
    cls = type(value)
    if cls is _Dependency:
        return True
    if cls is list or cls is tuple:
        return any(has_markers(v) for v in value)
    if cls is dict:
        return any(has_markers(v) for v in value.values())
    return False


def fill_dependencies(value, outputs: dict):
    """The inverse of :func:`extract_dependencies`, on the worker."""
    cls = type(value)
    if cls is _Dependency:
        return outputs[value.task_id]
    if cls is list or cls is tuple:
        items = [fill_dependencies(v, outputs) for v in value]
        return items if cls is list else tuple(items)
    if cls is dict:
        return {k: fill_dependencies(v, outputs) for k, v in value.items()}
    return value


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

    A Task among ``args``/``kwargs`` (also inside lists, tuples and dicts) is a
    dependency; ``dependencies=`` adds more. By default the task prefers the
    worker holding most of its dependencies' output bytes; ``locality`` is a
    ``{worker name: int}`` dict or a callable ``workers -> [(worker, int)]``.
    """

    __slots__ = ("_locality",)

    def __init__(self, ctx, task_id, fn: Callable, args=(), kwargs=None, *, dependencies=(),
                 locality=None, **task_kw):
        found: dict = {}
        args = extract_dependencies(tuple(args) if isinstance(args, list) else args, found)
        kwargs = extract_dependencies(kwargs or {}, found) if kwargs is not None else None
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
        self._run = None  # the JobRun while executing
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
        cycle = find_cycle({t.id: [d.id for d in t.dependencies] for t in self.tasks})
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


__all__ = ["Task", "RmiTask", "FuncTask", "Job", "JobCancelled", "TaskCancelled"]
