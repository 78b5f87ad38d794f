"""Pickling with out-of-band buffers: what travels in band and what does not."""

from __future__ import annotations

import pickle
import sys
import traceback

import numpy as np
import pytest

from bndl_like.rmi import SerializationError, serialize


def test_numpy_array_travels_out_of_band_and_comes_back_writable():
    array = np.arange(1 << 20, dtype=np.float64)
    data, buffers = serialize.dumps(("call", array))
    assert len(data) < 1024
    assert [b.nbytes for b in buffers] == [array.nbytes]
    received = [bytearray(b) for b in buffers]
    _, back = serialize.loads(data, received)
    assert np.array_equal(back, array)
    back[0] = -1  # writable, built on the received buffer
    assert received[0][:8] == np.float64(-1).tobytes()


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_travel_out_of_band(kind):
    big = kind(b"ab" * (1 << 18))
    data, buffers = serialize.dumps(serialize.wrap_large((big, "small", b"tiny")))
    assert len(data) < 1024 and [b.nbytes for b in buffers] == [len(big)]
    back = serialize.loads(data, buffers)
    assert type(back[0]) is kind and back[0] == big and back[1:] == ("small", b"tiny")


def test_small_buffers_stay_in_band():
    data, buffers = serialize.dumps(serialize.wrap_large((np.ones(10), b"x" * 100)))
    assert buffers == []
    back = serialize.loads(data, [])
    assert np.array_equal(back[0], np.ones(10)) and back[1] == b"x" * 100


def test_functions_from_main_and_lambdas_go_by_value():
    data, _ = serialize.dumps(lambda x: x * 3)
    assert serialize.loads(data)(2) == 6

    def local(x):
        return x + 1
    local.__module__ = "__main__"
    data, _ = serialize.dumps(local)
    assert b"__main__" in data  # by value: the code travels, not a reference to __main__
    assert serialize.loads(data)(1) == 2


def test_plain_objects_use_the_fast_pickler():
    data, _ = serialize.dumps({"a": [1, 2.0, "x"]})
    assert data == pickle.dumps({"a": [1, 2.0, "x"]}, protocol=5)


def test_unpicklable_object_is_named():
    import threading
    with pytest.raises(SerializationError, match="lock"):
        serialize.dumps((1, threading.Lock()))


def test_garbage_pickle_is_a_serialization_error():
    with pytest.raises(SerializationError, match="cannot unpickle"):
        serialize.loads(b"\x80\x05not a pickle")


def test_exception_round_trip_with_traceback():
    def fail():
        raise ValueError("bad value")
    try:
        fail()
    except ValueError as exc:
        info = serialize.dump_exception(exc)
    payload, exc_type, text, tb_text, frames = info
    assert exc_type == "builtins.ValueError" and text == "bad value"
    assert "in fail" in tb_text
    data, buffers = serialize.dumps(info)
    payload, *_, frames = serialize.loads(data, buffers)
    error = serialize.load_exception(payload, frames)
    assert isinstance(error, ValueError) and error.__traceback__ is not None
    # the stand-in frames carry the remote function's name, line and first line
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    assert code.co_name == "fail" and code.co_filename == __file__
    first = fail.__code__.co_firstlineno
    assert tb.tb_lineno == first + 1 and code.co_firstlineno == first
    if sys.version_info >= (3, 11):
        assert code.co_qualname == fail.__qualname__
    assert 'raise ValueError("bad value")' in "".join(traceback.format_tb(error.__traceback__))


@pytest.mark.parametrize("readonly", [True, False])
def test_large_bytes_are_copied_exactly_from_read_only_and_writable_buffers(readonly):
    # bytes arrive read-only (the sender's buffer was); both are copied outside the GIL
    n = serialize.COPY_WITHOUT_GIL + 4099
    source = np.frombuffer(np.random.default_rng(1).bytes(n), np.uint8)
    received = bytearray(source.tobytes())
    view = memoryview(received).toreadonly() if readonly else memoryview(received)
    data, buffers = serialize.dumps(serialize.wrap_large(bytes(received)))
    copy = serialize._to_bytes(view)
    assert type(copy) is bytes and len(copy) == n and copy == received
    assert serialize.loads(data, [view]) == received
