"""Moved to :mod:`bndl_like.execute.driver.recent`; this path stays for code that imports it."""

from typing import Any

from .driver import recent as _module
from .driver.recent import JobSummary, RecentJobs

__all__ = ["JobSummary", "RecentJobs"]


def __getattr__(name: str) -> Any:
    return getattr(_module, name)
