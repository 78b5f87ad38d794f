"""Pickling with out-of-band buffers.

Objects are pickled with protocol 5. Large contiguous buffers (numpy arrays,
``bytes``, ``bytearray``) are not copied into the pickle stream: they travel
as frame parts of their own and are unpickled on top of the received buffer.

The standard pickler is tried first because it is fast; cloudpickle takes
over when that fails (lambdas, closures) or when the pickle refers to
``__main__``, whose functions and classes a remote process cannot import.
Code pickled by value keeps its file name (``code_location``).
"""

from __future__ import annotations

import ctypes
import pickle
import reprlib
import sys
import traceback

from . import code_location, remote_tb
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
        return _to_bytes(buf)
    return buf if isinstance(buf, bytearray) else bytearray(buf)


# copies larger than this into a new bytes object are made without holding the GIL
COPY_WITHOUT_GIL = 1 << 24
_BYTES_DATA = bytes.__basicsize__ - 1  # offset of a bytes object's data (CPython)


def _to_bytes(buf) -> bytes:
    """``bytes(buf)``; a large writable buffer is copied by ``ctypes.memmove``, which lets go
    of the GIL, so that other threads (an event loop's heartbeats) go on meanwhile."""
    view = memoryview(buf)
    n = view.nbytes
    if n < COPY_WITHOUT_GIL or not view.c_contiguous or sys.implementation.name != "cpython":
        return bytes(view)
    if view.readonly:
        # what arrives out of band is read-only when the sender's buffer was (bytes are):
        # ctypes maps only writable buffers, numpy tells the address of any
        import numpy
        source: object = numpy.frombuffer(view.cast("B"), numpy.uint8)
        address = source.ctypes.data  # type: ignore[attr-defined]
    else:
        mapped = (ctypes.c_char * n).from_buffer(view.cast("B"))
        source, address = mapped, ctypes.addressof(mapped)
    out = bytes(n)  # calloc'ed: untouched pages cost nothing until written
    # a new bytes object nobody else refers to yet: written once, before anyone sees it
    ctypes.memmove(id(out) + _BYTES_DATA, address, n)
    del source
    return out


def _wrap(value):
    cls = type(value)
    if (cls is bytes or cls is bytearray) and len(value) >= OUT_OF_BAND_MIN:
        return _LargeBytes(value)
    return value


def wrap_large(value):
    """Wrap large bytes in ``value`` itself or among its direct items (list, tuple, dict values)."""
    cls = type(value)
    if cls is tuple or cls is list:
        types = set(map(type, value))  # no Python-level step per item: batches can be long
        if bytes in types or bytearray in types:
            return cls(_wrap(v) for v in value)
        return value
    if cls is dict:
        types = set(map(type, value.values()))
        if bytes in types or bytearray in types:
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
    # cloudpickle, with the file names of code pickled by value kept (tracebacks, profiles)
    return code_location.dumps(obj, protocol=5, buffer_callback=_buffer_callback(buffers))


def dumps(obj) -> tuple[bytes, list]:
    """Pickle ``obj``; return the pickle and the list of out-of-band buffers."""
    buffers: list = []
    try:
        return pickle_any(obj, buffers), buffers
    except Exception as exc:  # RecursionError of a deeply nested object too
        raise SerializationError(f"cannot pickle {_describe(obj)}: {type(exc).__name__}: {exc}") from exc


def loads(data, buffers=()):
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as exc:
        raise SerializationError(f"cannot unpickle message: {type(exc).__name__}: {exc}") from exc


def dump_envelope(msg) -> tuple[bytes, list]:
    """Pickle a message envelope: builtins and :class:`Payload` only, so the standard pickler."""
    buffers: list = []
    try:
        return pickle.dumps(msg, protocol=5, buffer_callback=_buffer_callback(buffers)), buffers
    except Exception as exc:
        raise SerializationError(f"cannot pickle {_describe(msg)}: {type(exc).__name__}: {exc}") from exc


_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = 160
_short_repr.maxlevel = 4


