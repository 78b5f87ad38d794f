"""Executor conveniences on an ExecutionContext, and its asynchronous twin.

``ExecutorMixin`` gives the context ``run_function``, ``run_each_worker``,
``run_each_host`` and ``map``. Calls to single workers go to the workers'
``functions`` service (a thread pool there); ``map`` runs chunks as one Job.

``AsyncExecutionContext`` (``ctx.ensure_async()``) has the same methods as
coroutines, for code already inside an event loop (``asyncio.run``, a notebook
cell): the work runs on the driver's own loop thread and is awaited from the
caller's loop through a wrapped future, so the caller's loop never blocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import math
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from ...rmi.errors import RemoteError, SerializationError
from ...rmi.pickle_check import unpicklable_error
from ..errors import WorkersLost, trim_traceback
from ..handles import ScatterHandle
from ..messages import FUNCTIONS_SERVICE
from ..tasks import FuncTask, Job, map_chunk
from .progress import JobProgress
from .progress import wanted as progress_wanted
from .remote import unwrap_remote
from .run import split_batch
from .scatter import ScatterRegistry

if TYPE_CHECKING:
    from .context import ExecutionContext

MAP_CHUNKS_PER_WORKER = 8
MAP_MAX_CHUNKSIZE = 10_000


def _check_fn(fn: Any, method: str) -> None:
    if not callable(fn):
        raise TypeError(f"{method}() needs a callable as its first argument, not {type(fn).__name__}")


def check_timeout(timeout) -> float | None:
    """A ``timeout=`` in seconds: None or a positive number."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    return float(timeout)


# builtin TimeoutError since Python 3.11; their own classes in 3.10
WAIT_TIMEOUTS = (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)


def _timed_out(method: str, fn, timeout: float) -> TimeoutError:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return TimeoutError(f"{method}({name}) did not return within {timeout:g} s; the call was "
                        "abandoned (a function already running on a worker runs to its end there)")


def default_chunksize(item_count: int, worker_count: int) -> int:
    """``map``'s default chunk size: about 8 chunks per worker, within [1, 10 000].

    ``ceil(item_count / (worker_count * 8))`` bounded to ``[1, MAP_MAX_CHUNKSIZE]``:
    enough chunks to balance the load over the workers, few enough that each
    round trip carries many items.
    """
    chunks = max(1, worker_count) * MAP_CHUNKS_PER_WORKER
    return min(MAP_MAX_CHUNKSIZE, max(1, math.ceil(item_count / chunks)))


