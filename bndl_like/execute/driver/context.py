"""The ExecutionContext: the driver's handle on a cluster.

The synchronous API runs over an event loop in a background thread (so it also
works in Jupyter, whose main thread already runs a loop); every wait has a
timeout or a cancellation path.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ... import config
from ...display import context_html, context_repr, esc
from ...local import LocalWorkers
from ...rmi import Node, takes_peer
from ..errors import JobCancelled, trim_traceback
from ..hooks import HookRunner
from ..messages import DRIVER_SERVICE, TASKS_SERVICE
from ..tasks import Job
from .executor import ExecutorMixin
from .output import OutputMixin, resolve_forward_output
from .portal import Portal
from .progress import JobProgress
from .progress import check as check_progress
from .progress import wanted as progress_wanted
from .run import JobResults, JobRun, split_batch
from .state import DriverState

if TYPE_CHECKING:
    from ...profile import CpuProfiling, MemoryProfiling

log = logging.getLogger(__name__)
_open_contexts: weakref.WeakSet = weakref.WeakSet()


class _DriverService:
    """The ``driver`` service: receives batched task events from workers."""

    def __init__(self, ctx: ExecutionContext):
        self.ctx = weakref.ref(ctx)  # the node must not keep its context alive

    @takes_peer
    def task_events(self, worker, job_id: int, events: list) -> None:
        ctx = self.ctx()
        run = None if ctx is None else ctx._state.runs.get(job_id)
        if run is not None:
            run.on_task_events(worker.name, events)
            run.driver.changes.notify()  # a drain may wait for it


def _weakly(method):
    """A callback calling ``method`` while its object lives (None after): what the node's loop
    and the driver's state hold must not keep the context alive (it is stopped when
    garbage-collected)."""
    ref = weakref.WeakMethod(method)

    def call(*args):
        bound = ref()
        return None if bound is None else bound(*args)
    return call


class _Parts:
    """What stopping a context needs, apart from the context: a garbage-collected context
    is stopped from these (``weakref.finalize`` must not refer to the context itself)."""

    def __init__(self, portal: Portal, hook_runner: HookRunner):
        self.portal = portal
        self.hook_runner = hook_runner
        self.node: Node | None = None
        self.local: LocalWorkers | None = None
        self.name = "?"
        self.closed = False  # close() was called (not a garbage collection)


def _stop_parts(parts: _Parts) -> None:
    """Stop the driver node, the local workers, the loop and the hook thread. Run once, by
    ``close()`` or when the context is garbage-collected."""
    if parts.portal.in_loop_thread():  # collected on the loop: stop from outside it
        threading.Thread(target=_stop_parts, args=(parts,), name="bndl-like-driver-stop").start()
        return
    if not parts.closed:
        log.info("ExecutionContext %s was garbage-collected without close(): stopping it%s",
                 parts.name, "" if parts.local is None else " and its local workers")
    if parts.local is not None:  # first: workers that outlive their seed log that they lost it
        parts.local.stop()
    node = parts.node
    try:
        if node is not None and node.running:
            parts.portal.run(node.stop(), timeout=10)
    except Exception:
        log.exception("error while stopping the driver node")
    parts.portal.stop()
    parts.hook_runner.close()


def _open_local_clusters() -> list:
    return [c for c in list(_open_contexts) if c._local is not None and not c._closed]


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside this module, for a warning issued here."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


class ExecutionContext(ExecutorMixin, OutputMixin):
    """The driver's handle on a cluster of workers.

    ``ExecutionContext()`` starts a local cluster of ``os.cpu_count()`` worker
    processes (or joins ``BNDL_LIKE_SEEDS`` when set); ``seeds=[...]`` joins a
    cluster; ``seeds=[]`` makes this driver the seed workers join. ``tls_cert``,
    ``tls_key`` and ``tls_ca`` (PEM files) turn on TLS, for a local cluster's workers too.
    ``forward_output``: write what tasks print and log here (None: on for a local cluster
    and in an interactive session; see :mod:`bndl_like.execute.output`).
    """

    def __init__(self, seeds: Iterable[str] | None = None, secret: str | bytes | None = None, *,
                 listen: str | None = None, workers: int | None = None, cluster: str | None = None,
                 progress: bool | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 tls_ca: str | None = None, start_timeout: float = 60, forward_output: bool | None = None,
                 **node_options):
        if seeds is None and not os.environ.get(config.env_name("seeds")):
            local_workers = workers if workers is not None else (os.cpu_count() or 1)
            if not isinstance(local_workers, int) or isinstance(local_workers, bool) or local_workers < 1:
                raise ValueError(f"workers must be a positive int, not {workers!r}")
            if secret is None:
                secret = LocalWorkers.new_secret()
            seeds = []
            listen = listen or "tcp://127.0.0.1:0"
        else:
            if workers is not None:
                raise ValueError("workers= starts a local cluster; it cannot be combined with seeds")
            local_workers = 0
        # what tasks print and log, written here (None: auto, on for a local cluster and in notebooks)
        forward_output = resolve_forward_output(forward_output, bool(local_workers))
        if local_workers:
            for other in _open_local_clusters():
                warnings.warn("another local cluster of this process is still open: "
                              f"{other._describe_local()}; close it (ctx.close(), or "
                              "`with ExecutionContext.local() as ctx:`) unless you mean to run both "
                              "(it also stops once nothing refers to it)",
                              RuntimeWarning, stacklevel=_caller_stacklevel())
        self._portal = Portal("bndl-like-driver")
        self._loop = self._portal.loop
        self._hook_runner = HookRunner()
        # stops what this context started when it is closed, or garbage-collected unclosed
        self._parts = parts = _Parts(self._portal, self._hook_runner)
        self._finalizer = weakref.finalize(self, _stop_parts, parts)
        self._finalizer.atexit = False  # _close_all closes what is open at exit, in full
        tls = {"tls_cert": tls_cert, "tls_key": tls_key, "tls_ca": tls_ca}
        try:
            self._node = parts.node = Node(node_type="driver", listen=listen, seeds=seeds, secret=secret,
                                           cluster=cluster, **tls, **node_options)
        except BaseException:
            self._finalizer()
            raise
        parts.name = self._node.name
        # what the driver knows (its node, running jobs, held workers, hooks), read on the loop
        self._state = state = DriverState(self._portal, self._hook_runner, self._node,
                                          config.get("execute.keep_jobs"))
        self._node.add_service(DRIVER_SERVICE, _DriverService(self))
        self._init_output(forward_output)
        # the node (held by its loop's tasks) refers to this context weakly, so that a context
        # garbage-collected unclosed is stopped (weakref.finalize above)
        for service in list(self._node.services.values()):
            if getattr(service, "ctx", None) is self:
                service.ctx = weakref.proxy(self)
        # running jobs, and the last execute.keep_jobs ended ones (their summaries once dropped)
        self.jobs = state.jobs
        state.exit_status = _weakly(self._exit_status)
        self._local: LocalWorkers | None = None
        self._closed = False
        # None: the execute.progress option (auto: on in an interactive session)
        self.progress = check_progress(progress)
        self._expected = local_workers
        try:
            self._portal.run(self._start())
            if local_workers:
                self._local = parts.local = LocalWorkers(local_workers, self._node.addresses[0],
                                                         self._node.secret, self._node.cluster, **tls)
                self._await_local(local_workers, start_timeout)
        except BaseException:
            self.close()
            raise
        _open_contexts.add(self)

    def _await_local(self, count: int, timeout: float) -> None:
        """Return once the ``count`` local workers joined; a clear error if they do not in time."""
        try:
            connected = self.await_workers(count, stable_timeout=timeout)
        except TimeoutError:
            connected = self.worker_count
        if connected < count:
            raise TimeoutError(f"the local cluster did not start: {connected} of {count} workers joined "
                               f"within start_timeout={timeout:g} s (a loaded machine may need more; "
                               f"workers log to this process's stderr)")

    def _describe_local(self) -> str:
        """One line for a warning: the context and its local workers' pids."""
        local = self._local
        pids = [] if local is None else [p.pid for p in local.processes]
        return (f"ExecutionContext {self._node.name} with {len(pids)} worker "
                f"process{'' if len(pids) == 1 else 'es'} (pids {', '.join(map(str, pids)) or '-'})")

    @classmethod
    def local(cls, workers: int | None = None, **options) -> ExecutionContext:
        """A local cluster of ``workers`` processes (default ``os.cpu_count()``)."""
        return cls(seeds=None, workers=workers if workers is not None else (os.cpu_count() or 1),
                   **options)

    async def _start(self) -> None:
        await self._node.start()
        self._node.on_peer_added.append(_weakly(self._on_peer_added))
        self._node.on_peer_lost.append(_weakly(self._on_peer_lost))

    def _exit_status(self, worker: str, timeout: float) -> str | None:
        """How ``worker`` ended ("killed by SIGKILL", "exited with code 3"), when this context
        started it (a local cluster); None when unknown. Blocks up to ``timeout`` s."""
        pid = self._state.worker_pids.get(worker)
        if pid is None or self._local is None:
            return None
        return self._local.exit_status(pid, timeout)

    def _on_peer_added(self, peer) -> None:
        self._state.changes.notify()
        if peer.node_type == "worker":
            if isinstance(peer.pid, int):
                pids = self._state.worker_pids
                pids[peer.name] = peer.pid
                if len(pids) > 4096:  # bounded, however many workers come and go
                    del pids[next(iter(pids))]
            self._hook_runner.fire("worker_joined", peer.name, self._state.hooks)
            if peer.name in self._state.held:
                self._tell_held(peer.name, True)
        for run in self._state.runs.values():
            run.worker_added(peer)

    def _on_peer_lost(self, peer) -> None:
        self._state.changes.notify()
        if peer.node_type == "worker":
            self._hook_runner.fire("worker_lost", peer.name, self._state.hooks)
        for run in self._state.runs.values():
            run.worker_lost(peer)

    # -- hooks ------------------------------------------------------------------------------------

    def add_hook(self, event: str, fn) -> None:
        """Call ``fn(arg)`` on ``event`` of every job (see :mod:`bndl_like.execute.hooks`).

        Hooks run in order in one thread of their own, never on the driver's event loop;
        one that raises is logged. Unknown event names raise ValueError.
        """
        self._state.hooks.add(event, fn)

    # -- holding and draining workers -------------------------------------------------------------

    def _worker_name(self, worker) -> str:
        name = getattr(worker, "name", worker)
        if not isinstance(name, str):
            raise TypeError(f"a worker or a worker name, not {type(worker).__name__}")
        if name not in self._state.held and name not in {w.name for w in self.workers}:
            raise ValueError(f"unknown worker {name!r}")
        return name

    def stop_task(self, task) -> bool:
        """Suspend a running command task (SIGSTOP to its process group); True when sent.

        Not SIGTSTP: the command runs in a session of its own, an orphaned process
        group for which the kernel discards SIGTSTP.
        """
        return self._signal_task(task, signal.SIGSTOP)

    def continue_task(self, task) -> bool:
        """Resume a command task suspended by :meth:`stop_task` (SIGCONT); True when sent."""
        return self._signal_task(task, signal.SIGCONT)

    def _signal_task(self, task, signum: int) -> bool:
        self._check_open()
        run = next((r for r in self._state.runs.values() if r.job._by_id.get(task.id) is task), None)
        if run is None or not task.running:
            raise RuntimeError(f"task {task.id!r} is not running")
        worker = self._node.peers.get(task.executed_on_last())
        if worker is None:
            return False
        job_id = run.job.id
        return self._portal.run(
            lambda: worker.call(TASKS_SERVICE, "signal_task", job_id, task.id, int(signum)), timeout=30)

    def hold(self, worker) -> None:
        """No new tasks go to ``worker`` (a worker or its name), in running and later jobs;
        what runs there finishes, what it was handed ahead is taken back."""
        self._check_open()
        self._portal.call(self._set_held, self._worker_name(worker), True)

    def release_worker(self, worker) -> None:
        """Undo :meth:`hold` (or :meth:`drain`): ``worker`` gets tasks again."""
        self._check_open()
        self._portal.call(self._set_held, self._worker_name(worker), False)

    def drain(self, worker, timeout: float | None = None) -> None:
        """Hold ``worker`` and return once it can be stopped with nothing lost.

        That is when no task of a running job is assigned to it and the outputs it holds
        that running jobs still need were computed again on other workers. When a job has
        no other usable worker, the drain waits for that job to end. TimeoutError after
        ``timeout`` s (the worker stays held).
        """
        name = self._worker_name(worker)
        self.hold(name)
        self._portal.run(self._drain(name, timeout))

    async def _drain(self, name: str, timeout: float | None) -> None:
        """On the loop: until ``worker`` drained, woken by every change of the jobs' state."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while not self._drain_step(name):
            left = None if deadline is None else deadline - self._loop.time()
            if left is not None and (left <= 0 or not await self._state.changes.wait(left)):
                raise TimeoutError(f"worker {name} did not drain within {timeout} s")

    def _drain_step(self, name: str) -> bool:
        return all([run.drain_step(name) for run in self._state.runs.values()])

    def _set_held(self, name: str, held: bool) -> None:
        """On the loop: remember the state, tell every running job and the worker itself."""
        if held:
            self._state.held.add(name)
        else:
            self._state.held.discard(name)
        for run in self._state.runs.values():
            run.set_held(name, held)
        self._tell_held(name, held)

    def _tell_held(self, name: str, held: bool) -> None:
        """Let the worker show it in its status (``bndl-like status``); best effort."""
        peer = self._node.peers.get(name)
        if peer is not None:
            try:
                peer.notify(TASKS_SERVICE, "set_held", held)
            except Exception:
                log.debug("could not tell %s it is held=%s", name, held, exc_info=True)

    # -- workers ----------------------------------------------------------------------------------

    @property
    def node(self) -> Node:
        return self._node

    @property
    def workers(self) -> list:
        return sorted((p for p in list(self._node.peers.values()) if p.node_type == "worker"),
                      key=lambda p: p.name)

    @property
    def worker_count(self) -> int:
        return len(self.workers)

    def await_workers(self, worker_count: int | None = None, connect_timeout: float = 5,
                      stable_timeout: float = 60) -> int:
        """Wait for workers; return how many are connected.

        With ``worker_count`` (default: the number of local workers started),
        wait until that many joined, at most ``stable_timeout`` s. Otherwise
        wait up to ``connect_timeout`` s for a first worker, then until the
        count stays the same for a moment (at most ``stable_timeout`` s).

        TimeoutError when fewer than ``worker_count`` joined, or, joining through
        seeds, none did: it names each seed not reached and why (refused, timed out,
        authentication failed, no secret given, another cluster). A wrong secret or
        cluster ends the wait at once. A driver without seeds, which workers join,
        just waits and returns how many came.
        """
        self._check_open()
        return self._portal.run(self._await_workers(worker_count, connect_timeout, stable_timeout))

    async def _await_workers(self, worker_count: int | None, connect_timeout: float,
                             stable_timeout: float) -> int:
        """await_workers on the loop: woken by every worker joining or leaving, and every 0.1 s
        to see whether the local cluster failed or every seed refused us for good."""
        changes = self._state.changes
        loop = self._loop
        target = worker_count or self._expected or None
        start = loop.time()
        if target:
            while self.worker_count < target:
                left = stable_timeout - (loop.time() - start)
                if left <= 0:
                    break
                self._check_local_alive()
                if self._seeds_hopeless():
                    break
                await changes.wait(min(left, 0.1))
            if worker_count and self.worker_count < worker_count:
                raise TimeoutError(self._too_few_workers(worker_count, loop.time() - start))
            return self.worker_count
        while self.worker_count == 0:
            left = connect_timeout - (loop.time() - start)
            if left <= 0 or self._seeds_hopeless():
                break
            await changes.wait(min(left, 0.1))
        if self.worker_count == 0:
            if self._node.seeds:
                raise TimeoutError(self._too_few_workers(1, loop.time() - start))
            return 0
        # then until the count stays the same for a moment
        quiet = min(1.0, connect_timeout)
        since = loop.time()
        count = self.worker_count
        while True:
            now = loop.time()
            left = min(quiet - (now - since), stable_timeout - (now - start))
            if left <= 0:
                break
            await changes.wait(left)
            if self.worker_count != count:
                count, since = self.worker_count, loop.time()
        return self.worker_count

    def _seeds_hopeless(self) -> bool:
        """No worker, and every seed refused us for a reason waiting does not cure (a wrong
        secret, another cluster). On the loop, which owns the node."""
        return not self.worker_count and bool(self._node.seeds) and self._node.seeds_final()

    def _too_few_workers(self, wanted: int, waited: float) -> str:
        """Why a wait for ``wanted`` workers ended with fewer: each seed or peer not reached
        and its error (from the node, read on its loop)."""
        try:
            report = self._node.unreachable_report()  # on the loop, which owns the node
        except Exception:
            report = ""
        have = self.worker_count
        seeds = ", ".join(map(str, self._node.seeds))
        text = ("no worker joined" if not have and wanted == 1 else f"{have} of {wanted} workers joined")
        text += f" within {waited:.1f}s" + (f" through {seeds}" if seeds else "")
        return text + (f"; not reached: {report}" if report else "")

    def _worker_load(self, names: list[str], timeout: float) -> dict[str, int] | None:
        """Tasks of running jobs assigned to each of ``names`` (running or handed ahead); None
        when the loop does not answer within ``timeout`` s. Read on the loop, which owns the
        schedulers' state."""
        def count() -> dict[str, int]:
            runs = [run for run in self._state.runs.values() if not run.finished]
            return {name: sum(len(run.scheduler.assigned(name)) for run in runs) for name in names}

        portal = self._portal
        if portal.in_loop_thread():
            return count()
        if not portal.running:
            return None
        try:
            return portal.call(count, timeout=timeout)
        except Exception:
            return None

    def _check_local_alive(self) -> None:
        if self._local is not None and self._local.failure:
            raise RuntimeError(f"the local cluster failed: {self._local.failure}")

    # -- executing --------------------------------------------------------------------------------

    def execute(self, job: Job, workers=None, order_results: bool = True, concurrency: int | None = None,
                attempts: int | None = None, progress: bool | None = None, results="all") -> JobResults:
        """Run ``job``; yield the result of each task (in task order when ``order_results``).

        The arguments are checked here; the job starts on the first ``next()`` of what this
        returns (``for result in ctx.execute(job)``, ``list(...)``), never before: results
        dropped without being iterated run nothing and say so in a RuntimeWarning.

        ``results`` says which results come to the driver: ``"all"``, ``"sinks"`` (the tasks
        no task of the job depends on) or an iterable of tasks of the job; the other outputs
        stay on the workers for their dependents and are dropped when the job ends. The
        driver holds a result only until it is yielded (``task.result()`` then says so).

        Leaving the loop early, ``close()`` on the results (or leaving ``with ctx.execute(job)
        as results:``), ``job.cancel()`` or Ctrl-C (Jupyter's stop button) cancels the job on
        every worker; results dropped half-read after ``next()`` calls cancel it with a warning.
        A task that fails ``attempts`` times stops the job: its exception is raised here, with
        the remote traceback. ``progress`` shows a progress bar (default: ``ctx.progress``,
        else on in an interactive session).
        """
        __tracebackhide__ = True  # noqa: F841
        try:
            show = progress_wanted(progress, self.progress)
            run = self._start_job(job, workers, order_results, concurrency, attempts, results, begin=False)
        except BaseException as exc:
            raise trim_traceback(exc)  # raised here: no framework frame below this one
        return JobResults(self, run, show)

    def _start_job(self, job: Job, workers, order_results: bool, concurrency: int | None,
                   attempts: int | None, results="all", begin: bool = True) -> JobRun:
        """Check the arguments, claim the job and (``begin``) start it on the loop; the run whose
        queue yields results."""
        self._check_open()
        if not isinstance(job, Job):
            raise TypeError(f"execute() takes a Job, not {type(job).__name__}; "
                            "wrap the tasks: ctx.execute(Job(ctx, tasks))")
        if job.ctx is not self:
            raise ValueError(f"job {job.name} belongs to another ExecutionContext; execute it there")
        if job._run is not None:
            raise RuntimeError(f"job {job.name} is already executing; read its results, or job.cancel() it")
        if workers is not None and not isinstance(workers, (list, tuple, set, frozenset)):
            raise TypeError("workers must be a sequence of workers or worker names")
        if self.worker_count == 0:
            self.await_workers()
        run = JobRun(self._state, job, workers, order_results, concurrency, attempts, results)
        run.prepare()
        if begin:
            self._begin_run(run)
        return run

    def _begin_run(self, run: JobRun) -> None:
        """Start a claimed run on the loop; JobCancelled when it was cancelled or released first."""
        self._check_open()
        if not run.begin():
            raise JobCancelled(f"job {run.job.name} was cancelled before it started")
        self.jobs.append(run.job)
        self._loop.call_soon_threadsafe(run.start)

    def _begin_job(self, run: JobRun, progress: bool) -> Iterator:
        """JobResults' first next(): start the run; the generator of its results."""
        self._begin_run(run)
        return self._iterate(run, progress)

    def _iterate(self, run: JobRun, progress: bool = False, deadline: float | None = None,
                 what: str = "") -> Iterator:
        __tracebackhide__ = True  # IPython and pytest fold this frame  # noqa: F841
        results = run.results
        finished = False
        bar = None
        try:
            if progress:  # shown once results are awaited: an interrupt from here on cancels
                bar = JobProgress(run.job)
            wait = 0.5 if bar is None else bar.min_interval
            while True:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"{what or run.job.name} did not finish in time; "
                                           f"job {run.job.name} was cancelled")
                    wait = min(wait, left)
                try:
                    batch = results.get(timeout=wait)
                except queue.Empty:
                    batch = None
                items, ended, error = split_batch(batch, bar)
                for i, item in enumerate(items):
                    items[i] = None  # held only until yielded
                    yield item
                item = None
                if ended:
                    finished = True
                    if error is not None:
                        run = results = None  # its traceback must not keep the job alive
                        raise trim_traceback(error)
                    return
        except KeyboardInterrupt:  # Ctrl-C, Jupyter's stop button
            finished = True
            self._cancel_run(run)
            raise KeyboardInterrupt(f"interrupted; job {run.job.name} was cancelled") from None
        finally:
            if not finished:
                self._cancel_run(run)
            if bar is not None:
                bar.close()
                bar = None

    def _cancel_run(self, run: JobRun) -> None:
        """Cancel and wait (at most 5 s) until the workers were told."""
        if self._loop.is_closed():
            return
        run.cancel_threadsafe()
        if self._portal.in_loop_thread() or not self._portal.running:
            return  # dropped on the loop itself: it cancels once this callback returns
        try:
            self._portal.run(self._state.runs.wait_ended(run.job.id), timeout=5)
        except TimeoutError:
            log.warning("job %s: the workers were not all told of its cancellation within 5 s", run.job.name)

    def cancel(self, job: Job) -> None:
        job.cancel()

    # -- profiling (bndl_like.profile) ----------------------------------------------------------

    @property
    def cpu_profiling(self) -> CpuProfiling:
        """CPU profiling (yappi) of every worker, printed here; created on first use."""
        if self.__dict__.get("_cpu_profiling") is None:
            from ...profile import CpuProfiling
            self._cpu_profiling = CpuProfiling(self)
        return self._cpu_profiling

    @property
    def memory_profiling(self) -> MemoryProfiling:
        """Memory profiling (tracemalloc) of every worker, printed here; created on first use."""
        if self.__dict__.get("_memory_profiling") is None:
            from ...profile import MemoryProfiling
            self._memory_profiling = MemoryProfiling(self)
        return self._memory_profiling

    # -- closing ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this ExecutionContext is closed; make a new one")

    def close(self) -> None:
        """Stop the local workers this context started, the driver node and its loop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for profiler in (self.__dict__.get("_cpu_profiling"), self.__dict__.get("_memory_profiling")):
            if profiler is not None and profiler.running:
                try:
                    profiler.stop()  # the driver's own hooks too, when include_driver=True
                except Exception:
                    log.warning("could not stop %s", type(profiler).__name__, exc_info=True)
        for run in self._state.runs.values():
            try:
                self._portal.call(run.cancel, timeout=5)
            except Exception:
                pass
        self._parts.closed = True
        self._finalizer()  # the node, the local workers, the loop, the hook thread
        _open_contexts.discard(self)

    def __enter__(self) -> ExecutionContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        """Name, open/closed, workers, hosts, tasks assigned to the workers, jobs run; never
        waits more than ~2 s for the loop (load '?' then), never raises."""
        try:
            return context_repr(self)
        except Exception:
            return f"<ExecutionContext at {id(self):#x}>"

    def _repr_html_(self) -> str:
        try:
            return context_html(self)
        except Exception:
            return f"<div><b>{esc(repr(self))}</b></div>"


@atexit.register
def _close_all() -> None:
    for ctx in list(_open_contexts):
        try:
            ctx.close()
        except Exception:
            pass


__all__ = ["ExecutionContext", "JobCancelled"]
