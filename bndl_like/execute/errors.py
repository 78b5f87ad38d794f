"""Exceptions of the execute layer."""

from __future__ import annotations


class TaskCancelled(BaseException):
    """Raised inside a task's thread when the task is cancelled.

    A ``BaseException`` so that a task's ``except Exception`` does not swallow it.
    """


class TaskTimeout(TimeoutError):
    """A task ran longer than its ``timeout=``; it was interrupted and failed."""


class DependenciesFailed(Exception):
    """A task could not get the outputs of some dependencies.

    ``failures`` maps the worker that should have held them to the task ids.
    """

    def __init__(self, failures: dict):
        self.failures = {worker: list(ids) for worker, ids in failures.items()}
        detail = "; ".join(f"{w}: {ids}" for w, ids in self.failures.items())
        super().__init__(f"dependency outputs could not be fetched ({detail})")

    def __reduce__(self):
        return DependenciesFailed, (self.failures,)


class FailedDependency(Exception):
    """The output of a finished task was lost with ``worker_failed``; it runs again."""

    def __init__(self, worker_failed: str | None = None):
        self.worker_failed = worker_failed
        super().__init__(f"output lost with worker {worker_failed}")

    def __reduce__(self):
        return FailedDependency, (self.worker_failed,)


class JobCancelled(Exception):
    """The job was cancelled before it finished."""


class WorkersLost(Exception):
    """Every worker the job could use was lost."""


class WorkerDied(Exception):
    """A task was running on ``execute.worker_deaths`` workers that were lost (killed, crashed, ran
    out of memory): it fails rather than kill the next one.

    ``worker`` is the last of them, ``workers`` all of them (oldest first) and ``deaths`` their
    number, which is the limit it reached. ``exit_status`` ("killed by SIGKILL", "exited with
    code 3") is None until the execution shell learns it; the message is built when it is shown.
    """

    def __init__(self, task_id, worker: str, deaths: int, workers: list[str] | None = None,
                 exit_status: str | None = None):
        super().__init__(task_id, worker, deaths)
        self.task_id = task_id
        self.worker = worker
        self.deaths = deaths
        self.workers = list(workers) if workers is not None else [worker]
        self.exit_status = exit_status

    def __str__(self) -> str:
        status = self.exit_status or "exit status unknown"
        died = f"{self.deaths} worker{'s' if self.deaths != 1 else ''} died"
        return (f"task {self.task_id!r} was running on worker {self.worker} when it died ({status}); "
                f"{died} running it ({', '.join(self.workers)}), "
                f"the limit is execute.worker_deaths={getattr(self, 'limit', None) or self.deaths}")

    def _key(self) -> tuple:
        return self.task_id, self.worker, self.deaths, self.workers, self.exit_status

    def __eq__(self, other):
        # by value, as the scheduler's decisions that carry it are: a replay compares equal
        return self._key() == other._key() if type(other) is WorkerDied else NotImplemented

    def __hash__(self) -> int:
        return hash((self.task_id, self.worker, self.deaths))

    def __reduce__(self):
        return WorkerDied, self._key()
