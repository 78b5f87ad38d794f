"""bndl_like: run DAG jobs of interdependent tasks on a cluster of worker processes."""

from .errors import BndlLikeError
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
from .execute.executor import AsyncExecutionContext
from .execute.scatter import ScatterError, ScatterHandle
from .execute.tasks import FuncTask, Job, RmiTask, Task
from .execute.worker import TaskContext, current_worker, task_context
from .rmi.errors import (
                           HandshakeError,
                           MessageTooLarge,
                           NotConnected,
                           ProtocolError,
                           RemoteError,
                           SerializationError,
)
from .rmi.pickle_check import UnpicklableError

__version__ = "0.1.0"

__all__ = [
    "ExecutionContext", "AsyncExecutionContext", "Job", "Task", "RmiTask", "FuncTask",
    "ScatterHandle", "TaskContext", "current_worker", "task_context",
    "CommandTask", "CommandResult",
    # errors: each a BndlLikeError keeping its standard base, except TaskCancelled (a BaseException)
    "BndlLikeError",
    "TaskCancelled", "TaskTimeout", "DependenciesFailed", "FailedDependency", "JobCancelled", "WorkersLost",
    "WorkerDied", "ScatterError", "CommandFailed", "CommandTimeout",
    "NotConnected", "HandshakeError", "ProtocolError", "MessageTooLarge", "SerializationError",
    "UnpicklableError", "RemoteError",
    "__version__",
]
