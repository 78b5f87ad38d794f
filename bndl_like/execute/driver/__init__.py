"""The driver's side of execution: the context users hold (:mod:`.context`, with the executor
conveniences of :mod:`.executor`), the shell that runs one job (:mod:`.run`), scatter's registry,
task output, progress and the record of recent jobs. Imports nothing of the worker."""

from .context import ExecutionContext
from .executor import AsyncExecutionContext

__all__ = ["AsyncExecutionContext", "ExecutionContext"]
