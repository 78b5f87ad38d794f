"""Tasks as dependencies inside any container the dependency walk enters, and clear errors
for a Task anywhere else (a dict key, an attribute of an object) — unit tests of the walk,
then on a local cluster."""

from __future__ import annotations

import dataclasses
import pickle
from collections import OrderedDict, defaultdict, deque, namedtuple
from typing import NamedTuple

import numpy as np
import pytest

from bndl_like import FuncTask, Job
from bndl_like.execute.tasks import (
    Task,
    _Dependency,
    extract_dependencies,
    fill_dependencies,
    has_markers,
)
from bndl_like.rmi.pickle_check import find_unpicklable

from . import helpers

Point = namedtuple("Point", "x y")


class Pair(NamedTuple):
    left: object
    right: object


class MyList(list):
    pass


class MyDict(dict):
    pass


class MyTuple(tuple):
    pass


class Holder:
    def __init__(self, attr):
        self.attr = attr


@dataclasses.dataclass
class Config:
    name: str
    source: object


class _Ctx:
    """Stands in for a context: Tasks and Jobs only keep it."""


def _walk(value):
    """extract then fill with each task's result ``result-<id>``: what the worker's task gets."""
    found: dict = {}
    extracted = extract_dependencies(value, found)
    outputs = {task.id: f"result-{task.id}" for task in found.values()}
    assert has_markers(extracted) == bool(found)
    return extracted, list(found.values()), fill_dependencies(extracted, outputs)


# -- the walk, without a cluster -------------------------------------------------------------------

@pytest.fixture
def tasks():
    ctx = _Ctx()
    return Task(ctx, "a"), Task(ctx, "b")


CONTAINERS = {
    "tuple": (lambda a, b: (a, 1, b), lambda: ("result-a", 1, "result-b")),
    "list": (lambda a, b: [a, 1, b], lambda: ["result-a", 1, "result-b"]),
    "dict": (lambda a, b: {"x": a, "y": b, 3: 4}, lambda: {"x": "result-a", "y": "result-b", 3: 4}),
    "OrderedDict": (lambda a, b: OrderedDict([("y", b), ("x", a)]),
                    lambda: OrderedDict([("y", "result-b"), ("x", "result-a")])),
    "defaultdict": (lambda a, b: defaultdict(list, x=a, y=[b]),
                    lambda: defaultdict(list, x="result-a", y=["result-b"])),
    "set": (lambda a, b: {a, b, 1}, lambda: {"result-a", "result-b", 1}),
    "frozenset": (lambda a, b: frozenset([a, b]), lambda: frozenset(["result-a", "result-b"])),
    "deque": (lambda a, b: deque([a, b, 2], maxlen=5), lambda: deque(["result-a", "result-b", 2], maxlen=5)),
    "namedtuple": (lambda a, b: Point(a, b), lambda: Point("result-a", "result-b")),
    "typing.NamedTuple": (lambda a, b: Pair(a, right=b), lambda: Pair("result-a", "result-b")),
}


@pytest.mark.parametrize("kind", list(CONTAINERS))
def test_each_container_is_entered_and_rebuilt_with_its_type(tasks, kind):
    a, b = tasks
    make, expected = CONTAINERS[kind]
    value = make(a, b)
    extracted, found, filled = _walk((value,))
    assert sorted(t.id for t in found) == ["a", "b"]
    assert type(extracted[0]) is type(value)
    assert not any(isinstance(v, Task) for v in _flatten(extracted))
    assert type(filled[0]) is type(value)
    assert filled[0] == expected()
    if isinstance(value, deque):
        assert filled[0].maxlen == 5 and extracted[0].maxlen == 5
    if isinstance(value, defaultdict):
        assert filled[0].default_factory is list
        filled[0]["new"].append(1)  # the factory works
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        assert filled[0]._fields == value._fields


def _flatten(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple, set, frozenset, deque)):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


def test_nested_containers(tasks):
    a, b = tasks
    value = {"k": [Point(a, (1, {b})), deque([OrderedDict(z=frozenset([a]))])],
             "d": defaultdict(int, n=[(b,)])}
    extracted, found, filled = _walk((value,))
    assert [t.id for t in found] == ["a", "b"]  # each task once, in the order met
    got = filled[0]
    assert got["k"][0] == Point("result-a", (1, {"result-b"})) and type(got["k"][0]) is Point
    assert type(got["k"][1]) is deque and got["k"][1][0] == OrderedDict(z=frozenset(["result-a"]))
    assert type(got["d"]) is defaultdict and got["d"].default_factory is int
    assert got["d"] == {"n": [("result-b",)]}
    # the value given is left as it was
    assert value["k"][0].x is a and isinstance(extracted[0]["k"][0].x, _Dependency)


