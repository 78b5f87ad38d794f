"""What tasks print and log reaches the driver, prefixed with worker and task; ctx.worker_logs."""

from __future__ import annotations

import asyncio
import logging
import re
import sys

import pytest

from bndl_like import ExecutionContext, FuncTask, Job
from bndl_like.execute.driver.output import resolve_forward_output

from ..conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def chatty(x):
    print(f"hello {x}")
    print("no newline", x, end="")
    logging.getLogger("user.module").info("info %s", x)
    logging.getLogger("user.module").warning("warning %s", x)
    sys.stderr.write(f"to stderr {x}\n")
    return x * 10


def framework_warning(x):
    logging.getLogger("bndl_like.execute.somewhere").warning("framework warning %s", x)
    return x


def flood(lines, width):
    line = "x" * width
    for i in range(lines):
        print(i, line)
    return lines


def framework_level():
    return logging.getLogger("bndl_like").getEffectiveLevel(), logging.getLogger("user").getEffectiveLevel()


@pytest.fixture(scope="module")
def octx():
    with ExecutionContext.local(workers=2) as ctx:
        assert ctx.await_workers() == 2
        yield ctx


class Captured:
    """What the driver wrote to sys.stdout / sys.stderr so far (under capsys)."""

    def __init__(self, capsys):
        self.capsys = capsys
        self.out = self.err = ""

    def read(self) -> Captured:
        got = self.capsys.readouterr()
        self.out += got.out
        self.err += got.err
        return self


def test_task_print_and_log_records_reach_the_driver(octx, capsys):
    assert octx.forward_output is True  # a local cluster: on by default
    job = Job(octx, [FuncTask(octx, ("chatty", i), chatty, args=(i,)) for i in range(4)])
    assert list(octx.execute(job)) == [0, 10, 20, 30]
    # a task's output leaves its worker before the task's end: it is here with the results
    seen = Captured(capsys).read()
    workers = "|".join(re.escape(w.name) for w in octx.workers)
    for i in range(4):
        prefix = rf"\((?:{workers}), task \('chatty', {i}\)\) "
        assert re.search(prefix + rf"hello {i}\n", seen.out), seen.out
        assert re.search(prefix + rf"no newline {i}\n", seen.out), seen.out
        # INFO from task code arrives though the workers' log level is WARNING
        assert re.search(prefix + rf"INFO user.module: info {i}\n", seen.err), seen.err
        assert re.search(prefix + rf"WARNING user.module: warning {i}\n", seen.err), seen.err
        assert re.search(prefix + rf"to stderr {i}\n", seen.err), seen.err
    assert "to stderr" not in seen.out and "hello" not in seen.err


def test_task_loggers_emit_info_but_the_framework_keeps_its_level(octx):
    assert octx.run_function(framework_level) == (logging.WARNING, logging.INFO)


def test_output_of_run_function_and_run_each_worker_reaches_the_driver(octx, capsys):
    assert octx.run_function(chatty, 5) == 50
    names = [w.name for w in octx.workers]
    assert octx.run_each_worker(chatty, 6) == {name: 60 for name in names}
    seen = Captured(capsys).read()
    assert re.search(r"\(.+, call chatty\) hello 5\n", seen.out), seen.out
    for name in names:
        assert f"({name}, call chatty) hello 6\n" in seen.out
        assert f"({name}, call chatty) INFO user.module: info 6\n" in seen.err


def test_framework_warnings_of_a_task_are_not_task_output(octx, capsys):
    assert octx.map(framework_warning, [1, 2]) == [1, 2]
    seen = Captured(capsys).read()
    assert "framework warning" not in seen.out + seen.err
    # they stay in the workers' own log, which worker_logs shows
    wait_until(lambda: sum("framework warning" in line for lines in octx.worker_logs(50).values()
                           for line in lines) == 2, 10, "the framework warnings in the workers' logs")


def test_worker_logs_keep_the_last_lines_of_each_worker(octx):
    octx.run_each_worker(chatty, 7)
    logs = octx.worker_logs(4)
    assert sorted(logs) == sorted(w.name for w in octx.workers)
    for lines in logs.values():
        assert len(lines) == 4
        assert lines[-1] == "(call chatty) no newline 7"  # the unfinished line, at the call's end
        assert "(call chatty) to stderr 7" in lines
    assert all(len(lines) == 1 for lines in octx.worker_logs(1).values())
    assert octx.worker_logs(0) == {w.name: [] for w in octx.workers}
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        octx.worker_logs(-1)

    async def twin():
        return await octx.ensure_async().worker_logs(2)
    assert asyncio.run(asyncio.wait_for(twin(), 30)) == {name: lines[-2:] for name, lines in logs.items()}


