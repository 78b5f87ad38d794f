"""A blocking portal: an event loop in a thread of its own, and the one way into it from others.

The driver's state (its node, connections, the Scheduler of every running job) lives on this
loop and is touched only there. Code in other threads (a script, a notebook cell, a hook) calls
into it through the portal: :meth:`Portal.run` runs a coroutine there and waits for its result,
:meth:`Portal.call` a plain function; :meth:`Portal.wrap` is the same for code running on
*another* event loop (the async API), which awaits without blocking its own loop. A call from the
portal's own thread would wait for itself forever: it is refused with an error that says so.

In the style of anyio's ``BlockingPortal``: a context manager that starts the loop and stops it,
with everything still pending on it cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ...errors import BndlLikeError

T = TypeVar("T")


class PortalError(BndlLikeError, RuntimeError):
    """A call the portal cannot make: from its own loop thread, or after it stopped."""


def _plumbing(frame: Any) -> bool:
    """A frame of concurrent.futures or of this module: left out of a re-raised traceback."""
    module = frame.f_globals.get("__name__")
    return isinstance(module, str) and module.startswith(("concurrent.", __name__))


class Portal:
    """An event loop running in a daemon thread named ``name``, and calls into it."""

    def __init__(self, name: str = "bndl-like-driver"):
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._stopped = False
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # what is left pending is cancelled and given a turn to finish, then the loop closes
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    # -- state -----------------------------------------------------------------------------------

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self.thread

    @property
    def running(self) -> bool:
        return not self._stopped and self.loop.is_running()

    def _check(self, what: str) -> None:
        if self.in_loop_thread():
            raise PortalError(f"{what} was called from the driver's event loop thread ({self.name}), "
                              "where it would wait for itself forever; from a coroutine, use the "
                              "asynchronous context (ctx.ensure_async()) and await it")
        if self._stopped or self.loop.is_closed():
            raise PortalError(f"{what}: the driver's event loop ({self.name}) has stopped")

    # -- calls from other threads -------------------------------------------------------------------

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop; a future of its result (no wait)."""
        self._check("Portal.submit")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T] | Callable[[], Awaitable[T]],
            timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait (at most ``timeout`` s) for its result.

        Give a coroutine, or a function returning an awaitable: that is then called on the
        loop thread (``peer.call`` must be: it touches the connection). Ctrl-C (Jupyter's stop
        button) while waiting cancels the work on the loop; a timeout cancels it too.
        """
        __tracebackhide__ = True  # noqa: F841
        if asyncio.iscoroutine(coro):
            target: Coroutine[Any, Any, T] = coro
        else:
            make = coro

            async def on_loop() -> T:
                return await make()
            target = on_loop()
        try:
            self._check("Portal.run")
        except PortalError:
            target.close()  # never awaited: no "coroutine was never awaited" warning
            raise
        future = asyncio.run_coroutine_threadsafe(target, self.loop)
        try:
            return future.result(timeout)
        except KeyboardInterrupt:
            future.cancel()
            raise KeyboardInterrupt("interrupted; the call was cancelled") from None
        except BaseException as exc:
            waited_out = not future.done() and isinstance(exc, concurrent.futures.TimeoutError)
            future.cancel()
            if waited_out:
                # the builtin TimeoutError (on Python 3.10 concurrent.futures has its own), without
                # arguments, as asyncio.wait_for's: the callers that time out say what did not finish
                raise TimeoutError() from None
            if not future.cancelled() and future.done() and future.exception() is exc:
                # raised by the coroutine: its traceback without concurrent.futures' frames
                tb = exc.__traceback__
                while tb is not None and tb.tb_next is not None and _plumbing(tb.tb_frame):
                    tb = tb.tb_next
                raise exc.with_traceback(tb)
            raise

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Call ``fn(*args)`` on the loop thread and wait for its result."""
        async def call() -> T:
            return fn(*args)
        return self.run(call(), timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Have ``fn(*args)`` called on the loop thread; no wait (from any thread)."""
        if self.in_loop_thread():
            self.loop.call_soon(fn, *args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    # -- calls from another event loop ----------------------------------------------------------------

    async def wrap(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run on the portal's loop, from a coroutine on any loop: directly when
        that is the portal's loop, else without blocking the caller's loop."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - only awaited from a coroutine
            running = None
        if running is self.loop:
            return await coro
        if self._stopped or self.loop.is_closed():
            coro.close()
            raise PortalError(f"the driver's event loop ({self.name}) has stopped")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    # -- life cycle ----------------------------------------------------------------------------------

    def stop(self, timeout: float = 10) -> None:
        """Stop the loop (what is pending on it is cancelled) and wait for its thread. Idempotent;
        from the loop thread itself it only asks the loop to stop."""
        if self._stopped:
            return
        self._stopped = True
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread():
            self.thread.join(timeout)

    def __enter__(self) -> Portal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Portal {self.name} {state}>"


__all__ = ["Portal", "PortalError"]
