"""Find the part of an object that cannot be pickled, for one-line user errors.

``serialize.dumps`` only knows that a whole message failed. :func:`find_unpicklable`
pickles the parts of an object (items, attributes, closure variables, referenced
globals...) with the same pickler choice as ``serialize.dumps`` and returns a
readable path to the innermost part that fails, e.g. ``args[0]['a'][0].lock``.
:func:`unpicklable_error` turns that into an :class:`UnpicklableError` whose
message names the part, its type and what to do, on one line.

The search only runs after a failure (it is not on any fast path); it visits each
object once, is bounded in depth and in the number of pickling attempts, and never
raises.
"""

from __future__ import annotations

import copyreg
import functools
import pickle
import types
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from .errors import SerializationError
from .serialize import pickle_any

MAX_PARTS = 10_000  # pickling attempts per search
MAX_DEPTH = 100     # nesting levels followed
BISECT_MIN = 8      # containers with more items are searched by halves
_REASON_MAX = 200


class UnpicklableError(SerializationError):
    """A user's object cannot be pickled to go to (or come back from) a worker.

    A ``TypeError`` (through ``SerializationError``). ``path`` names the part that
    fails (``"args[0].lock"``), ``type_name`` its type; ``cause`` is the pickling
    error itself (not kept when the exception is pickled).
    """

    def __init__(self, message: str, path: str | None = None, type_name: str | None = None):
        super().__init__(message)
        self.path = path
        self.type_name = type_name
        self.cause: BaseException | None = None

    def __reduce__(self):
        return type(self), (str(self.args[0]) if self.args else "", self.path, self.type_name)


class Unpicklable(NamedTuple):
    """What :func:`find_unpicklable` found: the path, the object, the pickling error."""

    path: str
    obj: Any
    error: BaseException

    @property
    def type_name(self) -> str:
        return type_name(self.obj)


def type_name(obj) -> str:
    """``_thread.lock``, ``generator``, ``mymodule.Holder`` (``Holder`` for ``__main__``)."""
    cls = type(obj)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", "?")
    if module in (None, "builtins", "__main__"):
        return name
    return f"{module}.{name}"


def reason(exc: BaseException | None) -> str:
    """The pickling error as a short single line."""
    if exc is None:
        return "unknown error"
    try:
        text = str(exc)
    except Exception:
        text = ""
    if not isinstance(exc, (TypeError, pickle.PicklingError)) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    text = " ".join(text.split())
    if len(text) > _REASON_MAX:
        text = text[:_REASON_MAX] + "..."
    return text


def try_pickle(obj) -> BaseException | None:
    """None if ``obj`` pickles as ``serialize.dumps`` would pickle it, else the error."""
    try:
        pickle_any(obj, [])
    except Exception as exc:
        return exc
    return None


def _key_text(key) -> str:
    if key is None or isinstance(key, (str, bytes, int, float, bool)):
        text = repr(key)
        if len(text) <= 40:
            return text
    return "..."


def _code_names(code: types.CodeType, seen: set) -> list:
    """Global names a code object (and the code nested in it) refers to, as cloudpickle finds them."""
    if id(code) in seen:
        return []
    seen.add(id(code))
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_code_names(const, seen))
    return names


# children of an object: groups of (objects, index -> path step)
_Group = tuple[Sequence, Callable[[int], Any]]


def _indexed(fmt: str) -> Callable[[int], str]:
    return lambda i: fmt.format(i)


def _named(names: list, fmt: str) -> Callable[[int], str]:
    return lambda i: fmt.format(names[i])


def _listed(i: int) -> tuple[str, str]:
    """The i-th key of a dict or item of a set: ``list(path)[i]``."""
    return "list(", f")[{i}]"


def _dict_groups(d: dict, value_fmt: str = "[{}]") -> list[_Group]:
    keys = list(d)
    values = [d[k] for k in keys]
    texts = [_key_text(k) for k in keys]
    return [(values, _named(texts, value_fmt)), (keys, _listed)]


def _attr_groups(state) -> list[_Group]:
    """Attributes from a ``__reduce_ex__`` state: a dict, or (dict or None, slots dict)."""
    groups: list[_Group] = []
    slots = (type(state) is tuple and len(state) == 2
             and all(part is None or type(part) is dict for part in state))
    parts = state if slots else (state,)
    for part in parts:
        if type(part) is dict:
            names = [str(k) for k in part]
            groups.append((list(part.values()), _named(names, ".{}")))
        elif part is not None:
            groups.append(([part], lambda i: ", state"))
    return groups