def test_arguments_without_tasks(tasks):
    arr = np.arange(4)
    values = (1, "s", 2.5, None, b"b", arr, [1, (2, 3)], {"x": {1, 2}}, deque([1]), Point(1, 2))
    extracted, found, filled = _walk(values)
    assert found == [] and not has_markers(extracted)
    assert extracted[5] is arr and filled[5] is arr
    assert extracted[:5] == values[:5] and extracted[6:] == values[6:]


def test_subclasses_and_objects_are_not_entered(tasks):
    a, _ = tasks
    od = OrderedDict(x=a)
    od.note = "an attribute a rebuild would lose"
    values = (MyList([a]), MyDict(x=a), MyTuple([a]), Holder(a), od, np.array([a, 1], dtype=object))
    found: dict = {}
    extracted = extract_dependencies(values, found)
    assert found == {}
    assert all(e is v for e, v in zip(extracted, values, strict=True))
    assert not has_markers(extracted)


def test_a_marker_in_a_set_filled_with_an_unhashable_result(tasks):
    a, b = tasks
    found: dict = {}
    extracted = extract_dependencies(({1, (a, 2)}, frozenset([b])), found)
    with pytest.raises(TypeError, match=r"the result of task 'a' is a list, which cannot go in a set "
                                        r"among the arguments \(unhashable type: 'list'\); put the task "
                                        r"in a list or tuple instead"):
        fill_dependencies(extracted, {"a": [1], "b": "fine"})
    with pytest.raises(TypeError, match="the result of task 'b' is a dict, which cannot go in a frozenset"):
        fill_dependencies(extracted, {"a": "fine", "b": {}})
    assert fill_dependencies(extracted, {"a": "x", "b": "y"}) == ({1, ("x", 2)}, frozenset(["y"]))


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (lambda a: ({a: 1},), None, "task 'c': task 'a' is used as a dict key at args[0]; "
                                "a Task can be a dependency only as a value"),
    (lambda a: (1, [{"ok": 2}, {(a, 1): 2}]), None, "task 'c': task 'a' is used in a dict key at args[1][1]"),
    (lambda a: (), lambda a: {"m": OrderedDict([(frozenset([a]), 1)])},
     "task 'c': task 'a' is used in a dict key at kwargs['m']"),
    (lambda a: (Point(1, {"v": defaultdict(list, {a: []})}),), None,
     "task 'c': task 'a' is used as a dict key at args[0][1]['v']"),
])
def test_a_task_in_a_dict_key_is_refused_at_construction(tasks, args, kwargs, message):
    a, _ = tasks
    with pytest.raises(TypeError) as info:
        FuncTask(a.ctx, "c", helpers.identity, args(a), kwargs(a) if kwargs else None)
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert a.dependents == ()


def test_a_cycle_in_the_arguments_is_a_clear_error(tasks):
    a, _ = tasks
    loop: list = [a]
    loop.append({"again": loop})
    with pytest.raises(ValueError, match="task 'c': its arguments nest too deep, or hold a list or dict "
                                         "that contains itself"):
        FuncTask(a.ctx, "c", helpers.identity, (loop,))


def test_functask_dependencies_from_containers(tasks):
    a, b = tasks
    c = FuncTask(a.ctx, "c", helpers.identity, [{a, 1}], {"q": deque([Point(b, a)])})
    assert c.dependencies == [a, b] and a.dependents == [c] and b.dependents == [c]
    assert type(c.args) is tuple and isinstance(next(iter(c.args[0] - {1})), _Dependency)
    Job(a.ctx, [a, b, c])  # a valid graph


def test_pickling_a_task_says_how_to_pass_it(tasks):
    a, _ = tasks
    with pytest.raises(TypeError, match="task 'a' cannot be sent to a worker as an object: put it directly "
                                        r"among a FuncTask's arguments \(or in a list, tuple, dict, set or "
                                        r"deque there\) to make it a dependency"):
        pickle.dumps(a)
    found = find_unpicklable((1, Holder(a)), "args")
    assert found.path == "args[1].attr" and found.obj is a
    found = find_unpicklable((Config("c", [0, a]),), "args")
    assert found.path == "args[0].source[1]" and found.obj is a


# -- on a cluster ----------------------------------------------------------------------------------

def describe(value):
    """What the task saw, computed on the worker: type, contents and the type's own settings."""
    info = {"type": f"{type(value).__module__}.{type(value).__qualname__}"}
    if isinstance(value, deque):
        info["maxlen"] = value.maxlen
    if isinstance(value, defaultdict):
        info["factory"] = value.default_factory.__name__
        value["absent"]  # the factory makes it
    if isinstance(value, (set, frozenset)):
        info["items"] = sorted(value, key=repr)
    elif isinstance(value, dict):
        info["items"] = sorted(value.items(), key=repr)
    else:
        info["items"] = list(value)
    if hasattr(value, "_fields"):
        info["fields"] = value._fields
    return info


