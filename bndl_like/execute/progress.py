"""Moved to :mod:`bndl_like.execute.driver.progress`; this path stays for code that imports it."""

from typing import Any

from .driver import progress as _module
from .driver.progress import JobProgress, check, interactive, wanted

__all__ = ["JobProgress", "check", "interactive", "wanted"]


def __getattr__(name: str) -> Any:
    return getattr(_module, name)
