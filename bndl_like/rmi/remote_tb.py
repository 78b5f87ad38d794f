"""Tracebacks that cross the wire: frames as plain tuples, rebuilt as real tracebacks.

A remote exception is raised on the caller with a traceback made of stand-in
frames (one tiny code object per remote frame, with the remote file, line,
function name, qualified name and first line), so that ``traceback``, IPython
and debuggers show the remote code where it failed. The framework's own frames
can be folded away so a failed task reads as the user's code failing.

Re-raised on the driver, the exception keeps its message, ``args`` and notes as
raised remotely, and the remote frames as its traceback; where it was raised (task,
worker, attempt) is its ``__cause__``, a :class:`RemoteTraceback`, which ``traceback``
and IPython show above it and ``pytest.raises(match=...)`` (which also matches notes)
does not see.
"""

from __future__ import annotations

import sys
from types import TracebackType

from .errors import SerializationError

# (module, filename, name, qualname, first line of the function, line)
Frame = tuple[str, str, str, str, int, int]

# packages whose frames run a remote call before the user's code is reached
_PLUMBING = frozenset(("threading", "concurrent", "asyncio", "functools", "runpy"))


def extract(tb: TracebackType | None) -> list[Frame]:
    """The frames of ``tb``, outermost first, as picklable tuples."""
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        module = tb.tb_frame.f_globals.get("__name__")
        frames.append((module if isinstance(module, str) else "", code.co_filename, code.co_name,
                       getattr(code, "co_qualname", code.co_name), code.co_firstlineno, tb.tb_lineno or 0))
        tb = tb.tb_next
    return frames


def _is_framework(module: str) -> bool:
    return module == "bndl_like" or module.startswith("bndl_like.")


def fold(frames: list[Frame]) -> tuple[list[Frame], int]:
    """``frames`` without the framework's, and how many were folded.

    Drops bndl_like's own frames and the thread/asyncio plumbing before the first
    frame of the user's code. When every frame is the framework's (the error is
    ours), nothing is folded.
    """
    kept, reached_user = [], False
    for frame in frames:
        module = frame[0]
        if _is_framework(module):
            continue
        if not reached_user and module.split(".")[0] in _PLUMBING:
            continue
        reached_user = True
        kept.append(frame)
    if not kept:
        return list(frames), 0
    return kept, len(frames) - len(kept)


class _Raise(Exception):
    pass


def _stand_in(code, module: str, filename: str):
    """The traceback entry of ``code`` raising. A generator: the stand-in frame's caller is
    its frame, which refers to no caller once suspended, so the traceback does not keep
    the frames of whoever rebuilt it (and their locals) alive."""
    try:
        exec(code, {"__raise__": _Raise, "__name__": module, "__file__": filename})
    except _Raise:
        yield sys.exc_info()[2].tb_next  # the stand-in frame, without this one


def rebuild(frames: list[Frame]) -> TracebackType | None:
    """A real traceback whose frames stand for ``frames`` (outermost first)."""
    top = last = None
    for module, filename, name, qualname, first, line in frames:
        first = min(first, line) if first > 0 else line
        # the raise sits on ``line`` of a code object starting at ``first``, as the remote one did;
        # spread over two lines, it marks no columns (tracebacks would underline the wrong ones)
        code = compile("\n" * max(line - first, 0) + "raise (\n__raise__)", filename, "exec")
        fields = {"co_firstlineno": max(first, 1), "co_name": name}
        if sys.version_info >= (3, 11):
            fields["co_qualname"] = qualname
        code = code.replace(**fields)
        tb = next(_stand_in(code, module, filename))
        if top is None:
            top = tb
        else:
            last.tb_next = tb
        last = tb
    return top


class RemoteTraceback(Exception):
    """The ``__cause__`` of a remote exception re-raised here: its message says where the
    exception was raised and how many of the framework's frames were folded."""


def frames_folded(count: int) -> str:
    """``"; 2 bndl_like frames folded, all in exc.remote_traceback"`` ("" for none)."""
    if not count:
        return ""
    return f"; {count} bndl_like frame{'' if count == 1 else 's'} folded, all in exc.remote_traceback"


def attach_origin(exc: BaseException, where: str) -> BaseException:
    """``exc`` with a :class:`RemoteTraceback` cause saying ``where`` it was raised (and what
    was folded). ``str(exc)``, ``exc.args``, the notes and the traceback (the remote frames)
    stay as they were, so the remote frames show last, right above the error, where IPython
    does not hide them. Returns ``exc``; a second call leaves it as it is. A SerializationError
    (one line naming the task or call and the part that does not pickle) is left as it is."""
    if not isinstance(exc.__cause__, RemoteTraceback) and not isinstance(exc, SerializationError):
        exc.__cause__ = RemoteTraceback(where + frames_folded(getattr(exc, "remote_frames_folded", 0)))
    return exc


__all__ = ["Frame", "RemoteTraceback", "attach_origin", "extract", "fold", "frames_folded", "rebuild"]