def _function_groups(fn: types.FunctionType) -> list[_Group]:
    groups: list[_Group] = []
    code = fn.__code__
    cells = fn.__closure__ or ()
    names, values = [], []
    for name, cell in zip(code.co_freevars, cells, strict=False):
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
        names.append(name)
    groups.append((values, _named(names, ", closure variable '{}'")))
    fn_globals = fn.__globals__
    names = []
    for name in dict.fromkeys(_code_names(code, set())):
        if name in fn_globals:
            names.append(name)
    groups.append(([fn_globals[n] for n in names], _named(names, ", global '{}'")))
    if fn.__defaults__:
        groups.append((fn.__defaults__, _indexed(", default {}")))
    if fn.__kwdefaults__:
        kw = list(fn.__kwdefaults__)
        groups.append(([fn.__kwdefaults__[k] for k in kw], _named(kw, ", default of '{}'")))
    if fn.__dict__:
        groups.extend(_attr_groups(dict(fn.__dict__)))
    return groups


def _reduce_groups(obj) -> list[_Group]:
    """The parts pickle would save for ``obj``, from its reducer."""
    cls = type(obj)
    reducer = copyreg.dispatch_table.get(cls)
    rv = reducer(obj) if reducer is not None else obj.__reduce_ex__(5)
    if not isinstance(rv, tuple) or len(rv) < 2:
        return []  # a global name, or a shape pickle would reject anyway
    func, args = rv[0], rv[1]
    state = rv[2] if len(rv) > 2 else None
    listitems = rv[3] if len(rv) > 3 else None
    dictitems = rv[4] if len(rv) > 4 else None
    groups: list[_Group] = []
    if state is not None:
        groups.extend(_attr_groups(state))
    if listitems is not None:
        groups.append((list(listitems), _indexed("[{}]")))
    if dictitems is not None:
        groups.extend(_dict_groups(dict(dictitems)))
    args = tuple(args) if isinstance(args, (tuple, list)) else ()
    if func is copyreg.__newobj__ and args and args[0] is cls:
        groups.append(([cls], lambda i: ".__class__"))
        groups.append((args[1:], lambda i: f", constructor argument {i}"))
    elif func is getattr and len(args) == 2:  # a bound builtin method
        groups.append(([args[0]], lambda i: ".__self__"))
    elif args:
        groups.append((args, _indexed(", reduce argument {}")))
    return groups


def _children(obj) -> list[_Group]:
    cls = type(obj)
    if cls is tuple or cls is list:
        return [(obj, _indexed("[{}]"))]
    if cls is dict:
        return _dict_groups(obj)
    if cls is set or cls is frozenset:
        return [(list(obj), _listed)]
    if isinstance(obj, functools.partial):
        groups: list[_Group] = [([obj.func], lambda i: ".func"), (obj.args, _indexed(".args[{}]"))]
        kw = list(obj.keywords)
        groups.append(([obj.keywords[k] for k in kw], _named([_key_text(k) for k in kw], ".keywords[{}]")))
        groups.extend(_attr_groups(getattr(obj, "__dict__", None) or None))
        return groups
    if isinstance(obj, types.MethodType):
        return [([obj.__self__], lambda i: ".__self__"), ([obj.__func__], lambda i: ".__func__")]
    if isinstance(obj, types.FunctionType):
        return _function_groups(obj)
    if isinstance(obj, type):
        names = [n for n in vars(obj) if not (n.startswith("__") and n.endswith("__"))]
        return [([vars(obj)[n] for n in names], _named(names, ".{}"))]
    if isinstance(obj, (tuple, list)):  # subclasses: items, then what the reducer adds
        return [(obj, _indexed("[{}]")), *_reduce_groups(obj)]
    if isinstance(obj, dict):
        return [*_dict_groups(obj), *_reduce_groups(obj)]
    return _reduce_groups(obj)


