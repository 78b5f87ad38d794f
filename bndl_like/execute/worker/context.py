"""Where the code running on a worker runs, and as what: ``current_worker()`` and ``task_context()``.

The worker's runner threads (tasks) and its function service (``run_function`` and its kin) set
them for the thread that runs the code (:func:`enter`, :func:`leave`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

_local = threading.local()
_ONLY_ON_A_WORKER = (" is only available inside a task or a function the cluster runs on a worker "
                     "(execute, map, run_function, run_each_worker, run_each_host)")


def enter(worker: Any, context: TaskContext) -> None:
    """The calling thread now runs code as ``context`` on ``worker`` (a node)."""
    _local.worker = worker
    _local.context = context


def leave() -> None:
    _local.worker = _local.context = None


def current_worker():
    """The worker node running the current task or function (``run_function``,
    ``run_each_worker``, ``run_each_host``, ``map``); RuntimeError elsewhere."""
    worker = getattr(_local, "worker", None)
    if worker is None:
        raise RuntimeError("current_worker()" + _ONLY_ON_A_WORKER)
    return worker


@dataclass(frozen=True)
class TaskContext:
    """Where and as what the current code runs on a worker.

    In a task: its id, job and attempt (``function`` is None). In a function called by
    ``run_function``, ``run_each_worker`` or ``run_each_host`` (which run outside any job):
    ``task_id`` and ``job_id`` are None, ``attempt`` is 1 and ``function`` is the function's
    name.
    """

    task_id: Any
    job_id: int | None
    attempt: int
    worker: str
    driver: str
    function: str | None = None


def task_context() -> TaskContext:
    """The id, job, attempt of the running task (see :class:`TaskContext` for functions
    called by ``run_function`` and its kin); RuntimeError elsewhere."""
    context = getattr(_local, "context", None)
    if context is None:
        raise RuntimeError("task_context()" + _ONLY_ON_A_WORKER)
    return context


__all__ = ["TaskContext", "current_worker", "enter", "leave", "task_context"]
