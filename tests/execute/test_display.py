"""Short reprs and Jupyter HTML of contexts, jobs, tasks and worker peers, on a real local cluster."""

from __future__ import annotations

import os
import re
import threading
import time
from types import SimpleNamespace

import pytest

from bndl_like import ExecutionContext, FuncTask, Job, display

from ..conftest import wait_until
from . import helpers

DURATION = r"\d+(\.\d)? (ms|s)"  # what a test job takes


def wait_for_file(path, value):
    """Block (in a worker) until ``path`` exists; give up after 20 s so a failing test ends."""
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.005)
    return value


def run_in_thread(ctx, job, **kwargs):
    """Execute ``job`` in a thread; returns the thread and where its results (or error) go."""
    out: dict = {}

    def target():
        try:
            out["results"] = list(ctx.execute(job, **kwargs))
        except BaseException as exc:
            out["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


# -- durations ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (0.0004, "0.4 ms"), (0.012, "12 ms"), (0.9999, "1.0 s"), (3.44, "3.4 s"),
    (59.94, "59.9 s"), (59.96, "1 min 0 s"), (125, "2 min 5 s"), (3725, "1 h 2 min"),
])
def test_durations_in_human_units(seconds, text):
    assert display.fmt_duration(seconds) == text


# -- jobs and tasks -----------------------------------------------------------------------------

def test_succeeded_job_and_its_tasks(ctx):
    job = Job(ctx, [FuncTask(ctx, i, helpers.square, (i,)) for i in range(6)], name="squares")
    assert repr(job) == "<Job squares created 0/6 done, 0 failed, 0 retried>"
    assert repr(job.tasks[0]) == "<FuncTask 0 pending>"
    assert list(ctx.execute(job)) == [i * i for i in range(6)]

    assert re.fullmatch(rf"<Job squares done 6/6 done, 0 failed, 0 retried, {DURATION}>", repr(job))
    names = {w.name for w in ctx.workers}
    task = job.tasks[3]
    match = re.fullmatch(rf"<FuncTask 3 done on (\S+), {DURATION}>", repr(task))
    assert match and match.group(1) in names

    page = job._repr_html_()
    assert page.startswith("<div") and "<b>Job squares</b>" in page
    cells = re.findall(r"<td[^>]*>(.*?)</td>", page)
    # state, total, pending, running, done, failed, cancelled, retried, duration
    assert cells[:8] == ["done", "6", "0", "0", "6", "0", "0", "0"]
    assert re.fullmatch(DURATION, cells[8])
    assert "failed tasks" not in page

    page = task._repr_html_()
    assert "<b>FuncTask 3</b>" in page and "square[3]" in page
    assert re.search(rf"<th[^>]*>worker</th><td[^>]*>{re.escape(task.executed_on[-1])}</td>", page)
    assert re.search(r"<th[^>]*>attempts</th><td[^>]*>1</td>", page)
    assert re.search(rf"<th[^>]*>duration</th><td[^>]*>{DURATION}</td>", page)
    assert ">error<" not in page


def test_retried_task_shows_its_attempts(ctx, tmp_path):
    flaky = FuncTask(ctx, "flaky", helpers.fail_on_first_worker, (str(tmp_path), "ok"))
    job = Job(ctx, [flaky], name="flaky-job")
    assert list(ctx.execute(job, attempts=2)) == ["ok"]
    assert re.fullmatch(rf"<Job flaky-job done 1/1 done, 0 failed, 1 retried, {DURATION}>", repr(job))
    assert re.fullmatch(rf"<FuncTask 'flaky' done on \S+ after 2 attempts, {DURATION}>", repr(flaky))
    assert re.search(r"<th[^>]*>attempts</th><td[^>]*>2</td>", flaky._repr_html_())


