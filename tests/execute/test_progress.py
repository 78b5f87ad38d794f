"""Progress bars of execute and map, and when they are on."""

from __future__ import annotations

import re
import sys

import pytest

from bndl_like import ExecutionContext
from bndl_like.execute.driver import progress
from bndl_like.execute.tasks import FuncTask, Job

from . import helpers

pytestmark = pytest.mark.timeout(60)


def last_bar(text: str) -> str:
    """The last state of a text progress bar (tqdm redraws with carriage returns)."""
    return re.split(r"[\r\n]+", text.strip())[-1]


def test_off_by_default_in_a_script_on_in_an_interactive_session(monkeypatch):
    monkeypatch.delenv("BNDL_LIKE_EXECUTE_PROGRESS", raising=False)
    monkeypatch.delattr(sys, "ps1", raising=False)
    assert not progress.interactive()
    assert progress.wanted(None, None) is False
    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)
    assert progress.interactive()
    assert progress.wanted(None, None) is True


def test_argument_wins_over_context_over_option(monkeypatch):
    monkeypatch.setenv("BNDL_LIKE_EXECUTE_PROGRESS", "true")
    assert progress.wanted(None, None) is True
    assert progress.wanted(None, False) is False
    assert progress.wanted(True, False) is True
    monkeypatch.setenv("BNDL_LIKE_EXECUTE_PROGRESS", "off")
    assert progress.wanted(None, None) is False
    monkeypatch.setenv("BNDL_LIKE_EXECUTE_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="execute.progress.*BNDL_LIKE_EXECUTE_PROGRESS.*'sometimes'"):
        progress.wanted(None, None)
    with pytest.raises(TypeError, match="progress must be True, False or None, not 'yes'"):
        progress.wanted("yes", None)


def test_a_wrong_progress_setting_fails_when_the_context_is_made():
    with pytest.raises(TypeError, match="progress must be"):
        ExecutionContext.local(workers=1, progress=1)


def test_execute_shows_done_of_total(ctx, capsys):
    job = Job(ctx, [FuncTask(ctx, i, helpers.square, (i,)) for i in range(20)], name="squares")
    assert list(ctx.execute(job, progress=True)) == [i * i for i in range(20)]
    bar = last_bar(capsys.readouterr().err)
    assert bar.startswith("squares: 100%") and "20/20" in bar and "failed" not in bar


def test_no_bar_unless_asked_in_a_script(ctx, capsys, monkeypatch):
    monkeypatch.delenv("BNDL_LIKE_EXECUTE_PROGRESS", raising=False)
    monkeypatch.delattr(sys, "ps1", raising=False)
    job = Job(ctx, [FuncTask(ctx, i, helpers.square, (i,)) for i in range(5)], name="quiet")
    assert list(ctx.execute(job)) == [0, 1, 4, 9, 16]
    assert "quiet" not in capsys.readouterr().err
    previous, ctx.progress = ctx.progress, True  # the context's setting
    try:
        job = Job(ctx, [FuncTask(ctx, i, helpers.square, (i,)) for i in range(5)], name="loud")
        list(ctx.execute(job))
        assert "loud: 100%" in capsys.readouterr().err
    finally:
        ctx.progress = previous


def test_failed_and_retried_tasks_are_counted(ctx, capsys, tmp_path):
    tasks = [FuncTask(ctx, i, helpers.square, (i,)) for i in range(3)]
    tasks.append(FuncTask(ctx, 3, helpers.fail_on_first_worker, (str(tmp_path), "ok")))
    job = Job(ctx, tasks, name="flaky")
    assert list(ctx.execute(job, attempts=2, progress=True)) == [0, 1, 4, "ok"]
    bar = last_bar(capsys.readouterr().err)
    assert "4/4" in bar and "retried=1" in bar, bar
    assert job.retried == 1 and job.done_count == 4 and job.failed_count == 0

    job = Job(ctx, [FuncTask(ctx, 0, helpers.fail, ("broken",))], name="broken")
    with pytest.raises(helpers.TaskError, match="broken"):
        list(ctx.execute(job, progress=True))
    bar = last_bar(capsys.readouterr().err)
    assert bar.startswith("broken (failed)") and "0/1" in bar and "failed=1" in bar, bar
    assert job.failed_count == 1


def test_map_shows_a_bar_over_its_chunks(ctx, capsys):
    assert ctx.map(helpers.square, range(100), chunksize=10, progress=True) == [i * i for i in range(100)]
    bar = last_bar(capsys.readouterr().err)
    assert bar.startswith("map-square: 100%") and "10/10" in bar


async def test_async_execute_and_map_show_a_bar(ctx, capsys):
    actx = ctx.ensure_async()
    job = Job(ctx, [FuncTask(ctx, i, helpers.square, (i,)) for i in range(4)], name="async-squares")
    assert [r async for r in actx.execute(job, progress=True)] == [0, 1, 4, 9]
    assert "async-squares: 100%" in capsys.readouterr().err
    assert await actx.map(helpers.square, [1, 2], progress=True) == [1, 4]
    assert "map-square: 100%" in capsys.readouterr().err
