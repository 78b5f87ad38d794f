"""Every notebook of notebooks/, executed for real on a kernel; the stop button pressed in
the cells tagged ``interrupt``."""

from __future__ import annotations

import os
import re

import pytest

from . import runner

pytestmark = pytest.mark.timeout(60)  # a notebook stays under a minute on 2 cores, kernel start included

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    return ANSI.sub("", text)


def test_every_notebook_is_tested_and_committed_without_outputs():
    names = sorted(n for n in os.listdir(runner.NOTEBOOKS) if n.endswith(".ipynb"))
    assert names == ["failures_and_recovery.ipynb", "getting_started.ipynb", "profiling.ipynb"]
    for name in names:
        nb = runner.load(name)
        dirty = [i for i, cell in enumerate(nb.cells)
                 if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count"))]
        assert not dirty, f"{name}: clear the outputs of cells {dirty} before committing"


def test_getting_started():
    nb = runner.load("getting_started.ipynb")
    runner.run(nb)
    ctx_cell = runner.cell_with(nb, "ctx = ExecutionContext.local(workers=2)")
    html = [out["data"]["text/html"] for out in ctx_cell.outputs if "text/html" in out.get("data", {})]
    assert html and "127.0.0.1" in html[0] and html[0].count("<tr>") >= 3  # a row per worker
    run_cell = runner.cell_with(nb, "results = list(ctx.execute(job))")
    # the progress bar is a widget in Jupyter
    assert any("application/vnd.jupyter.widget-view+json" in out.get("data", {}) for out in run_cell.outputs)
    assert "'n': 4000000" in runner.outputs_text(run_cell)
    assert "<Job statistics done 17/17" in runner.outputs_text(_cell_exactly(nb, "job"))
    assert "[1, 2, 3]" in runner.outputs_text(runner.cell_with(nb, "await actx.map"))


def _cell_exactly(nb, source: str):
    found = [cell for cell in runner.code_cells(nb) if cell.source.strip() == source]
    assert len(found) == 1
    return found[0]


def test_failures_and_recovery_with_the_stop_button():
    nb = runner.load("failures_and_recovery.ipynb")
    stop_index = next(i for i, cell in enumerate(nb.cells) if "interrupt" in cell.metadata.get("tags", []))
    nbformat = pytest.importorskip("nbformat")
    # checks the reader does not need: nothing of the interrupted job still runs on a worker
    nb.cells.insert(stop_index + 1, nbformat.v4.new_code_cell(WAIT_IDLE))
    interrupters = runner.run(nb)

    failing = plain(runner.outputs_text(runner.cell_with(nb, 'lines = ["a=1"')))
    assert "ValueError: invalid literal for int() with base 10: 'three'" in failing
    # the user's frame is shown, the framework's frames are folded
    assert "in parse" in failing and "key, int(value)" in failing
    assert "skipping hidden" in failing and "worker.py" not in failing and "run.py" not in failing
    # the remote frame (below the hidden one) names the cell and shows its line; where it failed
    # is the exception's cause, above it
    remote = failing[failing.index("skipping hidden"):]
    assert "Cell In[" in remote and "in parse" in remote and "key, int(value)" in remote
    assert "<dynamic-code>" not in failing and "Could not get source" not in failing
    assert failing.index("failed on worker") < failing.index("skipping hidden")

    assert "4 retried" in runner.outputs_text(runner.cell_with(nb, "def flaky"))
    lost = runner.outputs_text(runner.cell_with(nb, "def kill_a_worker"))
    assert "killed" in lost and "done 28/28" in lost
    assert "JobCancelled: job cancelled was cancelled" in runner.outputs_text(
        runner.cell_with(nb, "threading.Timer"))

    assert interrupters[stop_index].interrupted_at is not None, "the kernel was never interrupted"
    stopped = runner.outputs_text(nb.cells[stop_index])
    assert "KeyboardInterrupt" in stopped
    assert "IDLE" in runner.outputs_text(nb.cells[stop_index + 1])
    after = runner.outputs_text(nb.cells[stop_index + 2])
    assert after.startswith("cancelled") and "'done': 0" in after and "[1, 2, 3]" in after


# kernel code: wait (bounded) until no worker runs or queues a task of this driver's jobs
WAIT_IDLE = '''
import time as _time
def _busy():
    answers = [ctx._portal.run(lambda w=w: w.call("tasks", "status"), timeout=10) for w in ctx.workers]
    return sum(a["running"] + a["queued"] for a in answers)
_deadline = _time.monotonic() + 10
while _busy() and _time.monotonic() < _deadline:
    _time.sleep(0.05)
print("IDLE" if not _busy() else "STILL RUNNING")
'''


def test_profiling_notebook():
    nb = runner.load("profiling.ipynb")
    runner.run(nb)
    text = "\n".join(runner.outputs_text(cell) for cell in runner.code_cells(nb))
    assert "CPU profile (cpu clock" in text and "workload.py:" in text and " simulate" in text
    assert "numpy/" in text and "--- worker " in text
    assert "Memory top 5 by lineno" in text and "block = np.random" in text and "MiB" in text


INTERRUPTED_MAP_AND_PROFILER = [
    '''
import os, signal, time
from bndl_like import ExecutionContext

def work(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return seconds

ctx = ExecutionContext.local(workers=2)
ctx.await_workers()
''',
    ("interrupt", "ctx.map(work, [5] * 8)"),  # interrupted once its progress bar shows
    WAIT_IDLE + "print('MAP', ctx.jobs[-1].state, ctx.map(abs, [-1, -2], progress=False))",
    '''
pids = ctx.run_each_worker(os.getpid)
ctx.cpu_profiling.start()
ctx.map(abs, range(100), progress=False)
stuck = sorted(pids)[0]
os.kill(pids[stuck], signal.SIGSTOP)  # a worker that does not answer
''',
    ("interrupt", "print('READY', flush=True)\nctx.cpu_profiling.stop()"),
    '''
os.kill(pids[stuck], signal.SIGCONT)
ctx.cpu_profiling.stop()
ctx.cpu_profiling.start()
print("PROFILED", ctx.map(abs, [-5], progress=False), ctx.cpu_profiling.running)
ctx.cpu_profiling.stop()
ctx.cpu_profiling.print_stats(max_rows=3)
ctx.close()
''',
]


def test_the_stop_button_during_map_and_a_profiler_call():
    nbformat = pytest.importorskip("nbformat")
    cells = []
    for source in INTERRUPTED_MAP_AND_PROFILER:
        if isinstance(source, tuple):
            cell = nbformat.v4.new_code_cell(source[1])
            cell.metadata["tags"] = ["interrupt", "raises-exception"]
        else:
            cell = nbformat.v4.new_code_cell(source)
        cells.append(cell)
    nb = nbformat.v4.new_notebook(cells=cells)
    interrupters = runner.run(nb, ready=lambda out: out.output_type == "display_data"
                              or "READY" in out.get("text", ""))
    assert sorted(interrupters) == [1, 4]
    assert all(i.interrupted_at is not None for i in interrupters.values())
    for index in (1, 4):
        assert "KeyboardInterrupt" in runner.outputs_text(nb.cells[index]), index
    assert "IDLE\nMAP cancelled [1, 2]" in runner.outputs_text(nb.cells[2])
    text = runner.outputs_text(nb.cells[5])
    assert "PROFILED [5] True" in text and "CPU profile" in text
