"""bndl_like: run DAG jobs of interdependent tasks on a cluster of worker processes.

The names below are imported on first use (``from bndl_like import ExecutionContext`` imports the
driver; ``import bndl_like`` alone imports nothing else), so a worker process, or a program that
needs one error class, does not pay for the driver's modules.
"""

import importlib
import sys
import types
import typing

if typing.TYPE_CHECKING:
    from .errors import BndlLikeError
    from .execute.driver.context import ExecutionContext
    from .execute.driver.executor import AsyncExecutionContext
    from .execute.errors import (
                                   DependenciesFailed,
                                   FailedDependency,
                                   JobCancelled,
                                   TaskCancelled,
                                   TaskTimeout,
                                   WorkerDied,
                                   WorkersLost,
    )
    from .execute.handles import ScatterError, ScatterHandle
    from .execute.tasks import FuncTask, Job, RmiTask, Task
    from .execute.worker.command import CommandFailed, CommandResult, CommandTask, CommandTimeout
    from .execute.worker.context import TaskContext, current_worker, task_context
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

# each exported name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    "BndlLikeError": ".errors",
    **dict.fromkeys(("CommandFailed", "CommandResult", "CommandTask", "CommandTimeout"),
                    ".execute.worker.command"),
    "ExecutionContext": ".execute.driver.context",
    **dict.fromkeys(("DependenciesFailed", "FailedDependency", "JobCancelled", "TaskCancelled",
                     "TaskTimeout", "WorkerDied", "WorkersLost"), ".execute.errors"),
    "AsyncExecutionContext": ".execute.driver.executor",
    **dict.fromkeys(("ScatterError", "ScatterHandle"), ".execute.handles"),
    **dict.fromkeys(("FuncTask", "Job", "RmiTask", "Task"), ".execute.tasks"),
    **dict.fromkeys(("TaskContext", "current_worker", "task_context"), ".execute.worker.context"),
    **dict.fromkeys(("HandshakeError", "MessageTooLarge", "NotConnected", "ProtocolError",
                     "RemoteError", "SerializationError"), ".rmi.errors"),
    "UnpicklableError": ".rmi.pickle_check",
}
# the names a driver program imports: when a program's own code (a script's, a notebook's) looks
# one up before the driver's modules are imported, the fork server of its local cluster starts
# then (see local.prestart_fork_server), and imports the workers' modules while the driver imports
# its own, on another core
_DRIVER_NAMES = frozenset({"ExecutionContext", "AsyncExecutionContext", "Job", "Task", "RmiTask", "FuncTask"})
_DRIVER_MODULE = __name__ + _EXPORTS["ExecutionContext"]

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


def __getattr__(name: str) -> typing.Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _DRIVER_NAMES and _DRIVER_MODULE not in sys.modules and _importer() == "__main__":
        from .local import prestart_fork_server

        prestart_fork_server()
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value  # later look-ups do not come here
    return value


def _importer() -> str:
    """The module whose code looks the name up (``from bndl_like import X`` passes through
    importlib's frames first)."""
    try:
        frame: types.FrameType | None = sys._getframe(2)
    except ValueError:  # looked up from C with no Python caller
        return ""
    while frame is not None and frame.f_globals.get("__name__", "").startswith("importlib."):
        frame = frame.f_back
    return "" if frame is None else frame.f_globals.get("__name__", "")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
