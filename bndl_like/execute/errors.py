"""Exceptions of the execute layer, and how the public methods raise them."""

from __future__ import annotations

import dis
from types import TracebackType

from ..errors import BndlLikeError

_RAISE = dis.opmap["RAISE_VARARGS"]


def _framework_frame(tb: TracebackType) -> bool:
    """A frame of bndl_like's own code (not a stand-in for a remote frame, whatever its module)."""
    f_globals = tb.tb_frame.f_globals
    module = f_globals.get("__name__")
    return (isinstance(module, str) and (module == "bndl_like" or module.startswith("bndl_like."))
            and "__raise__" not in f_globals)


def _raised_on_purpose(tb: TracebackType) -> bool:
    """Whether the innermost frame of ``tb`` failed at a ``raise`` statement (not at an
    operation that failed, which in the framework's own code would be a bug)."""
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code.co_code
    return 0 <= tb.tb_lasti < len(code) and code[tb.tb_lasti] == _RAISE


def trim_traceback(exc: BaseException) -> BaseException:
    """``exc`` without the framework's frames at the front of its traceback, for a public
    method to raise: the user then sees their call, that method (one frame, which IPython
    and pytest hide: ``__tracebackhide__``) and what failed below it (their own code, the
    remote frames). An error the framework raised on purpose (a bad argument, a closed
    context) keeps no frame of it; one that arose in its code otherwise (a bug) keeps all."""
    tb = exc.__traceback__
    while tb is not None and _framework_frame(tb):
        tb = tb.tb_next
    if tb is not None or exc.__traceback__ is None or _raised_on_purpose(exc.__traceback__):
        exc.__traceback__ = tb
    return exc


class TaskCancelled(BaseException):
    """Raised inside a task's thread when the task is cancelled.

    A ``BaseException`` so that a task's ``except Exception`` does not swallow it; a signal,
    not an error, so not a ``BndlLikeError`` either.
    """


class TaskTimeout(BndlLikeError, TimeoutError):
    """A task ran longer than its ``timeout=``; it was interrupted and failed."""


class DependenciesFailed(BndlLikeError):
    """A task could not get the outputs of some dependencies.

    ``failures`` maps the worker that should have held them to the task ids.
    """

    def __init__(self, failures: dict):
        self.failures = {worker: list(ids) for worker, ids in failures.items()}
        detail = "; ".join(f"{w}: {ids}" for w, ids in self.failures.items())
        super().__init__(f"dependency outputs could not be fetched ({detail})")

    def __reduce__(self):
        return DependenciesFailed, (self.failures,)


class FailedDependency(BndlLikeError):
    """The output of a finished task was lost with ``worker_failed``; it runs again."""

    def __init__(self, worker_failed: str | None = None):
        self.worker_failed = worker_failed
        super().__init__(f"output lost with worker {worker_failed}")

    def __reduce__(self):
        return FailedDependency, (self.worker_failed,)


class JobCancelled(BndlLikeError):
    """The job was cancelled before it finished."""


class WorkersLost(BndlLikeError):
    """Every worker the job could use was lost."""


class WorkerDied(BndlLikeError):
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
        self.limit: int | None = None  # execute.worker_deaths, when it is not the number of deaths

    def __str__(self) -> str:
        status = self.exit_status or "exit status unknown"
        died = f"{self.deaths} worker{'s' if self.deaths != 1 else ''} died"
        return (f"task {self.task_id!r} was running on worker {self.worker} when it died ({status}); "
                f"{died} running it ({', '.join(self.workers)}), "
                f"the limit is execute.worker_deaths={self.limit or self.deaths}")

    def _key(self) -> tuple:
        return self.task_id, self.worker, self.deaths, self.workers, self.exit_status

    def __eq__(self, other):
        # by value, as the scheduler's decisions that carry it are: a replay compares equal
        return self._key() == other._key() if type(other) is WorkerDied else NotImplemented

    def __hash__(self) -> int:
        return hash((self.task_id, self.worker, self.deaths))

    def __reduce__(self):
        return WorkerDied, self._key()
