"""How many threads the numeric libraries of a worker process may start.

OpenBLAS, MKL, Accelerate, BLIS, OpenMP and numexpr each start a thread per core by
default. Several workers on one host, each running tasks in its own threads, then
run (workers x concurrency x cores) threads on the cores: a matrix product in many
tasks on 2 workers of a 2-core host ran 3x slower than with one BLAS thread each.
The libraries read these variables once, when they load, so they are set in a
worker's environment before it starts: to the worker's concurrency, for the
variables the user did not set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .. import config

# read by OpenMP, OpenBLAS, MKL, Apple's Accelerate (vecLib), BLIS and numexpr at load time
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def worker_concurrency(worker_argv: Sequence[str], env: Mapping[str, str]) -> int:
    """The task threads a ``bndl-like worker`` started with ``worker_argv`` in ``env`` runs:
    its ``--concurrency``, else ``BNDL_LIKE_CONCURRENCY``, else ``execute.concurrency``
    (``BNDL_LIKE_EXECUTE_CONCURRENCY``, default 1). A value that is not a positive integer
    counts as 1 here; the worker itself refuses it, naming it."""
    value = None
    for i, arg in enumerate(worker_argv):
        if arg == "--concurrency" and i + 1 < len(worker_argv):
            value = worker_argv[i + 1]
        elif arg.startswith("--concurrency="):
            value = arg.partition("=")[2]
    if value is None:
        value = env.get("BNDL_LIKE_CONCURRENCY") or env.get(config.env_name("execute.concurrency"))
    if value is None:
        return config.OPTIONS["execute.concurrency"].default
    try:
        return max(1, int(value))
    except ValueError:
        return 1


def thread_limits(env: Mapping[str, str], threads: int) -> dict[str, str]:
    """The variables of :data:`THREAD_VARIABLES` to add to ``env``: each not set there (an
    empty value counts as not set), as ``threads``."""
    return {name: str(threads) for name in THREAD_VARIABLES if not env.get(name)}


__all__ = ["THREAD_VARIABLES", "thread_limits", "worker_concurrency"]
