"""Functions pickled by value keep the file they were written in.

cloudpickle pickles the code of functions it cannot import on the other side (a
script's ``__main__``, a notebook cell, a module registered with
``cloudpickle.register_pickle_by_value``) by value. From 3.1.3 on it writes
``"<dynamic-code>"`` into every such code object in place of ``co_filename``
(its pickles are then the same wherever a function was defined). A worker
running that code would name ``<dynamic-code>`` in tracebacks, in the CPU and in
the memory profile, and the driver could not show the line.

:class:`Pickler` is cloudpickle's pickler with one change: the code objects it
pickles keep their real ``co_filename``, whichever cloudpickle version is
installed. Everything else (which functions go by value, how) is cloudpickle's.
"""

from __future__ import annotations

import io
import types
from collections import ChainMap

import cloudpickle

# what cloudpickle >= 3.1.3 writes instead of a code object's file name
PLACEHOLDER = "<dynamic-code>"

_cloudpickle_code_reduce = cloudpickle.CloudPickler.dispatch_table[types.CodeType]


def reduce_code(code: types.CodeType):
    """cloudpickle's reduction of ``code`` with ``co_filename`` as it is."""
    rebuild, args = _cloudpickle_code_reduce(code)
    if code.co_filename != PLACEHOLDER:
        # among the constructor's str arguments only the file name can be the placeholder
        # (names and qualified names are identifiers or <lambda>-like, never this)
        args = tuple(code.co_filename if type(arg) is str and arg == PLACEHOLDER else arg
                     for arg in args)
    return rebuild, args


class Pickler(cloudpickle.CloudPickler):
    """cloudpickle's pickler; code pickled by value keeps its file name."""

    dispatch_table = ChainMap({types.CodeType: reduce_code}, cloudpickle.CloudPickler.dispatch_table)


def dumps(obj, protocol: int = 5, buffer_callback=None) -> bytes:
    """``cloudpickle.dumps`` with code locations kept."""
    with io.BytesIO() as file:
        Pickler(file, protocol=protocol, buffer_callback=buffer_callback).dump(obj)
        return file.getvalue()


__all__ = ["PLACEHOLDER", "Pickler", "dumps", "reduce_code"]
