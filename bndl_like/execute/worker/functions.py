"""The ``functions`` service of a worker: ``run_function``, ``run_each_worker``, ``run_each_host``."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...rmi import takes_peer
from .. import handles
from . import output
from .context import TaskContext, enter, leave
from .scatter import find_missing


def _function_name(fn) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


class FunctionService:
    """Runs pickled callables in a thread pool so the event loop stays free.

    In the call, ``current_worker()`` is ``node`` and ``task_context()`` names the function
    (see :class:`TaskContext`); what it prints and logs is the caller's task output.
    """

    def __init__(self, threads: int = 4, node=None):
        self.threads = threads
        self.node = node
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="bndl-like-fn")

    @takes_peer
    async def call(self, caller, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
        if handles._missing_made and handles.take_missing_count():
            missing = find_missing((fn, args, kwargs))
            if missing is not None:
                raise missing.error()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, self._run, caller.name, fn, args, kwargs)
        finally:
            output.flush_pending()  # what the function printed leaves before its result

    def _run(self, caller: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
        node = self.node
        name = _function_name(fn)
        if node is not None:
            enter(node, TaskContext(None, None, 1, node.name, caller, name))
        sink = output.begin(caller, "call", name)
        try:
            return fn(*args, **kwargs)
        finally:
            leave()
            output.end(sink)

    def info(self) -> dict:
        return {"pid": os.getpid(), "hostname": socket.gethostname(), "threads": self.threads}

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["FunctionService"]
