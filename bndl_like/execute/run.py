"""Moved to :mod:`bndl_like.execute.driver.run`; this path stays for code that imports it."""

from typing import Any

from .driver import run as _module
from .driver.run import END, JobResults, JobRun, TaskCancelled

__all__ = ["END", "JobResults", "JobRun", "TaskCancelled"]


def __getattr__(name: str) -> Any:
    return getattr(_module, name)
