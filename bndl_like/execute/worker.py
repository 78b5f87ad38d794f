"""The services a worker node offers (grows into the task-running worker service)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class FunctionService:
    """Runs pickled callables in a thread pool so the event loop stays free."""

    def __init__(self, threads: int = 1):
        self.threads = threads
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="bndl-like-fn")

    async def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def info(self) -> dict:
        return {"pid": os.getpid(), "hostname": socket.gethostname(), "threads": self.threads}

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
