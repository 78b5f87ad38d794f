"""Remote tracebacks read as the user's code failing: the framework's frames folded, at
most one of the driver's between the user's call and the error, the message as raised."""

from __future__ import annotations

import json
import os
import traceback

import pytest

import bndl_like
from bndl_like import ExecutionContext
from bndl_like.execute.tasks import FuncTask, Job
from bndl_like.rmi.remote_tb import RemoteTraceback, fold

from . import helpers

pytestmark = pytest.mark.timeout(60)


def chain(*modules: str) -> list:
    """Remote frames, one per module, outermost first."""
    return [(module, f"/{module}.py", f"f{i}", f"f{i}", 1, i + 1) for i, module in enumerate(modules)]


def modules_of(frames: list) -> list[str]:
    return [frame[0] for frame in frames]


def test_fold_drops_framework_and_plumbing_before_the_users_code():
    tb = chain("threading", "concurrent.futures.thread", "bndl_like.execute.worker",
               "bndl_like.execute.executor", "mymodule", "bndl_like.execute.scatter", "json.decoder",
               "threading")
    folded, count = fold(tb)
    # plumbing after the user's first frame is the user's business (e.g. code they called)
    assert modules_of(folded) == ["mymodule", "json.decoder", "threading"]
    assert count == 5
    assert modules_of(tb)[0] == "threading"  # the input is left as it was


def test_an_error_of_the_framework_itself_is_not_folded():
    tb = chain("threading", "bndl_like.execute.worker", "bndl_like.rmi.serialize")
    folded, count = fold(tb)
    assert count == 0 and modules_of(folded) == modules_of(tb)
    assert fold([]) == ([], 0)


def parse_json(text):
    return json.loads(text)


def fail_with_note(message):
    error = ValueError(message)
    error.add_note("a note of the user's own")
    raise error


PACKAGE = os.path.dirname(os.path.abspath(bndl_like.__file__)) + os.sep


def framework_frames(exc: BaseException) -> list:
    """The driver's frames of bndl_like in ``exc``'s own traceback."""
    return [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(PACKAGE)]


def hidden_frames(exc: BaseException) -> list[str]:
    tb, hidden = exc.__traceback__, []
    while tb is not None:
        if tb.tb_frame.f_locals.get("__tracebackhide__"):
            hidden.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return hidden


def test_a_failed_task_shows_the_users_frames_and_the_full_trace_on_request(ctx):
    job = Job(ctx, [FuncTask(ctx, "bad", parse_json, ("{not json",))], name="parse")
    with pytest.raises(json.JSONDecodeError) as info:
        list(ctx.execute(job))
    exc = info.value
    shown = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert "in parse_json" in shown and "json/decoder.py" in shown
    assert "bndl_like/execute/worker/service.py" not in shown
    assert "task 'bad' failed on worker" in shown and "attempt 1" in shown
    assert "folded, all in exc.remote_traceback" in shown
    assert "bndl_like/execute/worker/service.py" in exc.remote_traceback  # nothing lost
    assert exc.remote_frames_folded >= 1
    # where it failed: the cause; the remote frames: last in its own traceback, the user's first
    assert isinstance(exc.__cause__, RemoteTraceback) and "task 'bad' failed" in str(exc.__cause__)
    frames = traceback.extract_tb(exc.__traceback__)
    remote = frames[[f.name for f in frames].index("parse_json"):]
    assert remote[0].line == "return json.loads(text)"
    assert remote[-1].filename.endswith(os.path.join("json", "decoder.py"))
    assert shown.index("failed on worker") < shown.index("in parse_json") < shown.index("json/decoder.py")


def test_run_function_errors_have_no_futures_plumbing(ctx):
    with pytest.raises(helpers.TaskError, match="nope") as info:
        ctx.run_function(helpers.fail, "nope")
    exc = info.value
    shown = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert "concurrent/futures" not in shown and "bndl_like/execute/worker/service.py" not in shown
    assert "in fail" in shown and "raised on worker" in shown
    assert ctx.run_function(helpers.identity, 3) == 3