def test_failed_task_names_its_error_escaped_in_html(ctx):
    bad = "<script>alert(1)</script>"
    tasks = [FuncTask(ctx, ("map", i), helpers.fail_on, (bad, i)) for i in range(2)]
    failing = FuncTask(ctx, "<i>bad</i>", helpers.fail_on, (bad, bad))
    job = Job(ctx, [*tasks, failing], name="<b>job</b>")
    with pytest.raises(helpers.TaskError, match="bad item <script>"):
        list(ctx.execute(job))

    assert failing.failed
    assert re.fullmatch(rf"<FuncTask '<i>bad</i>' failed on \S+ after 1 attempt, {DURATION}: "
                        rf"TaskError: bad item {re.escape(bad)}>", repr(failing))
    assert re.match(r"<Job <b>job</b> failed \d/3 done, 1 failed, ", repr(job))

    page = failing._repr_html_()
    assert "TaskError: bad item &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;i&gt;bad&lt;/i&gt;" in page
    assert "<script>" not in page and "<i>" not in page

    page = job._repr_html_()
    assert "<b>Job &lt;b&gt;job&lt;/b&gt;</b>" in page
    assert "failed tasks" in page
    assert "&#x27;&lt;i&gt;bad&lt;/i&gt;&#x27;" in page  # the task's id
    assert "TaskError: bad item &lt;script&gt;" in page
    assert "<script>" not in page and "<i>" not in page
    assert re.findall(r"<td[^>]*>(.*?)</td>", page)[:1] == ["failed"]


def test_job_html_lists_at_most_ten_failed_tasks(ctx):
    tasks = [FuncTask(ctx, i, helpers.identity, (i,)) for i in range(14)]
    job = Job(ctx, tasks, name="many")
    for task in tasks[:12]:
        task.mark_failed(ValueError(f"broken {task.id}\nsecond line"))
    page = job._repr_html_()
    assert page.count("ValueError: broken") == 10
    assert "second line" not in page
    assert "… and 2 more" in page
    assert repr(job) == "<Job many created 0/14 done, 12 failed, 0 retried>"


# -- the context's load while a job runs ----------------------------------------------------------

def worker_rows(page: str) -> dict:
    """{worker: (host, load, state)} from a context's HTML."""
    rows = re.findall(r"<tr><td[^>]*>(.*?)</td><td[^>]*>(.*?)</td><td[^>]*>(.*?)</td>"
                      r"<td[^>]*>(.*?)</td></tr>", page)
    return {name: (host, load, state) for name, host, load, state in rows}


def test_context_shows_the_load_of_a_running_job(ctx, tmp_path):
    names = [w.name for w in ctx.workers]
    assert re.fullmatch(rf"<ExecutionContext {re.escape(ctx._node.name)} open: 2 workers on 1 host, "
                        r"0 tasks assigned, \d+ jobs? run>", repr(ctx))
    release = tmp_path / "release"
    task = FuncTask(ctx, "blocked", wait_for_file, (str(release), 7))
    job = Job(ctx, [task], name="blocking")
    jobs_before = len(ctx.jobs)
    thread, out = run_in_thread(ctx, job)
    try:
        wait_until(lambda: task.running, message="the task to run")
        worker = task.executed_on[-1]
        text = repr(ctx)
        assert ", 1 task assigned, " in text and f"{jobs_before + 1} job" in text
        assert re.fullmatch(r"<Job blocking running 0/1 done, 1 running, 0 failed, 0 retried, "
                            r"\d.*>", repr(job))
        assert re.fullmatch(rf"<FuncTask 'blocked' running on {re.escape(worker)}, .*>", repr(task))
        rows = worker_rows(ctx._repr_html_())
        assert set(rows) == set(names)
        assert rows[worker] == ("127.0.0.1", "1", "connected")
        assert [rows[n][1] for n in names if n != worker] == ["0"]
        assert re.search(r"<th[^>]*>tasks assigned</th><td[^>]*>1</td>", ctx._repr_html_())
    finally:
        release.touch()
        thread.join(20)
    assert out == {"results": [7]}
    assert re.fullmatch(rf"<Job blocking done 1/1 done, 0 failed, 0 retried, {DURATION}>", repr(job))
    wait_until(lambda: ", 0 tasks assigned, " in repr(ctx), message="no load after the job")
    assert {load for _, load, _ in worker_rows(ctx._repr_html_()).values()} == {"0"}