def _sources(ctx):
    return FuncTask(ctx, "a", helpers.identity, (10,)), FuncTask(ctx, "b", helpers.identity, ("bee",))


@pytest.mark.parametrize("kind", list(CONTAINERS))
def test_each_container_on_the_workers(ctx, kind):
    a, b = _sources(ctx)
    value = CONTAINERS[kind][0](a, b)
    c = FuncTask(ctx, "c", describe, (value,))
    assert sorted(t.id for t in c.dependencies) == ["a", "b"]
    *_, got = ctx.execute(Job(ctx, [a, b, c]))
    expected = _replace(_replace(CONTAINERS[kind][1](), "result-a", 10), "result-b", "bee")
    assert got == describe(expected)
    assert got["type"] == f"{type(value).__module__}.{type(value).__qualname__}"


def _replace(value, old, new):
    if value == old:
        return new
    if isinstance(value, (OrderedDict, defaultdict)):
        copy = value.copy()
        for k, v in value.items():
            copy[k] = _replace(v, old, new)
        return copy
    if isinstance(value, dict):
        return {k: _replace(v, old, new) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_make"):
        return type(value)._make(_replace(v, old, new) for v in value)
    if isinstance(value, deque):
        return deque((_replace(v, old, new) for v in value), value.maxlen)
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_replace(v, old, new) for v in value)
    return value


def test_nested_containers_and_namedtuple_type_on_the_workers(ctx):
    a, b = _sources(ctx)
    c = FuncTask(ctx, "c", describe, (Point(x=[a, {"deep": deque([b], maxlen=3)}], y={b}),))
    d = FuncTask(ctx, "d", helpers.identity, (), {"x": OrderedDict(first=Pair(c, frozenset([a])))})
    results = list(ctx.execute(Job(ctx, [a, b, c, d])))
    assert results[2]["type"] == f"{__name__}.Point" and results[2]["fields"] == ("x", "y")
    assert results[2]["items"] == [[10, {"deep": deque(["bee"], maxlen=3)}], {"bee"}]
    assert results[3] == OrderedDict(first=Pair(results[2], frozenset([10])))
    assert type(results[3]["first"]) is Pair


def test_a_set_holding_an_unhashable_result_fails_naming_the_task(ctx):
    a = FuncTask(ctx, "a", helpers.identity, ([1, 2],))
    c = FuncTask(ctx, "c", describe, ({a, 3},))
    with pytest.raises(TypeError, match="the result of task 'a' is a list, which cannot go in a set"):
        list(ctx.execute(Job(ctx, [a, c])))
    assert c.failed and a.succeeded


def test_a_task_in_a_dict_key_is_refused(ctx):
    a = FuncTask(ctx, "a", helpers.identity, (1,))
    with pytest.raises(TypeError, match=r"task 'c': task 'a' is used as a dict key at args\[0\]\['m'\]; "
                                        "a Task can be a dependency only as a value"):
        FuncTask(ctx, "c", helpers.identity, ({"m": {a: 1}},))
    assert list(ctx.execute(Job(ctx, [a]))) == [1]


@pytest.mark.parametrize(("value", "path"), [
    (lambda a: (Holder(a),), "args[0].attr"),
    (lambda a: ([1, Config("x", source=a)],), "args[0][1].source"),
    (lambda a: (MyList([a]),), "args[0][0]"),
    (lambda a: (np.array([None, a], dtype=object),), "args[0]"),
])
def test_a_task_inside_an_object_fails_naming_the_task_and_its_path(ctx, value, path):
    a = FuncTask(ctx, "a", helpers.identity, (1,))
    c = FuncTask(ctx, "c", helpers.identity, value(a))
    assert c.dependencies == ()
    with pytest.raises(TypeError) as info:
        list(ctx.execute(Job(ctx, [a, c], name="job-hidden")))
    text = str(info.value)
    assert text.startswith("task 'c' of job job-hidden cannot be sent to a worker: "), text
    assert info.value.path.startswith(path), (info.value.path, text)
    assert f"task 'a' cannot be sent to a worker as an object: {_ADVICE}" in text
    assert "socket" not in text.lower() and "\n" not in text
    assert list(ctx.execute(Job(ctx, [FuncTask(ctx, 0, helpers.add, (1, 2))]))) == [3]


_ADVICE = "put it directly among a FuncTask's arguments"


def test_a_task_given_to_run_function_is_named(ctx):
    a = FuncTask(ctx, ("load", 1), helpers.identity, (1,))
    with pytest.raises(TypeError, match=r"args\[0\]\.attr is .*\(task \('load', 1\) cannot be sent to "
                                        f"a worker as an object: {_ADVICE}"):
        ctx.run_function(helpers.identity, Holder(a))
    assert ctx.run_function(helpers.identity, 5) == 5
