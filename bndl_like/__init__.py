"""bndl_like: run DAG jobs of interdependent tasks on a cluster of worker processes."""

from .execute.command import CommandFailed, CommandResult, CommandTask, CommandTimeout
from .execute.context import ExecutionContext
from .execute.errors import (
                               DependenciesFailed,
                               FailedDependency,
                               JobCancelled,
                               TaskCancelled,
                               TaskTimeout,
                               WorkerDied,
                               WorkersLost,
)
from .execute.tasks import FuncTask, Job, RmiTask, Task
from .execute.worker import current_worker, task_context
from .rmi.errors import NotConnected, RemoteError
from .rmi.pickle_check import UnpicklableError

__version__ = "0.1.0"

__all__ = [
    "ExecutionContext", "Job", "Task", "RmiTask", "FuncTask",
    "TaskCancelled", "TaskTimeout", "DependenciesFailed", "FailedDependency", "JobCancelled", "WorkersLost",
    "WorkerDied",
    "CommandTask", "CommandResult", "CommandFailed", "CommandTimeout",
    "NotConnected", "RemoteError", "UnpicklableError", "current_worker", "task_context", "__version__",
]
