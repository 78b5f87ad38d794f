"""The worker side: runs tasks in threads, keeps their outputs, serves them to peers.

Dispatch from the driver and completion notices back to it are batched: all
tasks handed out (or finished) in one event-loop iteration travel in one message.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from operator import itemgetter
from typing import Any

from ...rmi import MessageTooLarge, NotConnected, RemoteError, SerializationError, takes_peer
from ...rmi.pickle_check import unpicklable_result
from ...rmi.serialize import Payload, dump_exception, dump_value
from .. import handles as scatter_handles
from ..errors import DependenciesFailed, TaskCancelled, TaskTimeout
from ..messages import (
    ABANDONED,
    DEPS_FAILED,
    DRIVER_SERVICE,
    FAILED,
    RESEND,
    STARTED,
    SUCCEEDED,
    TASK_EVENTS,
    TASKS_SERVICE,
    plain_keys,
)
from ..tasks import fill_dependencies, has_markers
from . import output
from .command import signal_command
from .context import TaskContext, enter, leave
from .scatter import TaskHandles, find_missing, load_tasks

# how a task's call in its thread ended (not an event: see messages for those)
_RETURNED, _RAISED, _CANCELLED = "returned", "raised", "cancelled"

log = logging.getLogger(__name__)
def _raise_in_thread(ident: int, exc_type) -> bool:
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    return done == 1


def _clear_async_exc(ident: int) -> None:
    """Let a TaskCancelled sent to this (the calling) thread too late fire here, and swallow it.

    Not ``PyThreadState_SetAsyncExc(ident, NULL)``: on CPython 3.11 that leaves the
    interpreter's "async exception pending" flag set for good, and a profiler (yappi,
    cProfile) or tracer then spins forever at the next function entry.
    """
    try:
        for _ in range(2):  # a backward jump checks for pending asynchronous exceptions
            pass
    except (TaskCancelled, TaskTimeout):
        pass


# results whose size is their sys.getsizeof, looked up without an attribute miss
_SIZED_BY_GETSIZEOF = frozenset({int, float, bool, type(None), complex})


def nbytes_of(value) -> int:
    if type(value) in _SIZED_BY_GETSIZEOF:
        return sys.getsizeof(value)
    size = getattr(value, "nbytes", None)
    if isinstance(size, int):
        return int(size)
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return len(value)
    return sys.getsizeof(value)


_WAIT = object()  # a task that must run alone waits for the others to end

# guards each run's thread and cancelled fields (between a cancel and the run's thread); held
# for a few statements at a time, so one lock for all runs instead of one allocated per run
_RUN_LOCK = threading.Lock()


_kind, _key = itemgetter(0), itemgetter(1)


def _plain_events(events: list) -> bool:
    """Whether ``events`` may travel in a message's envelope: plain task ids, and no failures
    map of dependencies (whose keys are task ids too)."""
    if DEPS_FAILED in set(map(_kind, events)):
        for event in events:
            if event[0] == DEPS_FAILED and type(event[3]) is dict:
                return False
    return plain_keys(map(_key, events))


class _Run:
    """One task handed to this worker."""

    __slots__ = ("key", "attempt", "fn", "args", "kwargs", "deps", "thread", "cancelled",
                 "started", "ready", "failure", "timeout", "send", "confirm", "handles")

    lock = _RUN_LOCK

    def __init__(self, key, attempt, fn, args, kwargs, deps, timeout=None, send=True, confirm=False):
        self.key = key
        self.send = send  # the driver wants the result (else only its size)
        # a worker died while it may have run this task: its start reaches the driver before it runs
        self.confirm = confirm
        self.attempt = attempt
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.deps = deps  # {dependency id: worker holding its output}
        self.thread: int | None = None
        self.cancelled = False
        self.timeout = timeout
        self.started = False
        self.ready = not deps  # dependency outputs in place in args/kwargs
        self.failure: tuple | None = None  # the event to report instead of running
        self.handles: TaskHandles | None = None  # scatter handles its arguments resolved


class _JobState:
    def __init__(self, driver: str, job_id: int, concurrency: int):
        self.driver = driver
        self.job_id = job_id
        self.concurrency = concurrency
        self.queue: deque[_Run] = deque()
        self.running: dict = {}   # key -> _Run
        self.outputs: dict = {}   # key -> output kept for dependents
        self.fetching: dict = {}  # key -> (holder, future) of an output fetched from a peer
        self.released = False


class WorkerService:
    """The ``tasks`` service of a worker node.

    Runner threads take the next queued task themselves (up to each job's
    concurrency), so back-to-back small tasks need no trip through the event
    loop; the loop hears of starts and completions in batches.
    """

    def __init__(self, node, max_threads: int = 64):
        self.node = node
        self.max_threads = max_threads
        self.jobs: dict[tuple, _JobState] = {}
        # a plain lock (no nested acquisition here): ``with self._lock`` costs less than the
        # condition's own ``with``, on the paths taken per task
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._idle = 0
        # tasks a worker died running: each runs alone on this worker (nothing else of any job
        # runs beside it), so that if it ends this process too, the death is its own
        self._confirms: dict[_Run, _JobState] = {}
        self._exclusive: _Run | None = None
        self._closing = False
        self._outbox: dict[tuple, list] = {}
        self._flush_handle = None
        self._fetch_tasks: set[asyncio.Task] = set()
        self._completed: deque = deque()  # (job, event) posted by runner threads
        self._wakeup_pending = False
        self._held_by: set[str] = set()  # drivers that hold this worker (shown by status)
        node.on_peer_lost.append(self._on_peer_lost)

    @property
    def loop(self):
        return self.node.loop

    # -- called by the driver ----------------------------------------------------------------

    @takes_peer
    def run(self, driver, job_id: int, concurrency: int, keys: list, specs: Payload) -> None:
        """Queue tasks (a notice): ``keys`` are their (key, attempt) pairs, ``specs`` the payload
        of their (key, attempt, fn, args, kwargs, deps, timeout, send) tuples.

        Specs that do not unpickle here (a module only the driver has, a ``__reduce__`` that
        raises) fail their task without a retry; in a batch of several the driver is asked to
        send each task on its own first, so that only the culprits fail.
        """
        try:
            tasks, handles = load_tasks(specs)
        except SerializationError as exc:
            self._unreadable(driver.name, job_id, concurrency, keys, exc)
            return
        runs = [_Run(*spec) for spec in tasks]
        if handles is not None:  # checked again as each starts: scatter_update reaches queued tasks
            for run, task_handles in zip(runs, handles, strict=True):
                run.handles = task_handles
        if scatter_handles._missing_made and scatter_handles.take_missing_count():
            for run in runs:  # a scattered object this worker does not hold: fail before running
                missing = find_missing((run.args, run.kwargs))
                if missing is not None:
                    run.failure = (FAILED, run.key, run.attempt, dump_exception(missing.error()))
        with self._lock:
            job = self._job(driver.name, job_id, concurrency)
        for run in runs:
            if run.deps:
                self._prepare(job, run)
        with self._lock:
            job.queue.extend(runs)
            for run in runs:
                if run.confirm:
                    self._confirms[run] = job
            self._wake_runners(job)

    def _unreadable(self, driver: str, job_id: int, concurrency: int, keys: list, exc: Exception) -> None:
        with self._lock:
            job = self._job(driver, job_id, concurrency)
        if len(keys) > 1:
            for key, attempt in keys:
                self._report(job, (RESEND, key, attempt))
            return
        for key, attempt in keys:
            error = SerializationError(f"task {key!r} cannot be unpickled on worker {self.node.name}: {exc}")
            self._report(job, (FAILED, key, attempt, dump_exception(error), False))

    def _wake_runners(self, job: _JobState) -> None:
        """Notify runners of tasks that may start (under the lock)."""
        free = job.concurrency - len(job.running)
        wanted = 0
        if free > 0:
            for queued in job.queue:  # up to ``free`` ready ones: the queue may be long
                if queued.ready:
                    wanted += 1
                    if wanted == free:
                        break
        if wanted > 0:
            self._cond.notify(wanted)
            self._add_threads(wanted)

    def _prepare(self, job: _JobState, run: _Run) -> None:
        """Put dependency outputs in place before a runner takes the task: local ones at
        once, remote ones fetched on the loop meanwhile (no thread waits on the network)."""
        local = job.outputs
        me = self.node.name
        if all(holder == me and key in local for key, holder in run.deps.items()):
            self._fill(run, {key: local[key] for key in run.deps})
            return

        async def fetch():
            try:
                outputs = await self._fetch(job, run.deps)
            except DependenciesFailed as exc:
                run.failure = (DEPS_FAILED, run.key, run.attempt, exc.failures)
            except Exception as exc:  # e.g. an output that cannot be unpickled
                run.failure = (FAILED, run.key, run.attempt, dump_exception(exc))
            else:
                self._fill(run, outputs)
            with self._lock:
                run.ready = True
                self._wake_runners(job)
        task = self.loop.create_task(fetch())
        self._fetch_tasks.add(task)
        task.add_done_callback(self._fetch_tasks.discard)

    @staticmethod
    def _fill(run: _Run, outputs: dict) -> None:
        if run.handles is not None:
            run.handles.outputs = outputs  # to fill its arguments again if they are unpickled again
        try:
            if has_markers(run.args):
                run.args = fill_dependencies(run.args, outputs)
            if has_markers(run.kwargs):
                run.kwargs = fill_dependencies(run.kwargs, outputs)
        except Exception as exc:
            run.failure = (FAILED, run.key, run.attempt, dump_exception(exc))
        run.ready = True

    @takes_peer
    def take_back(self, driver, job_id: int, keys: list) -> list:
        """Give back the tasks among ``keys`` not started yet; return their keys."""
        with self._lock:
            job = self.jobs.get((driver.name, job_id))
            if job is None:
                return []
            wanted = set(keys)
            kept: deque[_Run] = deque()
            given: list[_Run] = []
            for run in job.queue:
                (given if run.key in wanted else kept).append(run)
            job.queue = kept
        return [run.key for run in given]

    @takes_peer
    def cancel(self, driver, job_id: int, keys: list | None = None) -> None:
        """Cancel queued and running tasks (all of the job's when ``keys`` is None)."""
        job = self.jobs.get((driver.name, job_id))
        if job is not None:
            self._cancel(job, None if keys is None else set(keys))

    @takes_peer
    def forget_job(self, driver, job_id: int) -> None:
        """The job ended: cancel what still runs of it and drop its outputs."""
        self._drop(driver.name, job_id)

    def get_outputs(self, driver: str, job_id: int, keys: list) -> list:
        """Outputs of tasks of a job kept here; KeyError names the missing ones."""
        job = self.jobs.get((driver, job_id))
        if job is None:
            raise KeyError(f"no outputs of job {job_id} of {driver} on {self.node.name}")
        missing = [k for k in keys if k not in job.outputs]
        if missing:
            raise KeyError(f"outputs of tasks {missing} not on {self.node.name}")
        return [job.outputs[k] for k in keys]

    @takes_peer
    def signal_task(self, driver, job_id: int, key, signum: int) -> bool:
        """Send ``signum`` to the process group of a command task running here."""
        return signal_command((driver.name, job_id, key), signum)

    @takes_peer
    def set_held(self, driver, held: bool) -> None:
        """A driver holds this worker (no new tasks from it) or released it (a notice)."""
        if held:
            self._held_by.add(driver.name)
        else:
            self._held_by.discard(driver.name)

    def status(self) -> dict:
        return {"jobs": len(self.jobs), "held": bool(self._held_by),
                "running": sum(len(j.running) for j in self.jobs.values()),
                "queued": sum(len(j.queue) for j in self.jobs.values()),
                "threads": len(self._threads),
                "uptime": time.time() - (self.node.started_at or time.time()),
                "pid": os.getpid(), "hostname": socket.gethostname()}

    # -- runner threads ---------------------------------------------------------------------------

    def _job(self, driver: str, job_id: int, concurrency: int) -> _JobState:
        key = (driver, job_id)
        job = self.jobs.get(key)
        if job is None:
            job = self.jobs[key] = _JobState(driver, job_id, concurrency)
        job.concurrency = concurrency
        return job

    def _add_threads(self, wanted: int) -> None:
        """Start runner threads so that ``wanted`` more tasks can run (under the lock)."""
        while self._idle < wanted and len(self._threads) < self.max_threads:
            thread = threading.Thread(target=self._runner, daemon=True,
                                      name=f"bndl-like-task-{len(self._threads)}")
            self._threads.append(thread)
            self._idle += 1
            thread.start()

    def _next_run(self):
        """Block until a task may start; None when closing. Called by runner threads."""
        with self._lock:
            while True:
                if self._closing:
                    return None
                if self._exclusive is not None:
                    self._cond.wait()
                    continue
                if self._confirms:
                    picked = self._next_exclusive()
                    if picked is not None:
                        if picked is _WAIT:
                            self._cond.wait()
                            continue
                        return picked
                for job in self.jobs.values():
                    if job.queue and len(job.running) < job.concurrency:
                        queue = job.queue
                        for i, run in enumerate(queue):
                            if run.ready:
                                del queue[i]
                                run.started = True
                                job.running[run.key] = run
                                self._idle -= 1
                                return job, run
                self._cond.wait()

    def _next_exclusive(self):
        """A ready task to run alone, _WAIT while others still run, or None (under the lock)."""
        ready = None
        for run, job in list(self._confirms.items()):
            if run.started or run.cancelled or run not in job.queue or self.jobs.get(
                    (job.driver, job.job_id)) is not job:
                del self._confirms[run]  # taken back, cancelled or its job released
            elif ready is None and run.ready:
                ready = run, job
        if ready is None:
            return None
        if any(j.running for j in self.jobs.values()):
            return _WAIT
        run, job = ready
        del self._confirms[run]
        job.queue.remove(run)
        run.started = True
        job.running[run.key] = run
        self._idle -= 1
        self._exclusive = run
        return job, run

    def _runner(self) -> None:
        while True:
            picked = self._next_run()
            if picked is None:
                return
            job, run = picked
            if run.confirm:
                self._confirm(job, (STARTED, run.key, run.attempt))
            else:
                self._post(job, (STARTED, run.key, run.attempt))
            event = self._execute(job, run)
            if run.confirm:  # it ran alone: its end leaves before anything else runs here
                self._confirm(job, event)
            else:
                # posted before the run counts as ended: a task run alone next reports its
                # start after this event, never before it
                self._post(job, event)
            with self._lock:
                if job.running.get(run.key) is run:
                    del job.running[run.key]
                self._idle += 1
                if self._exclusive is run:
                    self._exclusive = None
                    self._cond.notify_all()
                elif self._confirms:
                    self._cond.notify_all()  # a task waiting to run alone may start now
            # an idle runner must not keep its last task's arguments or output alive
            picked = job = run = event = None  # type: ignore[assignment]

    def _execute(self, job: _JobState, run: _Run) -> tuple:
        """Run one task in this thread; the event to report."""
        if run.failure is None and run.handles is not None:
            self._rescatter(run)
        if run.failure is not None:
            return run.failure
        outcome, value = self._call_in_thread(job, run, run.args, run.kwargs)
        if outcome is _RETURNED:
            if not job.released:
                job.outputs[run.key] = value  # before the driver hears of it: dependents find it
            nbytes = nbytes_of(value)
            if not run.send:
                return SUCCEEDED, run.key, run.attempt, None, nbytes
            try:
                # pickled here, in the runner thread: a large result never holds up the loop
                return SUCCEEDED, run.key, run.attempt, dump_value(value), nbytes
            except SerializationError as exc:
                # the same result will not pickle on a retry either
                error = unpicklable_result(f"the result of task {run.key!r} cannot be sent to the driver",
                                           value, exc)
                return FAILED, run.key, run.attempt, dump_exception(error), False
        if outcome is _CANCELLED:
            return ABANDONED, run.key, run.attempt
        try:
            return FAILED, run.key, run.attempt, dump_exception(value)
        except Exception as exc:  # pragma: no cover - dump_exception is defensive already
            return FAILED, run.key, run.attempt, (None, type(value).__name__, str(exc), "", None)

    def _rescatter(self, run: _Run) -> None:
        """As the task starts: when a scattered object its arguments hold was updated (or
        released) since they were unpickled, unpickle them again, with the current versions.
        Called for a run whose arguments hold handles (``run.handles`` set)."""
        try:
            spec = run.handles.updated()  # type: ignore[union-attr]
        except SerializationError as exc:
            error = SerializationError(f"task {run.key!r} cannot be unpickled on worker "
                                       f"{self.node.name}: {exc}")
            run.failure = (FAILED, run.key, run.attempt, dump_exception(error), False)
            return
        if spec is None:
            return
        run.fn, run.args, run.kwargs = spec[2], spec[3], spec[4]
        if run.handles.outputs is not None:  # type: ignore[union-attr]
            self._fill(run, run.handles.outputs)  # type: ignore[union-attr]
        missing = find_missing((run.args, run.kwargs))
        if missing is not None and run.failure is None:
            run.failure = (FAILED, run.key, run.attempt, dump_exception(missing.error()))

    def _post(self, job: _JobState, event: tuple) -> None:
        """Hand an event to the loop; wake it once per batch, not per event."""
        self._completed.append((job, event))
        if not self._wakeup_pending:
            self._wakeup_pending = True
            try:
                self.loop.call_soon_threadsafe(self._drain_completed)
            except RuntimeError:  # the loop is closed: the worker is stopping
                pass

    def _confirm(self, job: _JobState, event: tuple, timeout: float = 5.0) -> None:
        """Report ``event`` (after every event before it) and wait (bounded) until it left for
        the driver: if the process ends next, the driver knows which task was running."""
        sent = threading.Event()

        deadline = time.monotonic() + timeout

        def in_kernel() -> None:
            """Done once the transport holds nothing more: the kernel delivers it even if the
            process ends right after."""
            peer = self.node.peers.get(job.driver)
            transport = None if peer is None or peer.connection is None else peer.connection.transport
            if transport is None or transport.get_write_buffer_size() == 0 or time.monotonic() > deadline:
                sent.set()
            else:
                self.loop.call_later(0.001, in_kernel)

        def send() -> None:
            try:
                self._drain_completed()
                if not job.released:
                    self._report(job, event)
                self._flush()
                peer = self.node.peers.get(job.driver)
                if peer is not None and peer.connection is not None:
                    peer.connection._flush()  # out of the cork, into the socket
            finally:
                in_kernel()
        try:
            self.loop.call_soon_threadsafe(send)
        except RuntimeError:  # the loop is closed: the worker is stopping
            return
        sent.wait(timeout)

    def _drain_completed(self) -> None:
        """Report what the runner threads posted, and send it now (this is the batch).

        A start whose task ended in the same batch is left out: the end says it all, and the
        driver handles one event instead of two per short task."""
        self._wakeup_pending = False
        completed = self._completed
        if not completed:
            return
        events: list = []
        starts: dict = {}  # (job, key, attempt) -> index in events of a start
        while completed:
            job, event = completed.popleft()
            if job.released:
                continue
            kind = event[0]
            if kind == STARTED:
                starts[(job, event[1], event[2])] = len(events)
            elif starts:
                index = starts.pop((job, event[1], event[2]), None)
                if index is not None:
                    events[index] = None
            events.append((job, event))
        for entry in events:
            if entry is not None:
                self._report(*entry)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()

    async def _fetch(self, job: _JobState, deps: dict) -> dict:
        """Dependency outputs: local ones as they are, remote ones fetched once per job."""
        outputs: dict[Any, Any] = {}
        failures: dict[str, list[Any]] = {}  # holder: keys
        new: dict[str, list[Any]] = {}  # holder: keys to fetch
        waiting: list[tuple[Any, str, asyncio.Future[Any]]] = []
        me = self.node.name
        for key, holder in deps.items():
            if holder == me:
                if key in job.outputs:
                    outputs[key] = job.outputs[key]
                else:
                    failures.setdefault(holder, []).append(key)
                continue
            entry = job.fetching.get(key)
            if entry is None:
                entry = job.fetching[key] = (holder, self.loop.create_future())
                new.setdefault(holder, []).append(key)
            waiting.append((key, holder, entry[1]))
        for holder, keys in new.items():
            self._start_fetch(job, holder, keys, [job.fetching[k][1] for k in keys])
        for key, holder, future in waiting:
            try:
                outputs[key] = await asyncio.shield(future)
            except (NotConnected, RemoteError, KeyError):
                if job.fetching.get(key, (None, None))[1] is future:
                    del job.fetching[key]
                failures.setdefault(holder, []).append(key)
        if failures:
            raise DependenciesFailed(failures)
        return outputs

    def _start_fetch(self, job: _JobState, holder: str, keys: list, futures: list) -> None:
        async def fetch():
            try:
                peer = await self.node.peer(holder)  # dials a holder not connected (yet)
                values = await peer.call(TASKS_SERVICE, "get_outputs", job.driver, job.job_id, keys)
            except Exception as exc:
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
                        future.exception()  # retrieved by the awaiting tasks, if any
                return
            for future, value in zip(futures, values, strict=False):
                if not future.done():
                    future.set_result(value)
        task = self.loop.create_task(fetch())
        self._fetch_tasks.add(task)
        task.add_done_callback(self._fetch_tasks.discard)

    def _call_in_thread(self, job: _JobState, run: _Run, args, kwargs):
        ident = threading.get_ident()
        timer = None
        sink = output.begin(job.driver, "task", run.key)
        try:
            try:
                with run.lock:
                    if run.cancelled:
                        raise TaskCancelled(f"task {run.key!r} was cancelled")
                    run.thread = ident
                if run.timeout:
                    timer = threading.Timer(run.timeout, self._time_out, (run,))
                    timer.daemon = True
                    timer.start()
                enter(self.node, TaskContext(run.key, job.job_id, run.attempt, self.node.name, job.driver))
                return _RETURNED, run.fn(*args, **kwargs)
            finally:
                if timer is not None:
                    timer.cancel()
                leave()
                output.end(sink)
                with run.lock:
                    run.thread = None
                # a cancel or timeout that lost the race must not hit this thread later (either
                # one is sent only with run.cancelled set or a timeout given)
                if run.cancelled or timer is not None:
                    _clear_async_exc(ident)
        except TaskCancelled as exc:
            _clear_async_exc(ident)
            return _CANCELLED, exc
        except TaskTimeout:
            _clear_async_exc(ident)
            return _RAISED, TaskTimeout(f"task {run.key!r} timed out after {run.timeout}s")
        except BaseException as exc:
            return _RAISED, exc

    @staticmethod
    def _time_out(run: _Run) -> None:
        """Interrupt a task that ran past its timeout (it then fails with TaskTimeout)."""
        with run.lock:
            if run.thread is not None:
                _raise_in_thread(run.thread, TaskTimeout)

    def _cancel(self, job: _JobState, keys: set | None, report: bool = True) -> None:
        with self._lock:
            kept: deque[_Run] = deque()
            dropped: list[_Run] = []
            for run in job.queue:
                (dropped if keys is None or run.key in keys else kept).append(run)
            job.queue = kept
            running = [r for r in job.running.values() if keys is None or r.key in keys]
        if report:
            for run in dropped:
                self._report(job, (ABANDONED, run.key, run.attempt))
        for run in running:
            with run.lock:
                run.cancelled = True
                if run.thread is not None:
                    _raise_in_thread(run.thread, TaskCancelled)

    def _drop(self, driver: str, job_id: int) -> None:
        with self._lock:
            job = self.jobs.pop((driver, job_id), None)
        if job is not None:
            job.released = True
            self._cancel(job, None, report=False)
            job.outputs.clear()
            job.fetching.clear()

    # -- reporting -----------------------------------------------------------------------------------

    def _report(self, job: _JobState, event: tuple) -> None:
        key = (job.driver, job.job_id)
        box = self._outbox.get(key)
        if box is None:
            box = self._outbox[key] = []
        box.append(event)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send the events reported so far, a message per driver and job, out at once (not
        corked until the loop's next iteration: they end a task's round trip)."""
        self._flush_handle = None
        output.flush_pending()  # what tasks printed reaches their driver before their ends
        outbox, self._outbox = self._outbox, {}
        sent_to = []
        for (driver, job_id), events in outbox.items():
            peer = self.node.peers.get(driver)
            if peer is None:
                continue
            sent_to.append(peer)
            try:
                if _plain_events(events):
                    # keys and values (plain, or payloads of their own) always unpickle
                    peer.notify_plain(DRIVER_SERVICE, TASK_EVENTS, job_id, events)
                else:
                    peer.notify(DRIVER_SERVICE, TASK_EVENTS, job_id, events)
            except (SerializationError, MessageTooLarge):
                self._send_one_by_one(peer, job_id, events)
            except NotConnected:
                pass
        for peer in sent_to:
            connection = peer.connection
            if connection is not None:
                connection.flush()

    def _send_one_by_one(self, peer, job_id: int, events: list) -> None:
        """Events of a batch that did not go out, one by one; one that does not either becomes
        a FAILED event of its task, and if even that does not, one carrying text only."""
        for event in events:
            try:
                peer.notify(DRIVER_SERVICE, TASK_EVENTS, job_id, [event])
                continue
            except (SerializationError, MessageTooLarge) as exc:
                error = exc
            except NotConnected:
                return
            key, attempt = event[1], event[2]
            if event[0] == SUCCEEDED:
                error = type(error)(f"the result of task {key!r} cannot be sent to the driver: {error}")
            info = dump_exception(error)
            for failure in ((FAILED, key, attempt, info, False),
                            (FAILED, key, attempt, (None, *info[1:4], None), False)):
                try:
                    peer.notify(DRIVER_SERVICE, TASK_EVENTS, job_id, [failure])
                    break
                except (SerializationError, MessageTooLarge):
                    continue
                except NotConnected:
                    return
            else:
                log.error("%s: the events of task %r of job %s cannot be sent to %s: %s",
                          self.node.name, key, job_id, peer.name, error)

    def _on_peer_lost(self, peer) -> None:
        """A driver gone: cancel its jobs and free their outputs."""
        if peer.node_type != "driver":
            return
        self._held_by.discard(peer.name)
        for driver, job_id in [k for k in self.jobs if k[0] == peer.name]:
            log.info("%s: driver %s lost, cancelling its job %s", self.node.name, driver, job_id)
            self._drop(driver, job_id)

    def close(self) -> None:
        """Cancel everything and end the runner threads (a task that ignores cancellation
        keeps its daemon thread until it returns)."""
        for driver, job_id in list(self.jobs):
            self._drop(driver, job_id)
        with self._lock:
            self._closing = True
            self._cond.notify_all()
        for task in list(self._fetch_tasks):
            task.cancel()
        for thread in self._threads:
            thread.join(1.0)
