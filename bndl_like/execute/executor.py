"""Moved to :mod:`bndl_like.execute.driver.executor`; this path stays for code that imports it."""

from typing import Any

from .driver import executor as _module
from .driver.executor import AsyncExecutionContext, ExecutorMixin, default_chunksize

__all__ = ["AsyncExecutionContext", "ExecutorMixin", "default_chunksize"]


def __getattr__(name: str) -> Any:
    return getattr(_module, name)
