"""The package root's names, and the package's errors: one root, their standard bases kept,
and each survives the wire (pickled as a remote call's failure is) unchanged."""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import pkgutil

import pytest

import bndl_like
from bndl_like import BndlLikeError
from bndl_like.deploy.forkserver import ForkServerGone
from bndl_like.deploy.status import ClusterUnreachable
from bndl_like.execute import command, errors, executor, scatter, worker
from bndl_like.rmi import errors as rmi_errors
from bndl_like.rmi import serialize
from bndl_like.rmi.pickle_check import UnpicklableError
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)


def _package_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class a module of bndl_like defines, by its qualified name."""
    found = {}
    for info in pkgutil.walk_packages(bndl_like.__path__, "bndl_like."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


# the standard base each error had before the root was added, and keeps beside it
STANDARD_BASES: dict[type[BaseException], type[BaseException]] = {
    errors.TaskTimeout: TimeoutError,
    errors.DependenciesFailed: Exception,
    errors.FailedDependency: Exception,
    errors.JobCancelled: Exception,
    errors.WorkersLost: Exception,
    errors.WorkerDied: Exception,
    command.CommandFailed: Exception,
    command.CommandTimeout: TimeoutError,
    scatter.ScatterError: LookupError,
    rmi_errors.NotConnected: ConnectionError,
    rmi_errors.ProtocolError: Exception,
    rmi_errors.HandshakeError: ConnectionError,
    rmi_errors.MessageTooLarge: ValueError,
    rmi_errors.SerializationError: TypeError,
    rmi_errors.RemoteError: Exception,
    UnpicklableError: TypeError,
    ClusterUnreachable: TimeoutError,
    ForkServerGone: RuntimeError,
}

# exception classes that are not errors the package raises at its users, and why
NOT_ERRORS = {
    # raised inside a cancelled task's thread; a BaseException so `except Exception` misses it
    "bndl_like.execute.errors.TaskCancelled",
    # the __cause__ attached to a remote exception re-raised here, saying where; never raised
    "bndl_like.rmi.remote_tb.RemoteTraceback",
    # stands in for a task's exception in a scheduler recording (the core imports nothing else)
    "bndl_like.execute.core.recorder.RecordedError",
    # private: raised and caught inside one function
    "bndl_like.execute.tasks._TaskInKey",
    "bndl_like.rmi.remote_tb._Raise",
}


def test_the_types_users_receive_are_exported_from_the_root():
    assert bndl_like.ScatterHandle is scatter.ScatterHandle
    assert bndl_like.ScatterError is scatter.ScatterError
    assert bndl_like.AsyncExecutionContext is executor.AsyncExecutionContext
    assert bndl_like.TaskContext is worker.TaskContext
    assert bndl_like.BndlLikeError is importlib.import_module("bndl_like.errors").BndlLikeError
    for name in bndl_like.__all__:
        assert getattr(bndl_like, name) is not None, name
    assert len(set(bndl_like.__all__)) == len(bndl_like.__all__)


def test_every_public_name_of_the_root_is_in_all():
    public = {name for name, obj in vars(bndl_like).items()
              if not name.startswith("_") and not inspect.ismodule(obj)}
    assert public <= set(bndl_like.__all__), public - set(bndl_like.__all__)


def test_every_error_class_is_a_bndl_like_error_and_keeps_its_standard_base():
    found = _package_exceptions()
    assert "bndl_like.errors.BndlLikeError" in found
    errors_found = {name: cls for name, cls in found.items()
                    if name not in NOT_ERRORS and cls is not BndlLikeError}
    assert set(STANDARD_BASES) <= set(errors_found.values())
    not_rooted = {name for name, cls in errors_found.items() if not issubclass(cls, BndlLikeError)}
    assert not not_rooted, f"errors of the package that are not BndlLikeErrors: {sorted(not_rooted)}"
    for cls, base in STANDARD_BASES.items():
        assert issubclass(cls, BndlLikeError), cls
        assert issubclass(cls, base), (cls, base)
    # every root export that is an exception is one of them (or TaskCancelled)
    for name in bndl_like.__all__:
        obj = getattr(bndl_like, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj is not BndlLikeError:
            assert obj in STANDARD_BASES or obj is errors.TaskCancelled, name


def test_task_cancelled_is_not_caught_by_except_exception():
    assert not issubclass(errors.TaskCancelled, Exception)
    assert not issubclass(errors.TaskCancelled, BndlLikeError)
    with pytest.raises(errors.TaskCancelled):
        try:
            raise errors.TaskCancelled("stop")
        except Exception:  # what a task's own handler would do
            pytest.fail("except Exception caught TaskCancelled")


def test_existing_handlers_still_catch_them():
    with pytest.raises(TimeoutError):
        raise errors.TaskTimeout("task 'a' ran longer than 1s")
    with pytest.raises(ConnectionError):
        raise rmi_errors.NotConnected("peer gone")
    with pytest.raises(TypeError):
        raise UnpicklableError("args[0].lock cannot be pickled", "args[0].lock", "_thread.lock")
    with pytest.raises(LookupError):
        raise scatter.ScatterError("released")
    with pytest.raises(BndlLikeError):
        raise command.CommandTimeout(["sleep", "9"], None, timeout=1.0)


def _samples() -> list[BaseException]:
    """An instance of each error, with the arguments the package raises it with."""
    return [
        errors.TaskTimeout("task 'slow' ran longer than its timeout=1s"),
        errors.DependenciesFailed({"w1": ["a", ("b", 1)]}),
        errors.FailedDependency("w2"),
        errors.JobCancelled("job 'job-1' was cancelled"),
        errors.WorkersLost("every worker the job could use was lost"),
        errors.WorkerDied("t", "w3", 2, ["w2", "w3"], "killed by SIGKILL"),
        command.CommandFailed(["false"], 1, stderr="boom\n", stdout="out"),
        command.CommandTimeout("sleep 9", None, stderr="", timeout=0.5),
        scatter.ScatterError("scattered object 'x' v2 is not on worker w1"),
        rmi_errors.NotConnected("not connected to w1"),
        rmi_errors.ProtocolError("frame kind 99"),
        rmi_errors.HandshakeError("wrong secret", reject=[b"x"]),
        rmi_errors.MessageTooLarge("a message of 2 GiB exceeds 1 GiB"),
        rmi_errors.SerializationError("the result of task 'bad' cannot be unpickled"),
        rmi_errors.RemoteError("ValueError: x", "builtins.ValueError", "Traceback ...", "w1"),
        UnpicklableError("args[0].lock cannot be pickled", "args[0].lock", "_thread.lock"),
        ClusterUnreachable("no worker answered through tcp://127.0.0.1:1"),
        ForkServerGone("the fork server exited before it answered"),
    ]


def test_the_samples_cover_every_error():
    assert {type(exc) for exc in _samples()} == set(STANDARD_BASES)


@pytest.mark.parametrize("exc", _samples(), ids=lambda exc: type(exc).__name__)
def test_errors_survive_pickling_and_the_wire(exc):
    for copy in (pickle.loads(pickle.dumps(exc)), serialize.load_exception(
            serialize.dump_exception(exc)[0], None)):
        assert type(copy) is type(exc)
        assert str(copy) == str(exc)
        assert copy.args == exc.args
        attrs = {k: v for k, v in vars(exc).items() if k != "cause"}  # UnpicklableError drops it
        assert {k: v for k, v in vars(copy).items() if k != "cause"} == attrs
        assert isinstance(copy, BndlLikeError)


def test_worker_died_compares_by_value_after_a_round_trip():
    exc = errors.WorkerDied("t", "w3", 2, ["w2", "w3"], "killed by SIGKILL")
    copy = pickle.loads(pickle.dumps(exc))
    assert copy == exc and hash(copy) == hash(exc)
    assert copy != errors.WorkerDied("t", "w3", 2, ["w2", "w3"], "exited with code 3")


def test_the_package_says_it_is_typed():
    # PEP 561: the marker in the package, and setup.py installing it
    from importlib.resources import files

    assert files("bndl_like").joinpath("py.typed").is_file()
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        assert '"bndl_like": ["py.typed"]' in f.read()
