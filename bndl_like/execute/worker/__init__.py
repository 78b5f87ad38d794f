"""The worker's side of execution: the ``tasks`` service that runs tasks in threads and serves
their outputs (:mod:`.service`), the ``functions`` service (:mod:`.functions`), scattered objects
(:mod:`.scatter`), task output (:mod:`.output`), commands (:mod:`.command`) and what code running
on a worker can ask about itself (:mod:`.context`). Imports nothing of the driver."""

from .context import TaskContext, current_worker, task_context
from .functions import FunctionService
from .service import WorkerService

__all__ = ["FunctionService", "TaskContext", "WorkerService", "current_worker", "task_context"]
