"""Moved to :mod:`bndl_like.execute.driver.context`; this path stays for code that imports it."""

from typing import Any

from .driver import context as _module
from .driver.context import ExecutionContext, JobCancelled

__all__ = ["ExecutionContext", "JobCancelled"]


def __getattr__(name: str) -> Any:
    return getattr(_module, name)
