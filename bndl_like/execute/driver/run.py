"""The execution shell of one job: feeds the Scheduler, carries out its decisions.

Runs on the context's event loop. Decisions become batched ``tasks.run`` notices
(one per worker per loop iteration); batched task events from the workers become
scheduler events. Results go to the driver thread through a queue.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import operator
import pickle
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from types import FunctionType

import cloudpickle

from ... import config
from ...rmi import NotConnected
from ...rmi.code_location import dumps as dumps_by_value
from ...rmi.errors import SerializationError
from ...rmi.pickle_check import unpicklable_error
from ...rmi.serialize import LOAD_IN_THREAD, OUT_OF_BAND_MIN, Payload, _buffer_callback, wrap_large
from .. import core as S
from ..core import EndJob, JobOutcome, Recorder
from ..core.decisions import fast_constructor
from ..errors import FailedDependency, JobCancelled, TaskCancelled, WorkerDied, WorkersLost, trim_traceback
from ..messages import (
    ABANDONED,
    ATTEMPT,
    DEPS_FAILED,
    ERROR,
    FAILED,
    FAILURES,
    NBYTES,
    RESEND,
    STARTED,
    SUCCEEDED,
    TASKS_SERVICE,
    load_by_value,
    plain_keys,
)
from ..tasks import HANDED_OUT, NOT_FETCHED, NOT_HANDED_OUT, FuncTask, RmiTask, _NoResult, map_chunk
from .recording import JobRecording
from .remote import remote_exception
from .state import DriverState

log = logging.getLogger(__name__)

END = object()


_new_spec = fast_constructor(S.TaskSpec)
_new_succeeded = fast_constructor(S.TaskSucceeded, ("task_id", "worker", "nbytes", "attempt"))
_new_started = fast_constructor(S.TaskStarted, ("task_id", "worker", "attempt"))


# the dependencies of a task that has none, in its run: one dict for all (read only, on both sides)
_NO_DEPS: dict = {}


class _GcPause:
    """The cyclic garbage collector held off while the scheduler of a job is built: the build
    makes millions of objects that all live on, and each collection on the way would walk the
    whole heap again (the job's tasks too) to free none of them. Collections resume as they
    were once the last build running (in any thread) is done; nested and concurrent uses
    count, so a collector the process had turned off stays off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._depth += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._was_enabled:
                gc.enable()


_gc_paused = _GcPause()


def _by_value(fn) -> bytes | None:
    """cloudpickle's pickle of the function ``fn`` when the worker could not import it by name
    (as :func:`~bndl_like.rmi.serialize.pickle_any` decides: the standard pickler fails, or names
    ``__main__``); None when it goes by name, or when it is better pickled with its batch (it
    does not pickle, or it is large: its buffers go out of band there)."""
    try:
        if b"__main__" not in pickle.dumps(fn, protocol=5):
            return None
    except Exception:
        pass
    try:
        data = dumps_by_value(fn, protocol=5)
    except Exception:
        return None
    return data if len(data) < OUT_OF_BAND_MIN else None


class _BatchPickler(pickle.Pickler):
    """The standard pickler for the batches of task runs of one flush, with the one function of
    a batch that goes by value (a script's, a notebook's) pickled by cloudpickle once for all
    of them: every batch carries that pickle, to unpickle as the batch unpickles."""

    def __init__(self) -> None:
        self.file = io.BytesIO()
        self.buffers: list = []
        self.fns: dict[int, tuple] = {}  # id(fn) -> (fn, its pickle, or None: by name)
        self.used: bytes | None = None   # the pickle put in the batch being pickled
        super().__init__(self.file, protocol=5, buffer_callback=_buffer_callback(self.buffers))

    def by_value(self, fn) -> bytes | None:
        entry = self.fns.get(id(fn))
        if entry is None or entry[0] is not fn:
            entry = self.fns[id(fn)] = (fn, _by_value(fn) if type(fn) is FunctionType else None)
        return entry[1]

    def reducer_override(self, obj):
        if type(obj) is not FunctionType:
            return NotImplemented
        data = self.by_value(obj)
        if data is None:
            return NotImplemented
        if self.used is not None:  # a second one: they may share globals; the batch is pickled whole
            raise pickle.PicklingError("a second function to pickle by value")
        self.used = data
        return load_by_value, (data,)

    def dump_batch(self, batch: list) -> Payload | None:
        """The batch's payload; None when it is to be pickled whole, as ``Payload.dump`` does:
        something else in it refers to ``__main__``, it has a second function to pickle by
        value, or it does not pickle with the standard pickler."""
        self.used = None
        self.clear_memo()
        file = self.file
        file.seek(0)
        file.truncate()
        try:
            self.dump(wrap_large(batch))
        except Exception:
            return None
        finally:
            buffers = self.buffers[:]
            self.buffers.clear()
        data = file.getvalue()
        used = self.used
        if data.count(b"__main__") != (0 if used is None else used.count(b"__main__")):
            return None
        return Payload(data, buffers)


def _dump_batch(batch: list, pickler: _BatchPickler | None) -> Payload:
    """``Payload.dump(batch)`` for a batch of task runs; with ``pickler``, a batch whose first
    function goes by value takes it from there (see :class:`_BatchPickler`). Modules registered
    with cloudpickle to go by value: pickled whole, as before."""
    if pickler is not None and pickler.by_value(batch[0][2]) is not None \
            and not cloudpickle.list_registry_pickle_by_value():
        payload = pickler.dump_batch(batch)
        if payload is not None:
            return payload
    return Payload.dump(batch)


def wanted_results(job, results) -> set | None:
    """The ids of the tasks whose results come to the driver (None: all of them)."""
    if isinstance(results, str):
        if results == "all":
            return None
        if results == "sinks":
            needed = {d.id for task in job.tasks for d in task.dependencies}
            return {task.id for task in job.tasks if task.id not in needed}
        raise ValueError(f"results must be 'all', 'sinks' or an iterable of tasks of the job, "
                         f"not {results!r}")
    try:
        chosen = list(results)
    except TypeError:
        raise TypeError(f"results must be 'all', 'sinks' or an iterable of tasks of the job, "
                        f"not {type(results).__name__}") from None
    wanted = set()
    by_id = job._by_id
    for task in chosen:
        if by_id.get(getattr(task, "id", None)) is not task:
            raise ValueError(f"results: {task!r} is not a task of job {job.name}")
        wanted.add(task.id)
    return wanted


class _Unloadable:
    """A result that failed to unpickle in a thread: loading it raises that again."""

    __slots__ = ("error",)

    def __init__(self, error: SerializationError):
        self.error = error

    def load(self):
        raise self.error


class JobRun:
    """The shell of one job on the driver's loop. It reads and changes the driver's state
    (:class:`~bndl_like.execute.driver.state.DriverState`), never the context itself."""

    def __init__(self, driver: DriverState, job, workers, order_results: bool, concurrency, attempts,
                 results="all"):
        self.driver = driver
        self.job = job
        self.loop = driver.loop
        self.restricted = None if workers is None else {getattr(w, "name", w) for w in workers}
        self.order_results = order_results
        self.concurrency = config.get("execute.concurrency", concurrency)
        self.attempts = config.get("execute.attempts", attempts)
        self.worker_deaths = config.get("execute.worker_deaths")
        self.prefetch = config.get("execute.prefetch")
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.task_results: dict = {}     # task id -> result of the event being handled
        self.emitted: set = set()        # ids of results handed out (unordered mode)
        self.next_index = 0
        self.outbox: dict[str, list] = {}
        self.flush_handle = None
        self.used_workers: set[str] = set()
        self._claim = threading.RLock()  # begin() against unclaim() from other threads
        self.begun = False               # begin() called: the job runs (or ran)
        self.cancelled_unbegun = False   # job.cancel() before it began
        self.finished = False
        self.generic: set = set()        # asyncio tasks of non-RMI tasks
        self.result_batch: list | None = None
        self.drained: dict[str, list] = {}  # drained worker -> ids of the outputs it held
        self.wanted = wanted_results(job, results)  # ids of the results to bring (None: all)
        # the tasks whose results are handed out, in task order
        self.handed = job.tasks if self.wanted is None else [t for t in job.tasks if t.id in self.wanted]
        self.plain_ids = False           # every task id travels in the envelope (see prepare)
        # during a flush: the functions of its batches, pickled by value once for all of them
        self._pickler: _BatchPickler | None = None

    # -- life cycle (on the loop) -----------------------------------------------------------------

    def prepare(self) -> None:
        """Check the arguments and build the scheduler (in the caller's thread: pure work)."""
        node = self.driver.node
        workers = [p for p in list(node.peers.values()) if p.node_type == "worker"]
        if self.restricted is not None:
            unknown = self.restricted - {w.name for w in workers}
            if unknown:
                raise ValueError(f"unknown or disconnected workers: {', '.join(sorted(unknown))}")
            workers = [w for w in workers if w.name in self.restricted]
        if not workers:
            raise WorkersLost("no workers are connected; start some or wait with ctx.await_workers()")
        job = self.job
        names = [w.name for w in workers]

        def specs():
            # in the order of the task ids: the scheduler breaks priority ties by spec order
            new_spec = _new_spec
            for task in _priority_order(job.tasks):
                deps = task.dependencies
                priority = task.priority
                if type(task) is FuncTask and task._locality is None:  # no locality: the common case
                    yield new_spec(task.id, tuple([d.id for d in deps]) if deps else (),
                                   0 if priority is None else priority, None, True)
                    continue
                locality = None
                loc = list(task.locality(workers))
                if loc:
                    locality = {getattr(w, "name", w): int(v) for w, v in loc}
                yield new_spec(task.id, tuple([d.id for d in deps]) if deps else (),
                               0 if priority is None else priority, locality, isinstance(task, FuncTask))
        options = {"concurrency": self.concurrency, "prefetch": self.prefetch, "attempts": self.attempts,
                   "worker_deaths": self.worker_deaths, "suspects": True}
        with _gc_paused:
            if config.get("execute.record_events"):
                # everything the scheduler is told and decides, to replay (job.recording)
                spec_list = list(specs())
                recorder = Recorder(S.Scheduler(spec_list, names, **options))
                job.recording = JobRecording(job.name, spec_list, names, options, recorder.recording)
                self.scheduler = recorder
            else:
                self.scheduler = S.Scheduler(specs(), names, **options)
        # once for the job rather than for every batch sent
        self.plain_ids = plain_keys(job._by_id)
        job._run = self  # claimed: nothing else executes it until this run ends or is dropped

    def begin(self) -> bool:
        """The job runs from here on (in the caller's thread; :meth:`start` follows on the loop).
        False when the run was released before (``job.cancel()``, closed results)."""
        job = self.job
        with self._claim:
            if self.finished or job._run is not self:
                return False
            self.begun = True
        job.state = "running"
        job.started_at = time.time()
        job.stopped_at = None
        job.retried = job.done_count = job.failed_count = 0
        for task in job.tasks:
            task.state = "pending"
        return True

    def unclaim(self) -> bool:
        """Give up the claim of a run that never began (its results were closed or dropped, or
        ``job.cancel()`` came first); True when this call gave it up."""
        with self._claim:
            if self.begun or self.finished:
                return False
            self.finished = True
            job = self.job
            if job._run is self:
                job._run = None
                job._cancel_requested = False
            return True

    def start(self) -> None:
        """Begin on the loop: first decisions out. Failures end up raised by execute()."""
        try:
            job = self.job
            self.driver.runs[job.id] = self
            # workers lost or joined since prepare()
            live = {p.name for p in self.driver.node.peers.values() if p.node_type == "worker"}
            known = list(self.scheduler.workers)
            joined = [w for w in sorted(live.difference(known))
                      if self.restricted is None or w in self.restricted]
            stimuli = [S.WorkerLost(w) for w in known if w not in live]
            stimuli += [S.WorkerAdded(w) for w in joined]
            # workers held in the context get no task of this job (before the first fill)
            stimuli += [S.WorkerHeld(w) for w in known + joined if w in self.driver.held and w in live]
            self.apply(self.scheduler.handle(*stimuli) if stimuli else self.scheduler.start())
            if self.flush_handle is not None:  # the first tasks leave now, not next iteration
                self.flush_handle.cancel()
                self._flush()
            if job._cancel_requested:
                job._cancel_requested = False
                self.cancel()
        except BaseException as exc:
            log.exception("job %s could not start", self.job.name)
            self._finish("failed", exc)

    def cancel_threadsafe(self) -> None:
        with self._claim:
            if not self.begun:  # nothing runs anywhere: the job is free again
                self.cancelled_unbegun = True
                self.unclaim()
                return
        self.loop.call_soon_threadsafe(self.cancel)

    def cancel(self) -> None:
        if not self.finished:
            self.apply(self.scheduler.handle(S.CancelJob()))

    def worker_added(self, peer) -> None:
        if not self.finished and peer.node_type == "worker" and (
                self.restricted is None or peer.name in self.restricted):
            self._fire("worker_joined", peer.name, ctx_too=False)
            events = [S.WorkerAdded(peer.name)]
            if peer.name in self.driver.held:
                events.append(S.WorkerHeld(peer.name))
            self.apply(self.scheduler.handle(*events))

    def worker_lost(self, peer) -> None:
        if not self.finished and peer.name in self.scheduler.workers:
            self._fire("worker_lost", peer.name, ctx_too=False)
            self.apply(self.scheduler.handle(S.WorkerLost(peer.name)))

    def set_held(self, worker: str, held: bool) -> None:
        """The context held or released ``worker``: tell the scheduler (a drained worker that
        this job let go of joins it again on release)."""
        if self.finished:
            return
        if held:
            if worker in self.scheduler.workers:
                self.apply(self.scheduler.handle(S.WorkerHeld(worker)))
        elif worker in self.scheduler.workers:
            self.apply(self.scheduler.handle(S.WorkerResumed(worker)))
        elif worker in self.drained and worker in self.driver.node.peers:
            del self.drained[worker]
            self.apply(self.scheduler.handle(S.WorkerAdded(worker)))

    def drain_step(self, worker: str) -> bool:
        """One check of a drain (on the loop): True when ``worker`` runs no task of this job and
        the outputs it held that are still needed were computed again elsewhere.

        Once nothing of the job runs on the held worker, the job lets go of it (``WorkerLost``
        for this job only), so that the scheduler re-runs the lost outputs still needed. With
        no other usable worker the outputs stay where they are and the drain waits for the
        job to end.
        """
        if self.finished:
            return True
        sched = self.scheduler
        if worker in self.drained:
            return all(sched.state(t) in ("done", "lost") for t in self.drained[worker])
        if worker not in sched.workers:
            return True
        if sched.assigned(worker):
            return False
        outputs = sched.outputs(worker)
        if not outputs:
            return True
        if not any(w != worker and w not in self.driver.held for w in sched.workers):
            return False
        self.drained[worker] = outputs
        self.apply(sched.handle(S.WorkerLost(worker)))
        return self.drain_step(worker)

    def _fire(self, event: str, arg, ctx_too: bool = True) -> None:
        """Queue the hooks of ``event`` (the job's, and the context's unless ``ctx_too`` is false)."""
        driver = self.driver
        driver.hook_runner.fire(event, arg, driver.hooks if ctx_too else None, self.job._hooks)

    def _hooked(self) -> bool:
        """Whether any hook is registered (on the context or the job): per task, the hooks
        are fired only then."""
        return bool(self.driver.hooks.fns or self.job._hooks.fns)

    # -- events from workers ----------------------------------------------------------------------

    def on_task_events(self, worker: str, events: list) -> None:
        if self.finished:
            return
        stimuli = []
        append = stimuli.append
        wanted, task_results = self.wanted, self.task_results
        new_succeeded = _new_succeeded
        for event in events:
            kind, key = event[0], event[1]
            if kind == SUCCEEDED:
                value = event[3]
                if type(value) is Payload or type(value) is _Unloadable:
                    if type(value) is Payload and value.nbytes >= LOAD_IN_THREAD:
                        self._load_later(worker, event)
                        continue
                    try:
                        value = value.load()
                    except SerializationError as exc:
                        # unpickling it again will not help: the task fails, without a retry
                        error = SerializationError(f"the result of task {key!r} cannot be unpickled "
                                                   f"on the driver: {exc}")
                        append(S.TaskFailed(key, worker, error, retry=False))
                        continue
                if wanted is None or key in wanted:
                    task_results[key] = value
                append(new_succeeded(key, worker, event[NBYTES], event[ATTEMPT]))
            elif kind == STARTED:
                append(_new_started(key, worker, event[ATTEMPT]))
            elif kind == FAILED:
                task = self.job.task(key)
                retry = len(event) < 5 or bool(event[4])
                stimuli.append(S.TaskFailed(key, worker, remote_exception(event[ERROR], worker, task), retry,
                                            event[ATTEMPT]))
            elif kind == DEPS_FAILED:
                stimuli.append(S.TaskDependenciesFailed(key, worker, event[FAILURES], event[ATTEMPT]))
            elif kind == ABANDONED:
                # given up without being asked (e.g. the worker is stopping): run it elsewhere
                stimuli.append(S.TaskAbandoned(key, worker, event[ATTEMPT]))
            elif kind == RESEND:
                self._resend(worker, key, event[2])
        self.apply(self.scheduler.handle(*stimuli))
        self.task_results.clear()

    # -- decisions ---------------------------------------------------------------------------------

    def apply(self, decisions: list) -> None:
        job = self.job
        by_id = job._by_id
        hooked = self._hooked()
        RunTask, MarkTaskDone = S.RunTask, S.MarkTaskDone
        task_results = self.task_results
        take_backs: dict[str, list] | None = None
        for decision in decisions:
            kind = type(decision)
            if kind is RunTask:
                task = by_id[decision.task_id]
                self._run_task(decision, task)
                if hooked:
                    self._fire("task_started", task)
            elif kind is MarkTaskDone:
                task_id = decision.task_id
                task = by_id[task_id]
                if task.state != "done":
                    job.done_count += 1
                task.mark_done(task_results.get(task_id, NOT_FETCHED))
                self._emit(task)
                if hooked:
                    self._fire("task_done", task)
            elif kind is S.TakeBack:  # asked of each worker at once, after the loop
                if take_backs is None:
                    take_backs = {}
                ids = take_backs.get(decision.worker)
                if ids is None:
                    ids = take_backs[decision.worker] = []
                ids.append(decision.task_id)
            elif kind is S.CancelTask:
                self._send(decision.worker, "cancel", [decision.task_id])
            elif kind is S.RetryTask:
                job.retried += 1
                log.info("job %s: task %r failed on %s, retrying: %s", job.name, decision.task_id,
                         decision.worker, decision.error)
                task = job.task(decision.task_id)
                task.mark_pending()
                self._fire("task_retried", task)
            elif kind is S.MarkOutputLost:
                task = job.task(decision.task_id)
                if task.state == "done":
                    job.done_count -= 1
                job.retried += 1
                task.mark_failed(FailedDependency(decision.worker))
            elif kind is EndJob:
                self._end(decision)
        if take_backs is not None and not self.finished:
            for worker, ids in take_backs.items():
                self._take_back(worker, ids)

    def _end(self, decision: EndJob) -> None:
        """Carry out the scheduler's EndJob."""
        job = self.job
        outcome = decision.outcome
        if outcome is JobOutcome.DONE:
            self._finish("done")
        elif outcome is JobOutcome.CANCELLED:
            self._finish("cancelled", JobCancelled(f"job {job.name} was cancelled"))
        elif decision.deaths:
            # the task killed its workers: the job fails once the last one's exit status is known
            # (or not, in 2 s)
            runner = self.loop.create_task(self._fail_with_exit_status(decision))
            self.generic.add(runner)
            runner.add_done_callback(self.generic.discard)
        else:
            self._fail(decision.task_id, decision.error, decision.reason)

    def _fail(self, task_id, error: BaseException | None, reason: str) -> None:
        job = self.job
        if task_id is not None:
            task = job.task(task_id)
            task.mark_failed(error)
            job.failed_count += 1
            self._fire("task_failed", task)
        self._finish("failed", WorkersLost(reason) if error is None else error)

    def _run_task(self, decision, task) -> None:
        worker = decision.worker
        task.set_executing(worker)
        if isinstance(task, RmiTask):
            batch = self.outbox.get(worker)
            if batch is None:  # (once per worker per flush: the outbox is taken at each)
                batch = self.outbox[worker] = []
                self.used_workers.add(worker)
            batch.append(self._spec(task, decision.attempt))
            if self.flush_handle is None:
                self.flush_handle = self.loop.call_soon(self._flush)
        else:
            self.used_workers.add(worker)
            runner = self.loop.create_task(self._run_generic(task, decision.worker))
            self.generic.add(runner)
            runner.add_done_callback(self.generic.discard)

    async def _fail_with_exit_status(self, decision: EndJob) -> None:
        deaths = decision.deaths
        error = WorkerDied(decision.task_id, deaths[-1], len(deaths), list(deaths))
        error.limit = self.worker_deaths
        try:
            error.exit_status = await asyncio.to_thread(self.driver.exit_status, error.worker, 2.0)
        except Exception:
            log.debug("no exit status for %s", error.worker, exc_info=True)
        if not self.finished:
            self._fail(decision.task_id, error, decision.reason)

    def _load_later(self, worker: str, event: tuple) -> None:
        """Unpickle a large result in a thread (the loop keeps its heartbeats going), then
        hand the event on. The scheduler ignores it if the task moved on meanwhile."""
        async def load():
            payload = event[3]
            try:
                value = await asyncio.to_thread(payload.load)
            except SerializationError as exc:
                value = _Unloadable(exc)
            self.on_task_events(worker, [(*event[:3], value, *event[4:])])
        runner = self.loop.create_task(load())
        self.generic.add(runner)
        runner.add_done_callback(self.generic.discard)

    def _spec(self, task, attempt: int) -> tuple:
        """What a worker needs to run ``task``."""
        if task.dependencies:
            location = self.scheduler.location
            deps = {d.id: location(d.id) for d in task.dependencies}
        else:
            deps = _NO_DEPS
        send = self.wanted is None or task.id in self.wanted
        return (task.id, attempt, task.method, task.args, task.kwargs, deps, task.thread_timeout, send,
                self.scheduler.suspect(task.id))

    def _resend(self, worker: str, key, attempt: int) -> None:
        """A batch did not unpickle on ``worker``: send this task of it on its own."""
        if self.scheduler.state(key) != "assigned":
            return
        self._notify_run(worker, [self._spec(self.job.task(key), attempt)])

    def _notify_run(self, worker: str, batch: list) -> None:
        keys = list(map(_key_attempt, batch))
        peer = self.driver.node.peers[worker]
        # every id of the job plain (known once), or at least those of this batch
        plain = self.plain_ids or plain_keys(map(_key_of, batch))
        payload = _dump_batch(batch, self._pickler)
        if plain:
            # the keys always unpickle: they go in the envelope, the specs in their own payload
            peer.notify_plain(TASKS_SERVICE, "run", self.job.id, self.concurrency, keys, payload)
        else:
            peer.notify(TASKS_SERVICE, "run", self.job.id, self.concurrency, keys, payload)

    async def _run_generic(self, task, worker: str) -> None:
        peer = self.driver.node.peers.get(worker)
        self.on_task_events(worker, [(STARTED, task.id, 0)])
        try:
            if peer is None:
                raise NotConnected(f"{worker} is not connected")
            result = await task.execute(self.scheduler, peer)
        except NotConnected:
            self.on_task_events(worker, [(ABANDONED, task.id, 0)])
        except Exception as exc:
            if not self.finished:
                self.apply(self.scheduler.handle(S.TaskFailed(task.id, worker, exc)))
        else:
            self.on_task_events(worker, [(SUCCEEDED, task.id, 0, result, 0)])

    def _flush(self) -> None:
        """Send the tasks decided so far, a ``tasks.run`` notice per worker, out at once."""
        self.flush_handle = None
        outbox, self.outbox = self.outbox, {}
        node = self.driver.node
        # a function pickled by value (a script's, a notebook's) is pickled once for all the
        # batches of this flush, not once per worker
        self._pickler = _BatchPickler() if len(outbox) > 1 else None
        try:
            for worker, batch in outbox.items():
                peer = node.peers.get(worker)
                try:
                    if peer is None:
                        raise NotConnected(worker)
                    self._notify_run(worker, batch)
                    connection = peer.connection
                    if connection is not None:
                        connection.flush()
                except (NotConnected, KeyError):
                    if not self.finished and worker in self.scheduler.workers:
                        self.apply(self.scheduler.handle(S.WorkerLost(worker)))
                except Exception as exc:  # e.g. an argument that cannot be pickled
                    self._fail_unsendable(worker, batch, exc)
        finally:
            self._pickler = None

    def _fail_unsendable(self, worker: str, batch: list, exc: Exception) -> None:
        stimuli = []
        for spec in batch:
            try:
                self._notify_run(worker, [spec])
            except (NotConnected, KeyError):
                if not self.finished and worker in self.scheduler.workers:
                    self.apply(self.scheduler.handle(S.WorkerLost(worker)))
                return
            except SerializationError as one:
                # one line naming the part that cannot be pickled (searched for the first few tasks)
                error = self._unsendable_error(spec, one, detailed=len(stimuli) < 10)
                # an argument that cannot be pickled fails on every attempt: do not retry it
                stimuli.append(S.TaskFailed(spec[0], worker, error, retry=False))
            except Exception as one:
                error = type(one)(f"task {spec[0]!r} cannot be sent to a worker: {one}")
                stimuli.append(S.TaskFailed(spec[0], worker, error, retry=False))
        if stimuli and not self.finished:
            self.apply(self.scheduler.handle(*stimuli))

    def _unsendable_error(self, spec: tuple, exc: Exception, detailed: bool = True) -> Exception:
        """A task's ``(task_id, attempt, method, args, kwargs, ...)`` that does not pickle, as an
        UnpicklableError naming the part (of ``fn``/``args``/``kwargs``; of a ``map``, its
        ``fn``/item/extra ``args``). Raised without the pickling chain (``cause`` keeps it)."""
        task_id, method, args, kwargs = spec[0], spec[2], spec[3], spec[4]
        job = self.job
        if method is map_chunk and len(args) >= 2:
            fn, items = args[0], args[1]
            start = 0  # the chunk's first item: map's tasks hold consecutive chunks, in order
            for task in job.tasks:
                if task.id == task_id:
                    break
                start += len(task.args[1])

            def show_path(path: str) -> str:
                if not path.startswith("items["):
                    return path
                index, _, rest = path[len("items["):].partition("]")
                return f"item {start + int(index)}" + (f", at {rest}" if rest else "")
            name = getattr(fn, "__name__", None) or type(fn).__name__
            what = f"map({name}) cannot be sent to the workers"
            parts = [("fn", fn), ("items", items), ("args", tuple(args[2:]))]
            advice = "create it inside the function, or pass something picklable"
        else:
            show_path = None
            what = f"task {task_id!r} of job {job.name} cannot be sent to a worker"
            parts = [("fn", method), ("args", args), ("kwargs", kwargs)]
            advice = "create it inside the task, or pass something picklable"
        return unpicklable_error(what, parts if detailed else [], advice, exc, show_path)

    def _take_back(self, worker: str, task_ids: list) -> None:
        """Ask ``worker`` for the tasks ``task_ids`` it has not started (one call for all the
        TakeBacks of a batch of decisions); each answer goes to the scheduler."""
        peer = self.driver.node.peers.get(worker)

        async def take_back():
            try:
                given = await peer.call(TASKS_SERVICE, "take_back", self.job.id, task_ids)
            except (NotConnected, AttributeError):
                return  # the loss is handled as WorkerLost
            if not self.finished:
                given = set(given)
                self.apply(self.scheduler.handle(*[S.TaskTakenBack(task_id, worker, task_id in given)
                                                   for task_id in task_ids]))
        runner = self.loop.create_task(take_back())
        self.generic.add(runner)
        runner.add_done_callback(self.generic.discard)

    def _send(self, worker: str, method: str, keys) -> None:
        peer = self.driver.node.peers.get(worker)
        if peer is not None:
            try:
                peer.notify(TASKS_SERVICE, method, self.job.id, keys)
            except NotConnected:
                pass

    # -- results -----------------------------------------------------------------------------------

    def _emit(self, task) -> None:
        """Hand out a result once: in task order, or as it comes. The driver keeps no reference
        to a result handed out (the task remembers it was)."""
        if not self.order_results:
            if task.id not in self.emitted and (self.wanted is None or task.id in self.wanted):
                self.emitted.add(task.id)
                self._put(task._result)
                task._result = HANDED_OUT
            return
        tasks = self.handed
        i = self.next_index
        if i >= len(tasks) or tasks[i] is not task:
            return  # not its turn yet, not wanted, or handed out before (a re-run after a loss)
        batch = self.result_batch
        if batch is None:
            batch = self.result_batch = []
            self.loop.call_soon(self._hand_over)
        n = len(tasks)
        while i < n:
            done = tasks[i]
            if done.state != "done":
                break
            batch.append(done._result)
            done._result = HANDED_OUT
            i += 1
        self.next_index = i

    def _put(self, item) -> None:
        """Results cross to the driver thread in batches: one hand-over per loop iteration."""
        if self.result_batch is None:
            self.result_batch = []
            self.loop.call_soon(self._hand_over)
        self.result_batch.append(item)

    def _hand_over(self) -> None:
        batch, self.result_batch = self.result_batch, None
        if batch:
            self.results.put(batch)

    def _finish(self, state: str, error: BaseException | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        job = self.job
        job.state = state
        job.stopped_at = time.time()
        job._run = None
        self.driver.runs.pop(job.id, None)
        job.error = error
        hooked = self._hooked()
        for task in job.tasks:
            if task.state not in _ENDED:
                task.cancel()
                if hooked:
                    self._fire("task_cancelled", task)
        self._fire("job_done" if state == "done" else "job_failed", job)
        for runner in list(self.generic):
            runner.cancel()
        for worker in self.used_workers:
            peer = self.driver.node.peers.get(worker)
            if peer is not None:
                try:  # an int and None: plain arguments, in the envelope
                    if state != "done":
                        peer.notify_plain(TASKS_SERVICE, "cancel", job.id, None)
                    peer.notify_plain(TASKS_SERVICE, "forget_job", job.id)
                except NotConnected:
                    pass
        if state == "done" and self.order_results:
            # a task whose output was lost after it succeeded is marked failed for its re-run; the
            # job may end before that re-run (nothing needs it any more): its result still counts
            for task in self.handed[self.next_index:]:
                if task._result is not None and type(task._result) is _NoResult:
                    continue
                if task.state != "done":
                    task.state = "done"
                    task._exception = None
                self._put(task._result)
                task._result = HANDED_OUT
            self.next_index = len(self.handed)
        handed = self.emitted if not self.order_results else {t.id for t in self.handed[:self.next_index]}
        for task in job.tasks:  # results still held: of re-runs, or never handed out (a failed job)
            if task._result is not None and type(task._result) is not _NoResult:
                task._result = HANDED_OUT if task.id in handed else NOT_HANDED_OUT
        self.driver.jobs._ended(job)
        if error is not None:
            self._put(_Failure(error))
        self._put(END)
        self._hand_over()  # the caller's wait ends now, not at the loop's next iteration


class _ResultsStatus:
    """What a JobResults' finalizer needs to know (it must not refer to the JobResults)."""

    __slots__ = ("run", "begun", "ended", "closed", "looped", "read")

    def __init__(self, run: JobRun):
        self.run = run
        self.begun = False   # the first next() started the job
        self.ended = False   # the job's end was read (StopIteration or its error)
        self.closed = False  # close() or a with block
        self.looped = False  # iter() was called: a for loop, list(), ...
        self.read = 0        # results handed to the caller


class JobResults(Iterator):
    """The results of ``ctx.execute(job)``: iterate them to run the job.

    The job starts on the first ``next()`` (a ``for`` loop, ``list(...)``) or ``start()``,
    never before, so results dropped unread run nothing (a RuntimeWarning says so). Leaving a ``for`` loop
    early, ``close()`` or the end of a ``with`` block cancels the rest of the job; results
    dropped half-read after ``next()`` calls cancel it too, with a RuntimeWarning.
    """

    def __init__(self, ctx, run: JobRun, progress: bool):
        self._ctx = ctx
        self._run = run
        self._progress = progress
        self._results = None  # the generator reading the run's queue, from the first next()
        self._status = _ResultsStatus(run)
        # the registry of finalizers holds the status (and so the job) strongly: detached once
        # the end was read, or a failed job's traceback (through __next__) would keep it alive
        self._finalizer = weakref.finalize(self, _results_dropped, self._status)

    @property
    def job(self):
        """The Job these are the results of."""
        return self._run.job

    def __iter__(self) -> JobResults:
        self._status.looped = True
        return self

    def start(self) -> JobResults:
        """Start the job now, before reading a result (it runs while the caller does something
        else); read the results afterwards. Returns these results."""
        __tracebackhide__ = True  # noqa: F841
        status = self._status
        if self._results is None and not status.closed:
            status.begun = True
            try:
                self._results = self._ctx._begin_job(self._run, self._progress)
            except BaseException as exc:
                self._ended()
                raise trim_traceback(exc)  # raised here: no framework frame below this one
        return self

    def __next__(self):
        __tracebackhide__ = True  # IPython and pytest fold this frame  # noqa: F841
        results = self._results
        if results is None:
            if self._status.closed:
                raise StopIteration
            results = self.start()._results
        status = self._status
        try:
            item = next(results)
        except StopIteration:
            self._ended()
            raise
        except BaseException as exc:
            self._ended()
            error = trim_traceback(exc)
            # the traceback keeps this frame, and the job keeps the error: not the job through it
            del self, results, status
            raise error
        status.read += 1
        return item

    def _ended(self) -> None:
        self._status.ended = True
        self._finalizer.detach()

    def close(self) -> None:
        """Stop here: a job not started never runs; a running one is cancelled on every worker."""
        status = self._status
        status.closed = True
        if self._results is None:
            self._run.unclaim()
            return
        self._results.close()  # cancels, when it was read from and the job did not end
        if not self._run.finished:  # started, never read from
            self._ctx._cancel_run(self._run)

    def __enter__(self) -> JobResults:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        run, status = self._run, self._status
        job = run.job
        total = len(job.tasks)
        head = f"<results of job {job.name!r} ({total} task{'' if total == 1 else 's'})"
        if not status.begun:
            if status.closed or run.cancelled_unbegun:
                return f"{head}: closed before it started; the job did not run>"
            return f"{head}: not started \N{EM DASH} iterate it (for r in \N{HORIZONTAL ELLIPSIS}, " \
                   f"list(\N{HORIZONTAL ELLIPSIS})) to run the job>"
        counts = job.counts
        done = f"{counts['done']}/{total} done"
        for key in ("failed", "cancelled"):
            if counts[key]:
                done += f", {counts[key]} {key}"
        read = f"{status.read} of {len(run.handed)} results read"
        state = "running" if not run.finished else job.state
        return f"{head}: {state}, {done}; {read}>"


def _results_dropped(status: _ResultsStatus) -> None:
    """A JobResults was garbage-collected: say what happened to a job whose results were not
    read (warnings point at the line that dropped them)."""
    run = status.run
    if status.closed or status.ended:
        return
    job = run.job
    if not status.begun:
        if run.unclaim():
            warnings.warn(f"the results of job {job.name!r} ({len(job.tasks)} tasks) were dropped "
                          "without being iterated, so the job never ran; iterate them to run it: "
                          "`for result in ctx.execute(job): ...` or `list(ctx.execute(job))`",
                          RuntimeWarning, stacklevel=3)
        return
    if status.looped or run.finished or job._cancel_requested:
        return  # a for loop left early: cancelled as documented (the generator's close does it)
    run.cancel_threadsafe()
    warnings.warn(f"job {job.name!r} was cancelled because its results were not read: they were "
                  f"dropped after {status.read} of {len(run.handed)}; read them all (a for loop, "
                  "list(...)), or stop it on purpose with .close() on the results or job.cancel()",
                  RuntimeWarning, stacklevel=3)


def split_batch(batch: list | None, bar=None) -> tuple[list, bool, BaseException | None]:
    """A hand-over batch as (results, whether the job ended, the error it ended with); None
    when no batch came in time. ``bar`` (a JobProgress) is redrawn on the way."""
    if batch is None:
        if bar is not None:
            bar.update()
        return [], False, None
    items, ended, error = _split(batch)
    if bar is not None:
        bar.update(force=ended)
    return items, ended, error


def _split(batch: list) -> tuple[list, bool, BaseException | None]:
    for i, item in enumerate(batch):
        if item is END:
            return batch[:i], True, None
        if type(item) is _Failure:
            return batch[:i], True, item.error
    return batch, False, None


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


_ENDED = frozenset({"done", "failed", "cancelled"})  # the states in which Task.done is true
_task_id = operator.attrgetter("id")
_key_attempt = operator.itemgetter(0, 1)  # a task run's (key, attempt)
_key_of = operator.itemgetter(0)


def _priority_order(tasks: list) -> list:
    """Tasks in the order of their ids when those compare, else as given."""
    try:
        return sorted(tasks, key=_task_id)
    except TypeError:
        return list(tasks)


__all__ = ["JobResults", "JobRun", "END", "TaskCancelled"]
