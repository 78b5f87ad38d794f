"""Pickling with out-of-band buffers.

Objects are pickled with protocol 5. Large contiguous buffers (numpy arrays,
``bytes``, ``bytearray``) are not copied into the pickle stream: they travel
as frame parts of their own and are unpickled on top of the received buffer.

The standard pickler is tried first because it is fast; cloudpickle takes
over when that fails (lambdas, closures) or when the pickle refers to
``__main__``, whose functions and classes a remote process cannot import.
"""

from __future__ import annotations

import pickle
import traceback

import cloudpickle

from . import remote_tb
from .errors import SerializationError

# buffers smaller than this are cheaper to keep in the pickle stream
OUT_OF_BAND_MIN = 1 << 16


class _LargeBytes:
    """Carries a large ``bytes``/``bytearray`` out of band.

    Picklers never consult ``reducer_override`` for exact ``bytes``, so large
    ones in a message's arguments or result are wrapped before pickling.
    """

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        rebuild = bytes if type(self.data) is bytes else bytearray
        return _rebuild, (rebuild is bytes, pickle.PickleBuffer(self.data))


def _rebuild(as_bytes: bool, buf):
    if as_bytes:
        return bytes(buf)
    return buf if isinstance(buf, bytearray) else bytearray(buf)


def _wrap(value):
    cls = type(value)
    if (cls is bytes or cls is bytearray) and len(value) >= OUT_OF_BAND_MIN:
        return _LargeBytes(value)
    return value


def wrap_large(value):
    """Wrap large bytes in ``value`` itself or among its direct items (list, tuple, dict values)."""
    cls = type(value)
    if cls is tuple or cls is list:
        if any(type(v) in (bytes, bytearray) for v in value):
            return cls(_wrap(v) for v in value)
        return value
    if cls is dict:
        if any(type(v) in (bytes, bytearray) for v in value.values()):
            return {k: _wrap(v) for k, v in value.items()}
        return value
    return _wrap(value)


def _buffer_callback(buffers: list):
    def callback(buf: pickle.PickleBuffer):
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # in band
        buffers.append(raw)
        return False
    return callback


def pickle_any(obj, buffers: list) -> bytes:
    """The pickle of ``obj``, large buffers appended to ``buffers``: the standard pickler,
    else cloudpickle. Raises the pickler's own error."""
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=_buffer_callback(buffers))
        if b"__main__" not in data:
            return data
    except Exception:
        pass
    buffers.clear()
    return cloudpickle.dumps(obj, protocol=5, buffer_callback=_buffer_callback(buffers))


def dumps(obj) -> tuple[bytes, list]:
    """Pickle ``obj``; return the pickle and the list of out-of-band buffers."""
    buffers: list = []
    try:
        return pickle_any(obj, buffers), buffers
    except Exception as exc:
        raise SerializationError(f"cannot pickle {_describe(obj)}: {exc}") from exc


def loads(data, buffers=()):
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as exc:
        raise SerializationError(f"cannot unpickle message: {type(exc).__name__}: {exc}") from exc


def _describe(obj) -> str:
    text = repr(obj)
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(obj).__name__} {text}"


def dump_exception(exc: BaseException) -> tuple:
    """Everything the caller needs to re-raise ``exc``: (exc or None, type, text, tb text, tb)."""
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    frames = remote_tb.extract(exc.__traceback__)
    exc_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        # check the exception survives a round trip before trusting it
        data, _ = dumps(exc)  # pickling drops __traceback__
        pickle.loads(data)
        payload = exc
    except Exception:
        payload = None
    return payload, exc_type, str(exc), tb_text, frames


def load_exception(payload, frames):
    """``payload`` (an exception) with the remote traceback; framework frames folded.

    Sets ``remote_frames_folded`` on it to the number of frames left out.
    """
    if payload is not None and frames:
        try:
            frames, folded = remote_tb.fold(frames)
            payload = payload.with_traceback(remote_tb.rebuild(frames))
            payload.remote_frames_folded = folded
        except Exception:
            pass
    return payload
