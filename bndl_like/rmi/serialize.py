"""Pickling with out-of-band buffers.

Objects are pickled with protocol 5. Large contiguous buffers (numpy arrays,
``bytes``, ``bytearray``) are not copied into the pickle stream: they travel
as frame parts of their own and are unpickled on top of the received buffer.

The standard pickler is tried first because it is fast; cloudpickle takes
over when that fails (lambdas, closures) or when the pickle refers to
``__main__``, whose functions and classes a remote process cannot import.
"""

from __future__ import annotations

import io
import pickle
import traceback

import cloudpickle
import tblib

from .errors import SerializationError

# buffers smaller than this are cheaper to keep in the pickle stream
OUT_OF_BAND_MIN = 1 << 16


def _bytes_from_buffer(buf) -> bytes:
    return bytes(buf)


def _bytearray_from_buffer(buf) -> bytearray:
    return buf if isinstance(buf, bytearray) else bytearray(buf)


class _OutOfBandMixin:
    def reducer_override(self, obj):
        cls = type(obj)
        if cls is bytes and len(obj) >= OUT_OF_BAND_MIN:
            return _bytes_from_buffer, (pickle.PickleBuffer(obj),)
        if cls is bytearray and len(obj) >= OUT_OF_BAND_MIN:
            return _bytearray_from_buffer, (pickle.PickleBuffer(obj),)
        parent = super()
        if hasattr(parent, "reducer_override"):
            return parent.reducer_override(obj)
        return NotImplemented


class _Pickler(_OutOfBandMixin, pickle.Pickler):
    pass


class _CloudPickler(_OutOfBandMixin, cloudpickle.CloudPickler):
    pass


def _buffer_callback(buffers: list):
    def callback(buf: pickle.PickleBuffer):
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True  # in band
        buffers.append(raw)
        return False
    return callback


def dumps(obj) -> tuple[bytes, list]:
    """Pickle ``obj``; return the pickle and the list of out-of-band buffers."""
    buffers: list = []
    stream = io.BytesIO()
    try:
        _Pickler(stream, protocol=5, buffer_callback=_buffer_callback(buffers)).dump(obj)
        data = stream.getvalue()
        if b"__main__" not in data:
            return data, buffers
    except Exception:
        pass
    buffers = []
    stream = io.BytesIO()
    try:
        _CloudPickler(stream, protocol=5, buffer_callback=_buffer_callback(buffers)).dump(obj)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {_describe(obj)}: {exc}") from exc
    return stream.getvalue(), buffers


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
    tb_dict = tblib.Traceback(exc.__traceback__).to_dict() if exc.__traceback__ else None
    exc_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        # check the exception survives a round trip before trusting it
        data, _ = dumps(exc)  # pickling drops __traceback__
        pickle.loads(data)
        payload = exc
    except Exception:
        payload = None
    return payload, exc_type, str(exc), tb_text, tb_dict


def load_exception(payload, tb_dict):
    if payload is not None and tb_dict is not None:
        try:
            payload = payload.with_traceback(tblib.Traceback.from_dict(tb_dict).as_traceback())
        except Exception:
            pass
    return payload
