"""Unpicklable user objects: one-line TypeErrors that name the part and say what to do."""

from __future__ import annotations

import functools
import pickle
import threading

import pytest

from bndl_like.execute.tasks import FuncTask, Job
from bndl_like.rmi import SerializationError
from bndl_like.rmi.pickle_check import UnpicklableError, find_unpicklable, unpicklable_error

from . import helpers

_LOCK = threading.Lock()


class Holder:
    def __init__(self):
        self.lock = threading.Lock()
        self.name = "holder"

    def method(self, x):
        return x


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self):
        self.a = 1
        self.b = threading.Lock()


class BadReduce:
    def __reduce__(self):
        raise ValueError("no way")


class WithClassLock:
    shared = threading.Lock()


def uses_global_lock(x):
    return (x, _LOCK)


def _closure_over_lock():
    conn = threading.Lock()

    def fn(x):
        return conn
    return fn


def check_one_line(exc: BaseException, *parts: str) -> str:
    """``exc`` is a one-line TypeError without the pickling chain, mentioning ``parts``."""
    text = str(exc)
    assert isinstance(exc, TypeError) and isinstance(exc, SerializationError)
    assert isinstance(exc, UnpicklableError)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)
    assert "cannot pickle tuple" not in text and "'tasks', 'run'" not in text, text
    assert "which cannot be pickled" in text, text
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__
    return text


# -- find_unpicklable (no cluster) -----------------------------------------------------------------

def test_picklable_gives_none():
    a: list = [1, {"x": (2, 3.0)}, "s", b"b", None]
    a.append(a)  # a cycle pickles fine
    assert find_unpicklable(a, "args") is None
    assert find_unpicklable(helpers.add, "fn") is None
    assert find_unpicklable(lambda x: x + 1, "fn") is None


def test_nested_containers():
    found = find_unpicklable(({"a": [1, Holder()]},), "args")
    assert found.path == "args[0]['a'][1].lock"
    assert found.type_name == "_thread.lock"
    assert isinstance(found.error, TypeError)
    assert found.obj is not None


def test_set_items_and_dict_keys():
    found = find_unpicklable({1, (2, _LOCK)}, "obj")
    assert found.path.startswith("list(obj)[") and found.path.endswith("][1]")
    assert found.type_name == "_thread.lock"
    found = find_unpicklable({"ok": 1, (_LOCK,): 2}, "obj")
    assert found.path == "list(obj)[1][0]"


def test_attributes_and_slots():
    assert find_unpicklable(Holder(), "obj").path == "obj.lock"
    assert find_unpicklable([Slotted()], "args").path == "args[0].b"
    # an importable class pickles by reference; a local one by value, with its attributes
    assert find_unpicklable(WithClassLock(), "obj") is None

    class Local:
        shared = _LOCK
    assert find_unpicklable(Local(), "obj").path == "obj.__class__.shared"


def test_closure_and_globals():
    found = find_unpicklable(_closure_over_lock(), "fn")
    assert found.path == "fn, closure variable 'conn'"
    found = find_unpicklable(lambda x: (x, _LOCK), "fn")
    assert found.path == "fn, global '_LOCK'"
    assert found.type_name == "_thread.lock"
    # a function importable by name pickles by reference: its globals do not travel
    assert find_unpicklable(uses_global_lock, "fn") is None


def test_partial_and_bound_method():
    found = find_unpicklable(functools.partial(helpers.add, 1, b=Holder()), "fn")
    assert found.path == "fn.keywords['b'].lock"
    found = find_unpicklable(functools.partial(helpers.add, Holder()), "fn")
    assert found.path == "fn.args[0].lock"
    found = find_unpicklable(Holder().method, "fn")
    assert found.path == "fn.__self__.lock"
    found = find_unpicklable(_LOCK.acquire, "fn")
    assert found.path == "fn.__self__"


def test_cycles():
    a: list = [1]
    a.append(a)
    a.append(_LOCK)
    assert find_unpicklable(a, "obj").path == "obj[2]"
    # a cycle through attributes, the lock beside it: found, not the object of the cycle
    x, y = Holder(), Holder()
    x.lock = None
    y.lock = None
    x.other, y.other = y, x
    x.z = _LOCK
    assert find_unpicklable(x, "obj").path == "obj.z"


def test_reduce_raising_other_errors():
    found = find_unpicklable({"k": [BadReduce()]}, "kwargs")
    assert found.path == "kwargs['k'][0]"
    assert isinstance(found.error, ValueError)
    assert found.type_name.endswith("BadReduce")


def test_generator():
    found = find_unpicklable({"x": (i for i in range(3))}, "result")
    assert found.path == "result['x']"
    assert found.type_name == "generator"