def test_remote_exceptions_keep_their_message_for_pytest_raises_match(ctx):
    """pytest >= 8 matches the notes too: where it failed is not a note."""
    message = "invalid literal for int() with base 10: 'x'"
    job = Job(ctx, [FuncTask(ctx, "bad", int, ("x",))])
    with pytest.raises(ValueError, match=r"^invalid literal for int\(\) with base 10: 'x'$") as info:
        list(ctx.execute(job))
    assert str(info.value) == message and info.value.args == (message,)
    assert getattr(info.value, "__notes__", None) is None
    with pytest.raises(helpers.TaskError, match="^nope$") as info:
        ctx.run_function(helpers.fail, "nope")
    assert info.value.args == ("nope",) and getattr(info.value, "__notes__", None) is None
    with pytest.raises(helpers.TaskError, match="^nope$"):
        ctx.map(helpers.fail, ["nope"])
    with pytest.raises(helpers.TaskError, match="^nope$"):
        ctx.run_each_worker(helpers.fail, "nope")
    # the user's own notes come back as they were added
    with pytest.raises(ValueError) as info:
        ctx.run_function(fail_with_note, "mine")
    assert str(info.value) == "mine" and info.value.__notes__ == ["a note of the user's own"]
    assert "raised on worker" in str(info.value.__cause__)


def test_one_hidden_framework_frame_between_the_call_and_the_error(ctx):
    calls = {
        "execute": lambda: list(ctx.execute(Job(ctx, [FuncTask(ctx, 0, helpers.fail, ("x",))]))),
        "run_function": lambda: ctx.run_function(helpers.fail, "x"),
        "run_each_worker": lambda: ctx.run_each_worker(helpers.fail, "x"),
        "run_each_host": lambda: ctx.run_each_host(helpers.fail, "x"),
        "map": lambda: ctx.map(helpers.fail, ["x"]),
    }
    for name, call in calls.items():
        with pytest.raises(helpers.TaskError) as info:
            call()
        frames = framework_frames(info.value)
        assert len(frames) == 1, (name, frames)
        assert hidden_frames(info.value) == [frames[0].name], name
        assert frames[0].name in (name, "__next__")
    # a bad argument: raised by the method called, nothing of the framework below it
    with pytest.raises(TypeError, match="needs a callable") as info:
        ctx.run_function(42)
    assert [f.name for f in framework_frames(info.value)] == ["run_function"]


def test_a_closed_context_says_so_in_one_line_from_the_method_called():
    ctx = ExecutionContext(seeds=[], listen="tcp://127.0.0.1:0")  # no workers needed
    job = Job(ctx, [FuncTask(ctx, 0, helpers.identity, (1,))])
    ctx.close()
    for name, call in (("run_function", lambda: ctx.run_function(pow, 2, 3)),
                       ("map", lambda: ctx.map(abs, [1])),
                       ("execute", lambda: ctx.execute(job))):
        with pytest.raises(RuntimeError, match="^this ExecutionContext is closed; make a new one$") as info:
            call()
        assert [f.name for f in framework_frames(info.value)] == [name]
        shown = traceback.format_exception(info.value)  # ..., the caller, the method, the error
        assert f", in {name}\n" in shown[-2] and "<lambda>" in shown[-3]
        assert shown[-1] == "RuntimeError: this ExecutionContext is closed; make a new one\n"


def test_frames_are_marked_for_ipython_to_hide(ctx):
    """IPython (and pytest) hide frames with ``__tracebackhide__``: only the user's remain."""
    ultratb = pytest.importorskip("IPython.core.ultratb")
    job = Job(ctx, [FuncTask(ctx, 0, parse_json, ("{x",))])
    with pytest.raises(json.JSONDecodeError) as info:
        list(ctx.execute(job))
    exc = info.value
    try:  # IPython 9 names its colours themes
        tb = ultratb.VerboseTB(theme_name="nocolor")
    except TypeError:
        tb = ultratb.VerboseTB(color_scheme="NoColor")
    text = tb.text(type(exc), exc, exc.__traceback__)
    assert "[... skipping hidden 1 frame]" in text
    assert PACKAGE not in text  # no frame of bndl_like shown, the remote ones folded
    assert "parse_json" in text and "return json.loads(text)" in text