def test_forward_output_off_keeps_output_on_the_workers(octx, capsys):
    octx.forward_output = False
    try:
        assert octx.map(chatty, [8, 9]) == [80, 90]
        seen = Captured(capsys).read()
        assert "hello" not in seen.out and "info" not in seen.err
        lines = [line for lines in octx.worker_logs(20).values() for line in lines]
        assert "(task 0) hello 8" in lines and "(task 1) hello 9" in lines
    finally:
        octx.forward_output = True
    assert octx.run_function(chatty, 3) == 30
    assert "hello 3" in Captured(capsys).read().out
    with pytest.raises(TypeError, match="forward_output must be True or False"):
        octx.forward_output = "yes"


def test_a_flood_of_output_arrives_or_is_counted_as_dropped(octx, capsys):
    lines = 20_000
    assert octx.run_function(flood, lines, 200) == lines
    seen = Captured(capsys).read()
    arrived = len(re.findall(r"^\(.+, call flood\) \d+ x+$", seen.out, re.M))
    dropped = sum(int(n) for n in re.findall(r"(\d+) lines of task output dropped", seen.err))
    assert arrived + dropped == lines
    assert arrived > 0


def test_forward_output_option(monkeypatch):
    monkeypatch.delenv("BNDL_LIKE_FORWARD_OUTPUT", raising=False)
    assert resolve_forward_output(None, local_cluster=True) is True
    assert resolve_forward_output(False, local_cluster=True) is False
    assert resolve_forward_output(True, local_cluster=False) is True
    monkeypatch.setenv("BNDL_LIKE_FORWARD_OUTPUT", "off")
    assert resolve_forward_output(None, local_cluster=True) is False
    monkeypatch.setenv("BNDL_LIKE_FORWARD_OUTPUT", "sometimes")
    with pytest.raises(ValueError, match="forward_output.*BNDL_LIKE_FORWARD_OUTPUT.*'sometimes'"):
        resolve_forward_output(None, local_cluster=True)
    with pytest.raises(TypeError, match="forward_output must be True, False or None"):
        ExecutionContext(forward_output="yes", workers=1)


def test_a_supervised_cluster_forwards_when_the_driver_asks(capsys):
    from ..deploy.test_cli import SECRET, start, stop

    with ExecutionContext(seeds=[], listen="tcp://127.0.0.1:0", secret=SECRET) as ctx:
        assert ctx.forward_output is False  # neither a local cluster nor an interactive session
        sup = start("supervisor", "--workers", "1", "--seeds", ctx.node.addresses[0],
                    env={"PYTHONUNBUFFERED": "1"})
        try:
            assert ctx.await_workers(1, stable_timeout=30) == 1
            assert ctx.run_function(chatty, 1) == 10
            ctx.forward_output = True
            assert ctx.run_function(chatty, 2) == 20
            seen = Captured(capsys).read()
        finally:
            out, err = stop(sup)
    # off: in the supervisor's terminal, as before; INFO records too (its workers log at INFO)
    assert "hello 1" in out and "hello 1" not in seen.out
    assert re.search(r"INFO \S+ user.module: info 1", err), err
    # on: on the driver, and not in the supervisor's terminal
    assert re.search(r"\(.+, call chatty\) hello 2\n", seen.out), seen.out
    assert re.search(r"\(.+, call chatty\) INFO user.module: info 2\n", seen.err), seen.err
    assert "hello 2" not in out and "info 2" not in err and "to stderr 2" not in err


NOTEBOOK_CELLS = [
    "import logging\n"
    "from bndl_like import ExecutionContext\n"
    "ctx = ExecutionContext.local(workers=1)\n"
    "print('workers', ctx.await_workers(), 'forward', ctx.forward_output)",
    "def shout(x):\n"
    "    print('printed', x)\n"
    "    logging.getLogger('nb').info('logged %s', x)\n"
    "    return x\n"
    "ctx.run_function(shout, 1)",
    "ctx.close()",
]


@pytest.mark.timeout(90)
def test_in_a_notebook_output_shows_in_the_running_cell():
    nbformat = pytest.importorskip("nbformat", reason="pip install -e .[test] brings nbformat")
    from ..notebooks.runner import run

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS])
    run(nb, timeout=60)
    made, called, _ = nb.cells
    streams = {(out.output_type, out.get("name")): out.get("text", "") for out in called.outputs}
    made_text = "".join(out.get("text", "") for out in made.outputs)
    assert "workers 1 forward True" in made_text and "printed" not in made_text
    stdout, stderr = streams.get(("stream", "stdout"), ""), streams.get(("stream", "stderr"), "")
    assert re.fullmatch(r"\(\S+, call shout\) printed 1\n", stdout), called.outputs  # once, not twice
    assert re.search(r"\(\S+, call shout\) INFO nb: logged 1\n", stderr), called.outputs
