"""The wire between a driver and its workers: service names, methods, and the task events.

Both sides import this module (and never each other). A task event is a plain tuple, not an
object: tuples of ints and strings travel in a message's envelope without a pickle of their own
(``Connection.notify_plain``) and cost a tenth of a NamedTuple to pickle, which at tens of
thousands of tasks a second matters. Their shapes are the type aliases below (``mypy`` checks
every construction and read against them), and every read goes through the field constants:

====================  =============================================================
``STARTED``           ``(kind, key, attempt)``
``SUCCEEDED``         ``(kind, key, attempt, value, nbytes)`` — value: a small builtin
                      inline, a ``Payload`` otherwise, or None when the driver did not
                      ask for it; nbytes: the output's size, for locality
``FAILED``            ``(kind, key, attempt, error, retry)`` — error: ``dump_exception``'s
                      tuple; retry False when another attempt cannot help
``DEPS_FAILED``       ``(kind, key, attempt, failures)`` — failures: ``{holder: [keys]}``
``ABANDONED``         ``(kind, key, attempt)`` — the worker gave the task up by itself
                      (it is stopping): run it elsewhere, no attempt counted
``RESEND``            ``(kind, key, attempt)`` — its batch did not unpickle on the worker:
                      send this task on its own
====================  =============================================================
"""

from __future__ import annotations

import pickle
from collections.abc import Hashable, Iterable
from operator import itemgetter
from typing import Any, Final, Literal

# -- services and their methods ---------------------------------------------------------------

DRIVER_SERVICE: Final = "driver"      # on a driver: task_events (a notice from a worker)
TASKS_SERVICE: Final = "tasks"        # on a worker: run, take_back, cancel, forget_job, get_outputs, ...
FUNCTIONS_SERVICE: Final = "functions"  # on a worker: call (run_function and its kin)
SCATTER_SERVICE: Final = "scatter"    # on a worker: put, update_patch, release, held
OUTPUT_SERVICE: Final = "output"      # on both: set_forward/logs (worker), write (driver)
PROFILING_SERVICE: Final = "profiling"  # on a worker: the CPU and memory profilers

TASK_EVENTS: Final = "task_events"

# -- task events ------------------------------------------------------------------------------

STARTED: Final = "started"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
DEPS_FAILED: Final = "deps"
ABANDONED: Final = "cancelled"
RESEND: Final = "resend"

# the fields, by position
KIND: Final = 0
KEY: Final = 1
ATTEMPT: Final = 2
VALUE: Final = 3       # SUCCEEDED
NBYTES: Final = 4      # SUCCEEDED
ERROR: Final = 3       # FAILED
RETRY: Final = 4       # FAILED
FAILURES: Final = 3    # DEPS_FAILED

Started = tuple[Literal["started"], Hashable, int]
Succeeded = tuple[Literal["succeeded"], Hashable, int, Any, int]
# error: dump_exception's (payload or None, type name, message, traceback text, frames or None)
Failed = tuple[Literal["failed"], Hashable, int, tuple[Any, ...], bool]
DepsFailed = tuple[Literal["deps"], Hashable, int, dict[str, list[Hashable]]]
Abandoned = tuple[Literal["cancelled"], Hashable, int]
Resend = tuple[Literal["resend"], Hashable, int]
# one event of a batch a worker sends to the driver's ``driver.task_events``
TaskEvent = Started | Succeeded | Failed | DepsFailed | Abandoned | Resend

# task ids of these types (and tuples of them) travel in the envelope
PLAIN_KEYS: Final = frozenset({int, str})


def plain_key(key: object) -> bool:
    """A task id made of ints, strings, floats, None and tuples of them: it always unpickles,
    so it may travel in a message's envelope (see ``Connection.notify_plain``)."""
    cls = type(key)
    if cls is tuple:
        return all(plain_key(k) for k in key)  # type: ignore[attr-defined]
    return cls in PLAIN_KEYS or cls is float or key is None or cls is bool or cls is bytes


# the types of the plain task ids that are not tuples
_PLAIN_ATOMS: Final = frozenset({int, str, float, bool, bytes, type(None)})


def plain_keys(keys: Iterable[object]) -> bool:
    """Whether every task id of ``keys`` is plain (:func:`plain_key`): for all the ids of a job
    at once, by the set of their types and, for tuples of one length, of the types of each of
    their items (no Python step per id)."""
    keys = list(keys)
    types = set(map(type, keys))
    if types <= _PLAIN_ATOMS:
        return True
    if types - _PLAIN_ATOMS != {tuple}:
        return False
    tuples = keys if len(types) == 1 else [key for key in keys if type(key) is tuple]
    lengths = set(map(len, tuples))  # type: ignore[arg-type]
    if len(lengths) != 1:
        return all(map(plain_key, tuples))
    return all(plain_keys(map(itemgetter(i), tuples)) for i in range(lengths.pop()))  # type: ignore[arg-type]


# -- task runs (driver -> worker) ------------------------------------------------------------------

# one task of a batch the driver sends to a worker's ``tasks.run``: (key, attempt, fn, args,
# kwargs, dependencies, timeout, send, confirm) — dependencies: ``{dependency key: the worker
# holding its output}``; send: the driver wants the result back (else it stays on the worker);
# confirm: report this task's start and end at once and run it alone (a suspect of killing its worker)
TaskRun = tuple[Hashable, int, Any, tuple[Any, ...], dict[str, Any], dict[Hashable, str | None], float | None,
                bool, bool]
RUN_KEY: Final = 0
RUN_ATTEMPT: Final = 1
RUN_FN: Final = 2
RUN_ARGS: Final = 3
RUN_KWARGS: Final = 4
RUN_DEPS: Final = 5
RUN_TIMEOUT: Final = 6
RUN_SEND: Final = 7
RUN_CONFIRM: Final = 8


def load_by_value(data: bytes) -> Any:
    """Unpickle a function the driver pickled by value once for several batches of task runs
    (sent at once) and put in each batch as this call: every batch still unpickles its own
    copy, as when the function was pickled with the batch."""
    return pickle.loads(data)


# -- forwarded output (worker -> driver's output.write) ----------------------------------------------

STDOUT: Final = 1
STDERR: Final = 2
RECORD: Final = 3

__all__ = [
    "ABANDONED", "DEPS_FAILED", "DRIVER_SERVICE", "FAILED", "FUNCTIONS_SERVICE", "OUTPUT_SERVICE",
    "PLAIN_KEYS", "PROFILING_SERVICE", "RESEND", "SCATTER_SERVICE", "STARTED", "SUCCEEDED",
    "TASKS_SERVICE", "TASK_EVENTS", "TaskEvent", "TaskRun", "load_by_value", "plain_key", "plain_keys",
]
