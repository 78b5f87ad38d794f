"""Exceptions raised on workers, as the driver raises them: the original exception, with the
remote frames as its own traceback and where it failed as its ``__cause__``."""

from __future__ import annotations

from typing import Any

from ...rmi.errors import RemoteError
from ...rmi.remote_tb import attach_origin
from ...rmi.serialize import load_exception


def remote_exception(info: tuple, worker: str, task: Any) -> BaseException:
    """The task's own exception (with the remote frames) or a RemoteError."""
    payload, exc_type, text, tb_text, frames = info
    exc = load_exception(payload, frames)
    if exc is None:
        exc = RemoteError(f"{exc_type}: {text}", exc_type, tb_text, worker)
    else:
        exc.remote_traceback = tb_text
        # where it failed goes into its __cause__ (with the remote frames), not into a note:
        # str(exc), args and notes stay as raised, so pytest.raises(match=...) still matches
        attach_origin(exc, f"task {task.id!r} failed on worker {worker}, attempt {max(task.attempts, 1)}")
    return exc


def unwrap_remote(exc: BaseException) -> BaseException:
    """A RemoteError's original exception (with ``remote_traceback``), like ``execute`` raises."""
    if isinstance(exc, RemoteError) and isinstance(exc.__cause__, Exception):
        original = exc.__cause__
        original.remote_traceback = exc.remote_traceback  # type: ignore[attr-defined]
        return attach_origin(original, f"raised on worker {exc.peer}")
    return exc


__all__ = ["remote_exception", "unwrap_remote"]