def test_large_and_deep_objects_are_bounded():
    big = list(range(200_000))
    big[123_456] = _LOCK
    assert find_unpicklable(big, "items").path == "items[123456]"
    deep: list = [_LOCK]
    for _ in range(3000):
        deep = [deep]
    found = find_unpicklable(deep, "obj")  # deeper than pickle (and the search) goes
    assert found is not None and found.path.startswith("obj[0][0]")
    found = find_unpicklable([Holder()], "obj", max_parts=1)  # out of budget: the deepest known
    assert found is not None and found.path.startswith("obj")


def test_never_raises():
    class Hostile:
        def __reduce_ex__(self, protocol):
            raise RuntimeError("reduce")

        def __repr__(self):
            raise RuntimeError("repr")

        def __getattr__(self, name):
            raise RuntimeError(name)

    found = find_unpicklable([Hostile()], "obj")
    assert found.path == "obj[0]" and isinstance(found.error, RuntimeError)


def test_unpicklable_error_message_and_pickling():
    error = unpicklable_error("task 1 of job job-3 cannot be sent to a worker",
                              [("fn", helpers.add), ("args", ({"a": [Holder()]},))],
                              "create it inside the task, or pass something picklable")
    assert str(error) == ("task 1 of job job-3 cannot be sent to a worker: args[0]['a'][0].lock is a "
                          "_thread.lock, which cannot be pickled (cannot pickle '_thread.lock' object); "
                          "create it inside the task, or pass something picklable")
    assert error.path == "args[0]['a'][0].lock" and error.type_name == "_thread.lock"
    assert isinstance(error.cause, TypeError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is UnpicklableError and str(copy) == str(error) and copy.path == error.path
    # nothing found: the reason without a path, still one line
    error = unpicklable_error("x", [], "do y", TypeError("cannot pickle 'x'\nobject"))
    assert str(error) == "x: a part of it cannot be pickled (cannot pickle 'x' object); do y"


# -- on a cluster ----------------------------------------------------------------------------------

def test_task_argument(ctx):
    job = Job(ctx, [FuncTask(ctx, 1, helpers.identity, ({"a": [Holder()]},))], name="job-lock")
    with pytest.raises(TypeError) as info:
        list(ctx.execute(job))
    text = check_one_line(info.value, "task 1 of job job-lock cannot be sent to a worker",
                          "args[0]['a'][0].lock is a _thread.lock",
                          "create it inside the task, or pass something picklable")
    assert "cannot pickle '_thread.lock' object" in text
    assert info.value.path == "args[0]['a'][0].lock"
    assert ctx.map(helpers.square, [1, 2, 3]) == [1, 4, 9]


def test_task_kwargs_and_fn(ctx):
    job = Job(ctx, [FuncTask(ctx, "k", helpers.scaled, (1,), {"factor": 2, "fn": Holder()})])
    with pytest.raises(TypeError) as info:
        list(ctx.execute(job))
    check_one_line(info.value, "task 'k' of job", "kwargs['fn'].lock is a _thread.lock")
    job = Job(ctx, [FuncTask(ctx, 0, _closure_over_lock(), (1,))])
    with pytest.raises(TypeError) as info:
        list(ctx.execute(job))
    check_one_line(info.value, "fn, closure variable 'conn' is a _thread.lock")
    assert list(ctx.execute(Job(ctx, [FuncTask(ctx, 0, helpers.add, (1, 2))]))) == [3]


def test_map_fn_global(ctx):
    with pytest.raises(TypeError) as info:
        ctx.map(lambda x: (x, _LOCK), range(40), chunksize=2)
    check_one_line(info.value, "map(<lambda>) cannot be sent to the workers",
                   "fn, global '_LOCK' is a _thread.lock",
                   "create it inside the function, or pass something picklable")
    assert ctx.map(helpers.square, [4]) == [16]


def test_map_item_and_extra_args(ctx):
    with pytest.raises(TypeError) as info:
        ctx.map(helpers.identity, [1, 2, 3, Holder(), 5], chunksize=2)
    check_one_line(info.value, "map(identity)", "item 3, at .lock is a _thread.lock")
    with pytest.raises(TypeError) as info:
        ctx.map(helpers.identity, [1, 2, 3, _LOCK, 5], chunksize=2)
    check_one_line(info.value, "map(identity)", "item 3 is a _thread.lock")
    with pytest.raises(TypeError) as info:
        ctx.map(helpers.add_to, [1, 2], _LOCK)
    check_one_line(info.value, "map(add_to)", ": args[0] is a _thread.lock")
    assert ctx.map(helpers.add_to, [1, 2], 10) == [11, 12]


def test_run_function(ctx):
    with pytest.raises(TypeError) as info:
        ctx.run_function(helpers.identity, _LOCK)
    check_one_line(info.value, "the call of identity cannot be sent to a worker",
                   "args[0] is a _thread.lock",
                   "create it inside the function, or pass something picklable")
    with pytest.raises(TypeError) as info:
        ctx.run_each_worker(helpers.scaled, 1, fn=Holder())
    check_one_line(info.value, "kwargs['fn'].lock is a _thread.lock")
    with pytest.raises(TypeError) as info:
        ctx.run_function(Holder().method, 1)
    check_one_line(info.value, "the call of method", "fn.__self__.lock is a _thread.lock")
    assert ctx.run_function(helpers.add, 1, 2) == 3
    assert set(ctx.run_each_worker(helpers.add, 1, 2).values()) == {3}


def test_scatter(ctx):
    registry = ctx._scatter_registry()
    before = dict(registry.objects)
    with pytest.raises(TypeError) as info:
        ctx.scatter({"holder": Holder()})
    check_one_line(info.value, "the object to scatter cannot be sent to the workers",
                   "obj['holder'].lock is a _thread.lock", "scatter something picklable")
    assert registry.objects == before  # not kept: workers joining later do not get it
    handle = ctx.scatter(7)
    try:
        assert ctx.map(helpers.add_to, [1], handle) == [8]
    finally:
        ctx.release(handle)


def test_result_that_cannot_be_pickled(ctx):
    job = Job(ctx, [FuncTask(ctx, 5, lambda: {"x": threading.Lock()})])
    with pytest.raises(TypeError) as info:
        list(ctx.execute(job))
    check_one_line(info.value, "the result of task 5 cannot be sent to the driver",
                   "result['x'] is a _thread.lock", "return something picklable")
    job = Job(ctx, [FuncTask(ctx, 6, lambda: (i for i in range(3)))])
    with pytest.raises(TypeError) as info:
        list(ctx.execute(job))
    check_one_line(info.value, "result is a generator", "return something picklable")
    assert ctx.map(helpers.square, [5]) == [25]


def test_scatter_update_with_an_unpicklable_object_keeps_the_old_version(ctx):
    handle = ctx.scatter(7)
    try:
        with pytest.raises(TypeError) as info:
            ctx.scatter_update(handle, Holder())
        check_one_line(info.value, "the new object cannot be sent to the workers",
                       "obj.lock is a _thread.lock", "scatter something picklable")
        assert handle.version == 1
        assert ctx.map(helpers.add_to, [1], handle) == [8]
    finally:
        ctx.release(handle)


def make_generator():
    return (i for i in range(3))


def test_run_function_result_that_cannot_be_pickled(ctx):
    with pytest.raises(TypeError) as info:
        ctx.run_function(make_generator)
    check_one_line(info.value, "the result of the function cannot be sent back",
                   "result is a generator", "return something picklable")
    assert isinstance(info.value, UnpicklableError)
    assert ctx.run_function(len, [1, 2]) == 2


def test_a_result_over_the_message_size_limit_fails_the_task_without_a_hang(monkeypatch):
    from bndl_like import ExecutionContext

    monkeypatch.setenv("BNDL_LIKE_MAX_MESSAGE_SIZE", str(1 << 20))  # the driver's and its workers'
    with ExecutionContext.local(workers=1) as small:
        small.await_workers()
        job = Job(small, [FuncTask(small, "big", helpers.allocate, (2 << 20,))])
        with pytest.raises(ValueError, match="exceeds the maximum message size"):
            list(small.execute(job))
        assert job.state == "failed"
        assert list(small.execute(Job(small, [FuncTask(small, 0, helpers.identity, (1,))]))) == [1]


WRONG_CALLS = [
    (lambda c: c.execute([FuncTask(c, 0, helpers.identity, (1,))]), TypeError,
     "execute() takes a Job, not list; wrap the tasks: ctx.execute(Job(ctx, tasks))"),
    (lambda c: c.map(helpers.identity, 5), TypeError,
     "map() takes an iterable of items as its second argument, not int"),
    (lambda c: c.map(5, [1]), TypeError, "map() needs a callable as its first argument, not int"),
    (lambda c: FuncTask(c, "t", helpers.identity, 5), TypeError,
     "task 't': args must be a tuple or list, not int (one argument x is args=(x,))"),
    (lambda c: c.execute(Job(c, [FuncTask(c, 0, helpers.identity, (1,))]), concurrency=0), ValueError,
     "invalid value for execute.concurrency (argument): 0: must be >= 1"),
    (lambda c: c.execute(Job(c, [FuncTask(c, 0, helpers.identity, (1,))]), workers=["nobody"]), ValueError,
     "unknown or disconnected workers: nobody"),
]


@pytest.mark.parametrize("call, error, message", WRONG_CALLS)
def test_a_wrong_argument_is_one_line_that_says_what_to_do(ctx, call, error, message):
    with pytest.raises(error) as info:
        call(ctx)
    assert str(info.value) == message
    exc = info.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    assert ctx.map(helpers.identity, [1, 2]) == [1, 2]  # nothing was broken


def test_a_job_cannot_run_twice_at_once(ctx, tmp_path):
    job = Job(ctx, [FuncTask(ctx, 0, helpers.sleep_then, (0.3, 1))], name="twice")
    results = ctx.execute(job)
    with pytest.raises(RuntimeError, match=r"^job twice is already executing; read its results, or "
                                           r"job.cancel\(\) it$"):
        ctx.execute(job)
    assert list(results) == [1]