def test_context_shows_held_workers(ctx):
    worker = ctx.workers[0].name
    ctx.hold(worker)
    try:
        assert ", 1 held, " in repr(ctx)
        rows = worker_rows(ctx._repr_html_())
        assert rows[worker][2] == "connected, held"
        assert [state for name, (_, _, state) in rows.items() if name != worker] == ["connected"]
    finally:
        ctx.release_worker(worker)
    assert "held" not in repr(ctx)


# -- worker peers -------------------------------------------------------------------------------

def test_worker_peers(ctx):
    assert len(ctx.workers) == 2
    for peer in ctx.workers:
        assert repr(peer) == f"<Peer worker {peer.name} on 127.0.0.1 connected>"
        page = peer._repr_html_()
        assert f"<b>Peer {peer.name}</b>" in page
        for key, value in [("type", "worker"), ("host", "127.0.0.1"), ("pid", str(peer.pid)),
                           ("addresses", ", ".join(peer.addresses)), ("state", "connected")]:
            assert re.search(rf"<th[^>]*>{key}</th><td[^>]*>{re.escape(value)}</td>", page), key


# -- a closed context, a context whose loop does not answer -----------------------------------

def test_closed_context_and_unresponsive_loop(monkeypatch):
    other = ExecutionContext.local(workers=1)
    try:
        assert other.await_workers() == 1
        name = other._node.name
        assert repr(other) == (f"<ExecutionContext {name} open: 1 worker on 1 host, 0 tasks assigned, "
                               "0 jobs run>")
        peer = other.workers[0]

        # the loop is busy: the load is unknown, the repr does not wait long
        monkeypatch.setattr(display, "LOAD_TIMEOUT", 0.2)
        busy, blocking = threading.Event(), threading.Event()

        def block():
            busy.set()
            blocking.wait(10)
        other._loop.call_soon_threadsafe(block)
        assert busy.wait(5)
        try:
            start = time.monotonic()
            assert repr(other) == (f"<ExecutionContext {name} open: 1 worker on 1 host, ? tasks assigned, "
                                   "0 jobs run>")
            assert worker_rows(other._repr_html_())[peer.name][1] == "?"
            assert time.monotonic() - start < 2
        finally:
            blocking.set()
    finally:
        other.close()

    start = time.monotonic()
    assert repr(other) == f"<ExecutionContext {name} closed, 0 jobs run>"
    page = other._repr_html_()
    assert time.monotonic() - start < 1
    assert f"<b>ExecutionContext {name}</b>" in page
    assert re.search(r"<th[^>]*>state</th><td[^>]*>closed</td>", page)
    assert repr(peer) == f"<Peer worker {peer.name} on 127.0.0.1 lost>"
    assert re.search(r"<th[^>]*>state</th><td[^>]*>lost", peer._repr_html_())


def test_context_html_caps_the_workers():
    peers = [SimpleNamespace(name=f"w{i:02}", host=f"10.0.0.{i % 3}", connected=True) for i in range(60)]
    fake = SimpleNamespace(_closed=False, _node=SimpleNamespace(name="<drv>"), jobs=[], workers=peers,
                           _state=SimpleNamespace(held={"w01"}))
    assert display.context_repr(fake) == \
        "<ExecutionContext <drv> open: 60 workers on 3 hosts, ? tasks assigned, 1 held, 0 jobs run>"
    page = display.context_html(fake)
    rows = worker_rows(page)
    assert len(rows) == 50 and "w49" in rows and "w50" not in rows
    assert rows["w01"] == ("10.0.0.1", "?", "connected, held")
    assert "… and 10 more" in page and "&lt;drv&gt;" in page and "<drv>" not in page
