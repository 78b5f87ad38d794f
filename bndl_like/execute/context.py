"""The ExecutionContext: the driver's handle on a cluster.

The synchronous API runs over an event loop in a background thread (so it also
works in Jupyter, whose main thread already runs a loop); every wait has a
timeout or a cancellation path.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import queue
import signal
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import config
from ..local import LocalWorkers
from ..rmi import Node, takes_peer
from .errors import JobCancelled
from .executor import ExecutorMixin
from .hooks import HookRunner, Hooks
from .progress import JobProgress
from .progress import check as check_progress
from .progress import wanted as progress_wanted
from .recent import RecentJobs
from .run import JobRun, split_batch
from .tasks import Job

if TYPE_CHECKING:
    from ..profile import CpuProfiling, MemoryProfiling

log = logging.getLogger(__name__)
_open_contexts: weakref.WeakSet = weakref.WeakSet()


def _plumbing(frame) -> bool:
    """A frame of concurrent.futures or of this module's wrappers around a coroutine."""
    return frame.f_globals.get("__name__", "").startswith(("concurrent.", __name__))


class _LoopThread:
    """An event loop in a daemon thread, and a way to run coroutines on it."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro, timeout: float | None = None) -> Any:
        """Run a coroutine on the loop and wait for its result.

        Give a coroutine, or a function returning an awaitable: it is then called
        on the loop thread (``peer.call`` must be, it touches the connection).
        """
        if not asyncio.iscoroutine(coro):
            make = coro

            async def on_loop():
                return await make()
            coro = on_loop()
        __tracebackhide__ = True  # noqa: F841
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except KeyboardInterrupt:  # Ctrl-C, Jupyter's stop button: cancel the work on the loop
            future.cancel()
            raise KeyboardInterrupt("interrupted; the call was cancelled") from None
        except BaseException as exc:
            future.cancel()
            if not future.cancelled() and future.done() and future.exception() is exc:
                # raised by the coroutine: its traceback without concurrent.futures' frames
                tb = exc.__traceback__
                while tb is not None and tb.tb_next is not None and _plumbing(tb.tb_frame):
                    tb = tb.tb_next
                raise exc.with_traceback(tb)
            raise

    def call(self, fn, *args, timeout: float | None = None) -> Any:
        async def call():
            return fn(*args)
        return self.run(call(), timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


class _DriverService:
    """The ``driver`` service: receives batched task events from workers."""

    def __init__(self, ctx: ExecutionContext):
        self.ctx = ctx

    @takes_peer
    def task_events(self, worker, job_id: int, events: list) -> None:
        run = self.ctx._runs.get(job_id)
        if run is not None:
            run.on_task_events(worker.name, events)


class ExecutionContext(ExecutorMixin):
    """The driver's handle on a cluster of workers.

    ``ExecutionContext()`` starts a local cluster of ``os.cpu_count()`` worker
    processes (or joins ``BNDL_LIKE_SEEDS`` when set); ``seeds=[...]`` joins a
    cluster; ``seeds=[]`` makes this driver the seed workers join. ``tls_cert``,
    ``tls_key`` and ``tls_ca`` (PEM files) turn on TLS, for a local cluster's workers too.
    """

    def __init__(self, seeds: Iterable[str] | None = None, secret: str | bytes | None = None, *,
                 listen: str | None = None, workers: int | None = None, cluster: str | None = None,
                 progress: bool | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 tls_ca: str | None = None, **node_options):
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
        self._io = _LoopThread("bndl-like-driver")
        self._loop = self._io.loop
        tls = {"tls_cert": tls_cert, "tls_key": tls_key, "tls_ca": tls_ca}
        self._node = Node(node_type="driver", listen=listen, seeds=seeds, secret=secret,
                          cluster=cluster, **tls, **node_options)
        self._node.add_service("driver", _DriverService(self))
        self._runs: dict[int, JobRun] = {}
        # running jobs, and the last execute.keep_jobs ended ones (their summaries once dropped)
        self.jobs = RecentJobs(config.get("execute.keep_jobs"))
        self._hooks = Hooks()
        self._hook_runner = HookRunner()
        self._held: set[str] = set()  # held worker names (changed on the loop thread only)
        self._worker_pids: dict[str, int] = {}  # worker name -> pid, for exit statuses
        self._local: LocalWorkers | None = None
        self._closed = False
        # None: the execute.progress option (auto: on in an interactive session)
        self.progress = check_progress(progress)
        try:
            self._io.run(self._start())
            if local_workers:
                self._local = LocalWorkers(local_workers, self._node.addresses[0],
                                           self._node.secret, self._node.cluster, **tls)
        except BaseException:
            self.close()
            raise
        self._expected = local_workers
        _open_contexts.add(self)

    @classmethod
    def local(cls, workers: int | None = None, **options) -> ExecutionContext:
        """A local cluster of ``workers`` processes (default ``os.cpu_count()``)."""
        return cls(seeds=None, workers=workers if workers is not None else (os.cpu_count() or 1),
                   **options)

    async def _start(self) -> None:
        await self._node.start()
        self._node.on_peer_added.append(self._on_peer_added)
        self._node.on_peer_lost.append(self._on_peer_lost)

    def _exit_status(self, worker: str, timeout: float) -> str | None:
        """How ``worker`` ended ("killed by SIGKILL", "exited with code 3"), when this context
        started it (a local cluster); None when unknown. Blocks up to ``timeout`` s."""
        pid = self._worker_pids.get(worker)
        if pid is None or self._local is None:
            return None
        return self._local.exit_status(pid, timeout)

    def _on_peer_added(self, peer) -> None:
        if peer.node_type == "worker":
            if isinstance(peer.pid, int):
                pids = self._worker_pids
                pids[peer.name] = peer.pid
                if len(pids) > 4096:  # bounded, however many workers come and go
                    del pids[next(iter(pids))]
            self._hook_runner.fire("worker_joined", peer.name, self._hooks)
            if peer.name in self._held:
                self._tell_held(peer.name, True)
        for run in list(self._runs.values()):
            run.worker_added(peer)

    def _on_peer_lost(self, peer) -> None:
        if peer.node_type == "worker":
            self._hook_runner.fire("worker_lost", peer.name, self._hooks)
        for run in list(self._runs.values()):
            run.worker_lost(peer)

    # -- hooks ------------------------------------------------------------------------------------

    def add_hook(self, event: str, fn) -> None:
        """Call ``fn(arg)`` on ``event`` of every job (see :mod:`bndl_like.execute.hooks`).

        Hooks run in order in one thread of their own, never on the driver's event loop;
        one that raises is logged. Unknown event names raise ValueError.
        """
        self._hooks.add(event, fn)

    # -- holding and draining workers -------------------------------------------------------------

    def _worker_name(self, worker) -> str:
        name = getattr(worker, "name", worker)
        if not isinstance(name, str):
            raise TypeError(f"a worker or a worker name, not {type(worker).__name__}")
        if name not in self._held and name not in {w.name for w in self.workers}:
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
        run = next((r for r in list(self._runs.values()) if r.job._by_id.get(task.id) is task), None)
        if run is None or not task.running:
            raise RuntimeError(f"task {task.id!r} is not running")
        worker = self._node.peers.get(task.executed_on_last())
        if worker is None:
            return False
        job_id = run.job.id
        return self._io.run(lambda: worker.call("tasks", "signal_task", job_id, task.id, int(signum)),
                            timeout=30)

    def hold(self, worker) -> None:
        """No new tasks go to ``worker`` (a worker or its name), in running and later jobs;
        what runs there finishes, what it was handed ahead is taken back."""
        self._check_open()
        self._io.call(self._set_held, self._worker_name(worker), True)

    def release_worker(self, worker) -> None:
        """Undo :meth:`hold` (or :meth:`drain`): ``worker`` gets tasks again."""
        self._check_open()
        self._io.call(self._set_held, self._worker_name(worker), False)

    def drain(self, worker, timeout: float | None = None) -> None:
        """Hold ``worker`` and return once it can be stopped with nothing lost.

        That is when no task of a running job is assigned to it and the outputs it holds
        that running jobs still need were computed again on other workers. When a job has
        no other usable worker, the drain waits for that job to end. TimeoutError after
        ``timeout`` s (the worker stays held).
        """
        name = self._worker_name(worker)
        self.hold(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._io.call(self._drain_step, name):
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"worker {name} did not drain within {timeout} s")
            time.sleep(0.01)

    def _drain_step(self, name: str) -> bool:
        return all([run.drain_step(name) for run in list(self._runs.values())])

    def _set_held(self, name: str, held: bool) -> None:
        """On the loop: remember the state, tell every running job and the worker itself."""
        if held:
            self._held.add(name)
        else:
            self._held.discard(name)
        for run in list(self._runs.values()):
            run.set_held(name, held)
        self._tell_held(name, held)

    def _tell_held(self, name: str, held: bool) -> None:
        """Let the worker show it in its status (``bndl-like status``); best effort."""
        peer = self._node.peers.get(name)
        if peer is not None:
            try:
                peer.notify("tasks", "set_held", held)
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
        """
        self._check_open()
        target = worker_count or self._expected or None
        start = time.monotonic()
        if target:
            while self.worker_count < target and time.monotonic() - start < stable_timeout:
                self._check_local_alive()
                time.sleep(0.005)
            return self.worker_count
        while self.worker_count == 0 and time.monotonic() - start < connect_timeout:
            time.sleep(0.01)
        if self.worker_count == 0:
            return 0
        last, since = self.worker_count, time.monotonic()
        while time.monotonic() - since < min(1.0, connect_timeout) and \
                time.monotonic() - start < stable_timeout:
            time.sleep(0.02)
            if self.worker_count != last:
                last, since = self.worker_count, time.monotonic()
        return self.worker_count

    def _worker_load(self, names: list[str], timeout: float) -> dict[str, int] | None:
        """Tasks of running jobs assigned to each of ``names`` (running or handed ahead); None
        when the loop does not answer within ``timeout`` s. Read on the loop, which owns the
        schedulers' state."""
        def count() -> dict[str, int]:
            runs = [run for run in list(self._runs.values()) if not run.finished]
            return {name: sum(len(run.scheduler.assigned(name)) for run in runs) for name in names}

        io = self._io
        if threading.current_thread() is io.thread:
            return count()
        if io.loop.is_closed() or not io.loop.is_running():
            return None
        try:
            return io.call(count, timeout=timeout)
        except Exception:
            return None

    def _check_local_alive(self) -> None:
        if self._local is not None and self._local.failure:
            raise RuntimeError(f"the local cluster failed: {self._local.failure}")

    # -- executing --------------------------------------------------------------------------------

    def execute(self, job: Job, workers=None, order_results: bool = True, concurrency: int | None = None,
                attempts: int | None = None, progress: bool | None = None, results="all") -> Iterator:
        """Run ``job``; yield the result of each task (in task order when ``order_results``).

        ``results`` says which results come to the driver: ``"all"``, ``"sinks"`` (the tasks
        no task of the job depends on) or an iterable of tasks of the job; the other outputs
        stay on the workers for their dependents and are dropped when the job ends. The
        driver holds a result only until it is yielded (``task.result()`` then says so).

        Closing the generator early, ``job.cancel()`` or Ctrl-C (Jupyter's stop button)
        cancels the job on every worker. A task that fails ``attempts`` times stops the
        job: its exception is raised here, with the remote traceback. ``progress`` shows
        a progress bar (default: ``ctx.progress``, else on in an interactive session).
        """
        show = progress_wanted(progress, self.progress)
        run = self._start_job(job, workers, order_results, concurrency, attempts, results)
        results = self._iterate(run, show)
        # a generator dropped before its first next() never runs its finally: cancel then too
        weakref.finalize(results, _cancel_unfinished, run)
        return results

    def _start_job(self, job: Job, workers, order_results: bool, concurrency: int | None,
                   attempts: int | None, results="all") -> JobRun:
        """Check the arguments, start the job on the loop; the run whose queue yields results."""
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
        run = JobRun(self, job, workers, order_results, concurrency, attempts, results)
        run.prepare()
        self.jobs.append(job)
        self._loop.call_soon_threadsafe(run.start)
        return run

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
                        raise error
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
        """Cancel and wait (bounded) until the workers were told."""
        if self._loop.is_closed():
            return
        run.cancel_threadsafe()
        deadline = time.monotonic() + 5
        while not run.finished and time.monotonic() < deadline:
            time.sleep(0.005)

    def cancel(self, job: Job) -> None:
        job.cancel()

    # -- profiling (bndl_like.profile) ----------------------------------------------------------

    @property
    def cpu_profiling(self) -> CpuProfiling:
        """CPU profiling (yappi) of every worker, printed here; created on first use."""
        if self.__dict__.get("_cpu_profiling") is None:
            from ..profile import CpuProfiling
            self._cpu_profiling = CpuProfiling(self)
        return self._cpu_profiling

    @property
    def memory_profiling(self) -> MemoryProfiling:
        """Memory profiling (tracemalloc) of every worker, printed here; created on first use."""
        if self.__dict__.get("_memory_profiling") is None:
            from ..profile import MemoryProfiling
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
        for run in list(self._runs.values()):
            try:
                self._io.call(run.cancel, timeout=5)
            except Exception:
                pass
        try:
            if self._node.running:
                self._io.run(self._node.stop(), timeout=10)
        except Exception:
            log.exception("error while stopping the driver node")
        if getattr(self, "_local", None) is not None:
            self._local.stop()
        self._io.stop()
        if getattr(self, "_hook_runner", None) is not None:
            self._hook_runner.close()
        _open_contexts.discard(self)

    def __enter__(self) -> ExecutionContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        """Name, open/closed, workers, hosts, tasks assigned to the workers, jobs run; never
        waits more than ~2 s for the loop (load '?' then), never raises."""
        from ..display import context_repr
        try:
            return context_repr(self)
        except Exception:
            return f"<ExecutionContext at {id(self):#x}>"

    def _repr_html_(self) -> str:
        from ..display import context_html
        try:
            return context_html(self)
        except Exception:
            from ..display import esc
            return f"<div><b>{esc(repr(self))}</b></div>"


def _cancel_unfinished(run: JobRun) -> None:
    if not run.finished and not run.loop.is_closed():
        try:
            run.cancel_threadsafe()
        except RuntimeError:  # the loop closed meanwhile
            pass


@atexit.register
def _close_all() -> None:
    for ctx in list(_open_contexts):
        try:
            ctx.close()
        except Exception:
            pass


__all__ = ["ExecutionContext", "JobCancelled"]
