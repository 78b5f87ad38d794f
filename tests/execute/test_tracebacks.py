"""Remote tracebacks read as the user's code failing: the framework's frames folded."""

from __future__ import annotations

import json
import traceback

import pytest

from bndl_like.execute.tasks import FuncTask, Job
from bndl_like.rmi.remote_tb import fold

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


def test_a_failed_task_shows_the_users_frames_and_the_full_trace_on_request(ctx):
    job = Job(ctx, [FuncTask(ctx, "bad", parse_json, ("{not json",))], name="parse")
    with pytest.raises(json.JSONDecodeError) as info:
        list(ctx.execute(job))
    exc = info.value
    shown = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert "in parse_json" in shown and "json/decoder.py" in shown
    assert "bndl_like/execute/worker.py" not in shown
    assert "task 'bad' failed on worker" in shown and "attempt 1" in shown
    assert "folded, all in exc.remote_traceback" in shown
    assert "bndl_like/execute/worker.py" in exc.remote_traceback  # nothing lost
    assert exc.remote_frames_folded >= 1
    # the user's frame comes first among the remote ones
    remote = shown[shown.index("raise error"):]
    assert remote.index("in parse_json") < remote.index("json/decoder.py")


def test_run_function_errors_have_no_futures_plumbing(ctx):
    with pytest.raises(helpers.TaskError, match="nope") as info:
        ctx.run_function(helpers.fail, "nope")
    exc = info.value
    shown = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert "concurrent/futures" not in shown and "bndl_like/execute/worker.py" not in shown
    assert "in fail" in shown and "raised on worker" in shown
    assert ctx.run_function(helpers.identity, 3) == 3


def test_frames_are_marked_for_ipython_to_hide(ctx):
    """IPython and pytest hide frames with ``__tracebackhide__``; the driver's entry points have it."""
    job = Job(ctx, [FuncTask(ctx, 0, helpers.fail, ("x",))])
    with pytest.raises(helpers.TaskError) as info:
        list(ctx.execute(job))
    tb, hidden = info.value.__traceback__, []
    while tb is not None:
        if tb.tb_frame.f_locals.get("__tracebackhide__"):
            hidden.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert hidden == ["_iterate"]