class ExecutorMixin:
    """``run_function``, ``run_each_worker``, ``run_each_host`` and ``map`` for ExecutionContext."""

    # -- picking workers and calling them (on the driver's loop) ------------------------------------

    def _fn_inflight(self) -> dict[str, int]:
        inflight = self.__dict__.get("_fn_calls_inflight")
        if inflight is None:
            inflight = self.__dict__["_fn_calls_inflight"] = {}
        return inflight

    def _workers_now(self: ExecutionContext) -> list:
        workers = self.workers
        if not workers:
            self.await_workers()
            workers = self.workers
        if not workers:
            raise WorkersLost("no workers are connected; start some or wait with ctx.await_workers()")
        return workers

    def _least_loaded(self, workers: list) -> Any:
        """The worker with the fewest function calls in flight; ties go round-robin."""
        inflight = self._fn_inflight()
        turn = self.__dict__.get("_fn_turn", 0)
        self.__dict__["_fn_turn"] = turn + 1
        n = len(workers)
        order = [workers[(turn + i) % n] for i in range(n)]
        return min(order, key=lambda w: inflight.get(w.name, 0))

    async def _call_on(self, worker, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """Run ``fn(*args, **kwargs)`` on ``worker``'s ``functions`` service (on the loop thread)."""
        inflight = self._fn_inflight()
        inflight[worker.name] = inflight.get(worker.name, 0) + 1
        try:
            # one picklable callable: user kwargs cannot collide with the service's own parameters
            return await worker.call(FUNCTIONS_SERVICE, "call", functools.partial(fn, *args, **kwargs))
        except RemoteError as exc:
            error = unwrap_remote(exc)
            if error is exc:
                raise
        except SerializationError as exc:  # raised by worker.call: the call does not pickle
            name = getattr(fn, "__name__", None) or type(fn).__name__
            error = unpicklable_error(f"the call of {name} cannot be sent to a worker",
                                      [("fn", fn), ("args", args), ("kwargs", kwargs)],
                                      "create it inside the function, or pass something picklable", exc)
        finally:
            left = inflight.get(worker.name, 1) - 1
            if left > 0:
                inflight[worker.name] = left
            else:
                inflight.pop(worker.name, None)
        raise error  # outside the except block: the original exception keeps its own chain

    async def _call_all(self, workers: list, keys: list, fn: Callable, args: tuple, kwargs: dict) -> dict:
        """Call ``fn`` on every worker at once; all calls finish before the first error is raised."""
        results = await asyncio.gather(*(self._call_on(w, fn, args, kwargs) for w in workers),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return dict(zip(keys, results, strict=True))

    def _prepare_run_function(self: ExecutionContext, fn, args, kwargs) -> Coroutine:
        self._check_open()
        _check_fn(fn, "run_function")
        workers = self._workers_now()

        async def on_loop():
            return await self._call_on(self._least_loaded(workers), fn, args, kwargs)
        return on_loop()

    def _prepare_run_each_worker(self: ExecutionContext, fn, args, kwargs) -> Coroutine:
        self._check_open()
        _check_fn(fn, "run_each_worker")
        workers = self._workers_now()
        return self._call_all(workers, [w.name for w in workers], fn, args, kwargs)

    def _prepare_run_each_host(self: ExecutionContext, fn, args, kwargs) -> Coroutine:
        self._check_open()
        _check_fn(fn, "run_each_host")
        by_host: dict[str, list] = {}
        for worker in self._workers_now():
            by_host.setdefault(worker.host, []).append(worker)

        async def on_loop():
            hosts = list(by_host)
            chosen = [self._least_loaded(by_host[h]) for h in hosts]
            return await self._call_all(chosen, hosts, fn, args, kwargs)
        return on_loop()

    def _map_job(self: ExecutionContext, fn, iterable, chunksize: int | None, args: tuple = ()) -> Job | None:
        """The Job running ``fn`` over chunks of ``iterable``; None when there are no items."""
        self._check_open()
        _check_fn(fn, "map")
        if chunksize is not None and (not isinstance(chunksize, int) or isinstance(chunksize, bool)
                                      or chunksize < 1):
            raise ValueError(f"chunksize must be a positive int or None, not {chunksize!r}")
        try:
            items = list(iterable)
        except TypeError:
            if hasattr(iterable, "__iter__"):
                raise  # raised while iterating: the iterable's own error
            raise TypeError(f"map() takes an iterable of items as its second argument, "
                            f"not {type(iterable).__name__}") from None
        if not items:
            return None
        if chunksize is None:
            chunksize = default_chunksize(len(items), len(self._workers_now()))
        tasks = [FuncTask(self, i, map_chunk, (fn, items[start:start + chunksize], *args))
                 for i, start in enumerate(range(0, len(items), chunksize))]
        name = getattr(fn, "__name__", type(fn).__name__)
        return Job(self, tasks, name=f"map-{name}", desc=f"map {name} over {len(items)} items")

    # -- public -------------------------------------------------------------------------------------

    def _run_timed(self: ExecutionContext, method: str, fn, coro: Coroutine, timeout: float | None):
        __tracebackhide__ = True  # noqa: F841
        try:
            return self._portal.run(coro, timeout)
        except WAIT_TIMEOUTS as exc:
            if exc.args:  # raised by fn itself, not the wait
                raise
            raise _timed_out(method, fn, timeout) from None

    def run_function(self: ExecutionContext, fn: Callable, /, *args: Any, timeout: float | None = None,
                     **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on one worker (the least busy) and return its result.

        An exception raised by ``fn`` is raised here as its own type, with the
        remote traceback in ``remote_traceback``. ``timeout``: seconds to wait for the
        result, then TimeoutError (``timeout`` is taken by the call: pass an argument of
        that name to ``fn`` with ``functools.partial``).
        """
        __tracebackhide__ = True  # noqa: F841
        try:
            timeout = check_timeout(timeout)
            return self._run_timed("run_function", fn, self._prepare_run_function(fn, args, kwargs),
                                   timeout)
        except BaseException as exc:
            raise trim_traceback(exc)  # raised here: no framework frame below this one

    def run_each_worker(self: ExecutionContext, fn: Callable, /, *args: Any, timeout: float | None = None,
                        **kwargs: Any) -> dict[str, Any]:
        """Run ``fn(*args, **kwargs)`` on every worker at once; return ``{worker name: result}``.
        ``timeout`` as for :meth:`run_function`."""
        __tracebackhide__ = True  # noqa: F841
        try:
            timeout = check_timeout(timeout)
            return self._run_timed("run_each_worker", fn, self._prepare_run_each_worker(fn, args, kwargs),
                                   timeout)
        except BaseException as exc:
            raise trim_traceback(exc)  # raised here: no framework frame below this one

    def run_each_host(self: ExecutionContext, fn: Callable, /, *args: Any, timeout: float | None = None,
                      **kwargs: Any) -> dict[str, Any]:
        """Run ``fn(*args, **kwargs)`` once per host (on one of its workers); return ``{host: result}``.
        ``timeout`` as for :meth:`run_function`."""
        __tracebackhide__ = True  # noqa: F841
        try:
            timeout = check_timeout(timeout)
            return self._run_timed("run_each_host", fn, self._prepare_run_each_host(fn, args, kwargs),
                                   timeout)
        except BaseException as exc:
            raise trim_traceback(exc)  # raised here: no framework frame below this one

    def map(self: ExecutionContext, fn: Callable, iterable: Iterable, /, *args: Any,
            chunksize: int | None = None, progress: bool | None = None,
            timeout: float | None = None) -> list:
        """``[fn(x, *args) for x in iterable]`` computed on the workers, in input order.

        ``args`` (the same for every item) may hold scatter handles and tasks' outputs.

        Items travel in chunks of ``chunksize``, one task per chunk, all in one
        Job. The default is ``ceil(len(items) / (worker_count * 8))`` bounded to
        ``[1, 10_000]`` (see ``default_chunksize``). The first failing item stops
        the job; its exception is raised here with the remote traceback. ``progress``
        shows a bar over the chunks (default as for ``execute``). ``timeout``: seconds
        for the whole map, then the job is cancelled and TimeoutError raised.
        """
        __tracebackhide__ = True  # noqa: F841
        try:
            timeout = check_timeout(timeout)
            deadline = None if timeout is None else time.monotonic() + timeout
            job = self._map_job(fn, iterable, chunksize, args)
            if job is None:
                return []
            out: list = []
            show = progress_wanted(progress, self.progress)
            run = self._start_job(job, None, True, None, None)
            name = getattr(fn, "__name__", None) or type(fn).__name__
            what = f"map({name})" if timeout is None else f"map({name}) (timeout={timeout:g} s)"
            chunks = self._iterate(run, show, deadline, what)
            job = run = None  # a traceback through here must not keep the job alive
            for chunk in chunks:
                out.extend(chunk)
            return out
        except BaseException as exc:
            raise trim_traceback(exc)  # raised here: no framework frame below this one

    # -- scatter ------------------------------------------------------------------------------------

    def _scatter_registry(self: ExecutionContext):
        self._check_open()
        registry = self.__dict__.get("_scatter")
        if registry is None:
            # weakly: the registry listens on the node, which must not keep the context alive
            registry = self.__dict__["_scatter"] = self._portal.call(ScatterRegistry, weakref.proxy(self))
        return registry

    def scatter(self: ExecutionContext, obj: Any):
        """Ship ``obj`` once to every worker (and to workers joining later); return its handle.

        The handle, as an argument of a FuncTask, ``map``, ``run_function`` or
        ``run_each_worker`` (also nested in lists, tuples, dicts), arrives as the
        object kept on the worker. ``release(handle)`` drops it everywhere; so does
        leaving ``with ctx.scatter(obj) as handle:``.
        """
        registry = self._scatter_registry()
        if not self.workers:
            self._workers_now()
        return self._portal.run(registry.scatter(obj))

    def scatter_update(self: ExecutionContext, handle, obj: Any):
        """Replace the object of ``handle`` on every worker holding it; return the handle.

        Returns once every worker holding it holds ``obj``: every task that starts afterwards
        gets ``obj``, tasks of running jobs already queued on a worker included.
        """
        return self._portal.run(self._scatter_registry().update(handle, obj))

    def scatter_update_patch(self: ExecutionContext, handle, patch: Any):
        """Call ``obj.patch(patch)`` on every worker holding the object (and on the driver's copy).

        An exception raised by ``patch`` is raised here as its own type, with the
        remote traceback in ``remote_traceback``.
        """
        return self._portal.run(self._scatter_registry().update_patch(handle, patch))

    def release(self: ExecutionContext, handle) -> None:
        """Drop the object of ``handle`` from every worker; tasks that start afterwards using it
        fail with ScatterError. Releasing twice, or after ``close()``, does nothing."""
        if self._closed:  # the workers of a closed context hold nothing of it any more
            if not isinstance(handle, ScatterHandle):
                raise TypeError(f"a ScatterHandle is needed, not {type(handle).__name__}")
            return
        self._portal.run(self._scatter_registry().release(handle))

    def ensure_sync(self: ExecutionContext) -> ExecutionContext:
        """This context (it is the synchronous one)."""
        return self

    def ensure_async(self: ExecutionContext) -> AsyncExecutionContext:
        """The asynchronous twin of this context (one per context)."""
        actx = self.__dict__.get("_async_twin")
        if actx is None:
            actx = self.__dict__["_async_twin"] = AsyncExecutionContext(self)
        return actx


class _LoopResults:
    """A job's results, handed to a coroutine on the caller's event loop: the run puts each batch
    (on the driver's loop) and the caller's loop is woken once for it; nothing polls."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[list] = asyncio.Queue()

    def put(self, batch: list) -> None:
        try:
            same = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            same = False
        if same:
            self.queue.put_nowait(batch)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, batch)

    async def take(self, timeout: float) -> list | None:
        """One batch of results (plus any already waiting), or None after ``timeout`` s."""
        try:
            batch = list(await asyncio.wait_for(self.queue.get(), timeout))
        except asyncio.TimeoutError:
            return None
        while not self.queue.empty():
            batch.extend(self.queue.get_nowait())
        return batch


class AsyncExecutionContext:
    """The coroutine API of an ExecutionContext, for code inside an event loop.

    Made by ``ctx.ensure_async()``; ``ensure_sync()`` gives the context back.
    """

    def __init__(self, ctx: ExecutionContext):
        self._ctx = ctx

    async def _on_driver(self, coro: Coroutine) -> Any:
        """Await ``coro`` run on the driver's loop, without blocking the caller's loop."""
        return await self._ctx._portal.wrap(coro)

    async def _call_on_driver(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` called on the driver's loop (where its state lives)."""
        async def call() -> Any:
            return fn(*args)
        return await self._on_driver(call())

    @property
    def workers(self) -> list:
        """The connected worker peers."""
        return self._ctx.workers

    @property
    def worker_count(self) -> int:
        """How many workers are connected."""
        return self._ctx.worker_count

    def ensure_sync(self) -> ExecutionContext:
        """The synchronous ExecutionContext."""
        return self._ctx

    def ensure_async(self) -> AsyncExecutionContext:
        """This (already asynchronous) context."""
        return self

    async def await_workers(self, worker_count: int | None = None, connect_timeout: float = 5,
                            stable_timeout: float = 60) -> int:
        """As ``ExecutionContext.await_workers``: how many workers are connected."""
        self._ctx._check_open()
        return await self._on_driver(self._ctx._await_workers(worker_count, connect_timeout, stable_timeout))

    async def _timed(self, method: str, fn, prepare, args, kwargs, timeout) -> Any:
        timeout = check_timeout(timeout)
        coro = await asyncio.to_thread(prepare, fn, args, kwargs)
        try:
            return await asyncio.wait_for(self._on_driver(coro), timeout)
        except WAIT_TIMEOUTS as exc:
            if exc.args:  # raised by fn itself, not the wait
                raise
            raise _timed_out(method, fn, timeout) from None

    async def run_function(self, fn: Callable, /, *args: Any, timeout: float | None = None,
                           **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on one worker; see ``ExecutionContext.run_function``."""
        return await self._timed("run_function", fn, self._ctx._prepare_run_function, args, kwargs, timeout)

    async def run_each_worker(self, fn: Callable, /, *args: Any, timeout: float | None = None,
                              **kwargs: Any) -> dict[str, Any]:
        """Run ``fn`` on every worker; return ``{worker name: result}``."""
        return await self._timed("run_each_worker", fn, self._ctx._prepare_run_each_worker, args, kwargs,
                                 timeout)

    async def run_each_host(self, fn: Callable, /, *args: Any, timeout: float | None = None,
                            **kwargs: Any) -> dict[str, Any]:
        """Run ``fn`` once per host; return ``{host: result}``."""
        return await self._timed("run_each_host", fn, self._ctx._prepare_run_each_host, args, kwargs,
                                 timeout)

    async def map(self, fn: Callable, iterable: Iterable, /, *args: Any,
                  chunksize: int | None = None, progress: bool | None = None,
                  timeout: float | None = None) -> list:
        """``[fn(x, *args) for x in iterable]`` on the workers, in order; see ``ExecutionContext.map``."""
        timeout = check_timeout(timeout)
        job = await asyncio.to_thread(self._ctx._map_job, fn, iterable, chunksize, args)
        if job is None:
            return []
        out: list = []

        async def consume():
            results = self.execute(job, progress=progress)
            try:
                async for chunk in results:
                    out.extend(chunk)
            finally:
                await results.aclose()
        try:
            await asyncio.wait_for(consume(), timeout)
        except WAIT_TIMEOUTS as exc:
            if exc.args:
                raise
            name = getattr(fn, "__name__", None) or type(fn).__name__
            raise TimeoutError(f"map({name}) did not finish within {timeout:g} s; job {job.name} "
                               "was cancelled") from None
        return out

    async def scatter(self, obj: Any):
        """Ship ``obj`` once to every worker; return its handle (see ``ExecutionContext.scatter``)."""
        registry = await asyncio.to_thread(self._ctx._scatter_registry)
        if not self._ctx.workers:
            await asyncio.to_thread(self._ctx._workers_now)
        return await self._on_driver(registry.scatter(obj))

    async def scatter_update(self, handle, obj: Any):
        """Replace the object of ``handle`` on every worker holding it."""
        registry = await asyncio.to_thread(self._ctx._scatter_registry)
        return await self._on_driver(registry.update(handle, obj))

    async def scatter_update_patch(self, handle, patch: Any):
        """Call ``obj.patch(patch)`` on every worker holding the object of ``handle``."""
        registry = await asyncio.to_thread(self._ctx._scatter_registry)
        return await self._on_driver(registry.update_patch(handle, patch))

    async def release(self, handle) -> None:
        """Drop the object of ``handle`` from every worker (nothing after ``close()``)."""
        if self._ctx._closed:
            return self._ctx.release(handle)  # checks the handle, sends nothing
        registry = await asyncio.to_thread(self._ctx._scatter_registry)
        await self._on_driver(registry.release(handle))

    def add_hook(self, event: str, fn: Callable) -> None:
        """As ``ExecutionContext.add_hook`` (hooks run on the context's hook thread)."""
        self._ctx.add_hook(event, fn)

    async def hold(self, worker) -> None:
        """As ``ExecutionContext.hold``."""
        ctx = self._ctx
        ctx._check_open()
        await self._call_on_driver(ctx._set_held, ctx._worker_name(worker), True)

    async def release_worker(self, worker) -> None:
        """As ``ExecutionContext.release_worker``."""
        ctx = self._ctx
        ctx._check_open()
        await self._call_on_driver(ctx._set_held, ctx._worker_name(worker), False)

    async def drain(self, worker, timeout: float | None = None) -> None:
        """As ``ExecutionContext.drain``, without blocking the caller's loop."""
        name = self._ctx._worker_name(worker)
        await self.hold(name)
        await self._on_driver(self._ctx._drain(name, timeout))

    async def stop_task(self, task) -> bool:
        """As ``ExecutionContext.stop_task``."""
        return await asyncio.to_thread(self._ctx.stop_task, task)

    async def continue_task(self, task) -> bool:
        """As ``ExecutionContext.continue_task``."""
        return await asyncio.to_thread(self._ctx.continue_task, task)

    async def worker_logs(self, n: int = 100, timeout: float | None = 30) -> dict[str, list[str]]:
        """As ``ExecutionContext.worker_logs``: ``{worker name: [line, ...]}``."""
        self._ctx._check_open()
        return await self._on_driver(self._ctx._worker_logs(n, timeout))

    def cancel(self, job: Job) -> None:
        """Cancel ``job`` on every worker."""
        job.cancel()

    async def execute(self, job: Job, workers=None, order_results: bool = True,
                      concurrency: int | None = None, attempts: int | None = None,
                      progress: bool | None = None, results="all") -> AsyncIterator:
        """Run ``job``; ``async for`` over the result of each task, as ``ExecutionContext.execute``.

        Leaving the loop early (break, an exception, cancellation) cancels the
        job once the generator is closed: use ``contextlib.aclosing`` to close it
        right away, otherwise the event loop closes it when it is collected.
        """
        ctx = self._ctx
        show = progress_wanted(progress, ctx.progress)
        # checks and claims the job (pure work, off the caller's loop); the run hands its results
        # to this loop, which is woken once per batch
        run = await asyncio.to_thread(ctx._start_job, job, workers, order_results, concurrency, attempts,
                                      results, begin=False)
        results_here = run.results = _LoopResults()
        ctx._begin_run(run)
        bar = None
        finished = False
        try:
            if show:
                bar = JobProgress(job)
            while not finished:
                batch = await results_here.take(0.25 if bar is None else bar.min_interval)
                items, ended, error = split_batch(batch, bar)
                for i, item in enumerate(items):
                    items[i] = None  # held only until yielded
                    yield item
                item = None
                if ended:
                    finished = True
                    if error is not None:
                        job = run = None  # its traceback must not keep the job alive
                        raise trim_traceback(error)
        finally:
            if not finished:
                await asyncio.shield(self._cancel(run))
            if bar is not None:
                bar.close()
                bar = None

    async def _cancel(self, run) -> None:
        """Cancel ``run`` and wait (at most 5 s) until the workers were told."""
        ctx = self._ctx
        run.cancel_threadsafe()
        if not ctx._portal.running:
            return
        try:
            await asyncio.wait_for(self._on_driver(ctx._state.runs.wait_ended(run.job.id)), 5)
        except (asyncio.TimeoutError, RuntimeError):
            pass

    def __repr__(self) -> str:
        return f"<AsyncExecutionContext of {self._ctx!r}>"


__all__ = ["AsyncExecutionContext", "ExecutorMixin", "default_chunksize"]