def _describe(obj) -> str:
    """``type repr`` in at most ~200 characters; never raises (a deeply nested object neither)."""
    try:
        text = _short_repr.repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} object>"
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(obj).__name__} {text}"


# payloads this large are unpickled in a thread, not on the event loop (copies of large bytes
# let go of the GIL there, so the loop keeps its heartbeats going)
LOAD_IN_THREAD = 1 << 26

# results of these types are pickled with the message: they always unpickle
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes})
_PLAIN_MAX = 1 << 12


class Payload:
    """One pickle of its own inside a message: what fails to unpickle fails only its own
    call or task, never the message around it.

    Made on the sending side with :meth:`dump` (pickling happens then, in the calling thread;
    large buffers stay out of band); its ``__reduce_ex__`` hands the pickle and the buffers to
    the pickler of the message as buffers, so nothing is pickled twice. On the receiving side
    the message unpickles into a Payload still holding the bytes: :meth:`load` unpickles them
    and raises :class:`SerializationError` naming the cause.
    """

    __slots__ = ("data", "buffers")

    def __init__(self, data, buffers: list):
        self.data = data
        self.buffers = buffers

    @classmethod
    def dump(cls, obj) -> Payload:
        """Pickle ``obj`` now (large ``bytes`` in it or among its direct items out of band)."""
        return cls(*dumps(wrap_large(obj)))

    def load(self):
        try:
            return pickle.loads(self.data, buffers=self.buffers)
        except Exception as exc:
            raise SerializationError(f"{type(exc).__name__}: {exc}") from exc

    @property
    def nbytes(self) -> int:
        return len(self.data) + sum(memoryview(b).nbytes for b in self.buffers)

    def __reduce_ex__(self, protocol):
        if not self.buffers and type(self.data) is bytes and len(self.data) < OUT_OF_BAND_MIN:
            return _received, (self.data,)  # small: in band as it is
        if protocol < 5:  # no out-of-band buffers: copies
            return _received, (bytes(self.data), *map(bytes, self.buffers))
        return _received, (pickle.PickleBuffer(self.data), *map(pickle.PickleBuffer, self.buffers))

    def __repr__(self) -> str:
        return f"<Payload of {self.nbytes} bytes>"


def _received(data, *buffers) -> Payload:
    return Payload(data, list(buffers))


def dump_value(value):
    """``value`` itself when it is small and of a type that always unpickles, else its
    :class:`Payload` (pickled here and now). Raises SerializationError."""
    cls = type(value)
    if cls in _PLAIN and (cls not in (str, bytes) or len(value) <= _PLAIN_MAX):
        return value
    return Payload.dump(value)


def load_value(value):
    """The inverse of :func:`dump_value`. Raises SerializationError."""
    if type(value) is Payload:
        return value.load()
    return value


def dump_exception(exc: BaseException) -> tuple:
    """Everything the caller needs to re-raise ``exc``: (its Payload or None, type, text,
    traceback text, frames). Never raises."""
    try:
        tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # RecursionError formatting a deep chain, a __str__ that raises
        tb_text = ""
    try:
        frames = remote_tb.extract(exc.__traceback__)
    except Exception:
        frames = None
    exc_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        text = str(exc)
    except Exception:
        text = f"<{exc_type} whose str() failed>"
    try:
        # check the exception survives a round trip before trusting it
        payload = Payload.dump(exc)  # pickling drops __traceback__
        payload.load()
    except Exception:
        payload = None
    return payload, exc_type, text, tb_text, frames


def load_exception(payload, frames):
    """The exception of a :class:`Payload` (None when it does not unpickle here) with the
    remote traceback; framework frames folded.

    Sets ``remote_frames_folded`` on it to the number of frames left out.
    """
    if type(payload) is Payload:
        try:
            payload = payload.load()
        except SerializationError:
            payload = None
        if not isinstance(payload, BaseException):
            payload = None
    if payload is not None and frames:
        try:
            frames, folded = remote_tb.fold(frames)
            payload = payload.with_traceback(remote_tb.rebuild(frames))
            payload.remote_frames_folded = folded
        except Exception:
            pass
    return payload
