"""Moved: the handle to :mod:`bndl_like.execute.handles`, the driver's registry to
:mod:`bndl_like.execute.driver.scatter`, the worker's service to
:mod:`bndl_like.execute.worker.scatter`; this path stays for code that imports it."""

from .driver.scatter import ScatterRegistry
from .handles import ScatterError, ScatterHandle
from .worker.scatter import ScatterService, TaskHandles, find_missing, load_tasks

__all__ = ["ScatterError", "ScatterHandle", "ScatterRegistry", "ScatterService", "TaskHandles",
           "find_missing", "load_tasks"]