class _Search:
    def __init__(self, max_parts: int, max_depth: int):
        self.budget = max_parts
        self.max_depth = max_depth
        self.visited: set[int] = set()
        self.keep: list = []  # parts made by reducers stay alive: their ids are not reused
        self.fallback: Unpicklable | None = None

    def attempt(self, obj) -> BaseException | None:
        self.budget -= 1
        return try_pickle(obj)

    def failing(self, objs: Sequence, lo: int, hi: int):
        """``(index, error)`` of the items of ``objs[lo:hi]`` that do not pickle, in order;
        the error is None for an object already visited (it fails: only failing ones are)."""
        if self.budget <= 0 or lo >= hi:
            return
        if hi - lo == 1:
            if id(objs[lo]) in self.visited:
                yield lo, None
                return
            exc = self.attempt(objs[lo])
            if exc is not None:
                yield lo, exc
            return
        if hi - lo > BISECT_MIN and self.attempt(list(objs[lo:hi])) is None:
            return
        mid = (lo + hi) // 2
        yield from self.failing(objs, lo, mid)
        yield from self.failing(objs, mid, hi)

    def search(self, obj, path: str, exc: BaseException, depth: int) -> Unpicklable | None:
        """The innermost failing part under ``obj`` (which fails with ``exc``), or None when
        ``obj`` fails only through a part visited before (then the caller looks further)."""
        self.visited.add(id(obj))
        self.keep.append(obj)
        here = Unpicklable(path, obj, exc)
        if depth >= self.max_depth:
            return here
        try:
            groups = _children(obj)
        except Exception:  # its reducer raised: this is the part that fails
            return here
        through_visited = False
        for objs, step in groups:
            self.keep.append(objs)
            for i, child_exc in self.failing(objs, 0, len(objs)):
                if child_exc is None:
                    through_visited = True
                    continue
                try:
                    child = step(i)  # a suffix, or (prefix, suffix) around the path
                    child_path = path + child if type(child) is str else f"{child[0]}{path}{child[1]}"
                except Exception:
                    child_path = f"{path}, part {i}"
                found = self.search(objs[i], child_path, child_exc, depth + 1)
                if found is not None:
                    return found
                through_visited = True
        if self.budget <= 0:
            return here  # the deepest part known to fail
        if through_visited:
            if self.fallback is None:
                self.fallback = here
            return None
        return here


def find_unpicklable(obj, root: str = "obj", *, max_parts: int = MAX_PARTS,
                     max_depth: int = MAX_DEPTH) -> Unpicklable | None:
    """The innermost part of ``obj`` that cannot be pickled: ``(path, part, error)``, or None
    when ``obj`` pickles. ``path`` starts with ``root``. Never raises."""
    try:
        exc = try_pickle(obj)
        if exc is None:
            return None
        search = _Search(max_parts, max_depth)
        found = search.search(obj, root, exc, 0)
        return found or search.fallback or Unpicklable(root, obj, exc)
    except Exception:  # RecursionError too
        return None


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def short_path(path: str, limit: int = 160) -> str:
    """``path``, its middle cut out when it is long (deep nesting)."""
    if len(path) <= limit:
        return path
    return path[:limit // 2] + "..." + path[-(limit // 2 - 3):]


def describe(found: Unpicklable, path: str | None = None) -> str:
    """``args[0] is a _thread.lock, which cannot be pickled (cannot pickle '_thread.lock' object)``.

    ``path`` replaces ``found.path`` in the text.
    """
    name = found.type_name
    return (f"{short_path(found.path if path is None else path)} is {_article(name)} {name}, "
            f"which cannot be pickled ({reason(found.error)})")


def unpicklable_result(what: str, result: Any, cause: BaseException) -> UnpicklableError:
    """The error for a result that cannot be sent back, naming the part of ``result``."""
    return unpicklable_error(what, [("result", result)], "return something picklable", cause)


def unpicklable_error(what: str, parts: list[tuple[str, Any]], advice: str,
                      cause: BaseException | None = None,
                      show_path: Callable[[str], str] | None = None) -> UnpicklableError:
    """``"{what}: {path} is a {type}, which cannot be pickled ({reason}); {advice}"``.

    ``parts`` are ``(root, object)`` pairs searched in order, e.g. ``[("fn", fn), ("args", args)]``;
    when none of them is found to fail, the message gives ``cause``'s reason without a path.
    ``show_path`` rewrites the path found for the message and the ``path`` attribute.
    """
    found = None
    try:
        for root, obj in parts:
            found = find_unpicklable(obj, root)
            if found is not None:
                break
    except Exception:
        found = None
    if found is not None:
        path = found.path
        if show_path is not None:
            try:
                path = show_path(path)
            except Exception:
                path = found.path
        error = UnpicklableError(f"{what}: {describe(found, path)}; {advice}", path, found.type_name)
        error.cause = found.error
    else:
        original = cause.__cause__ if cause is not None and cause.__cause__ is not None else cause
        error = UnpicklableError(f"{what}: a part of it cannot be pickled ({reason(original)}); {advice}")
        error.cause = original
    return error


__all__ = ["UnpicklableError", "Unpicklable", "find_unpicklable", "unpicklable_error", "describe",
           "try_pickle", "type_name"]
