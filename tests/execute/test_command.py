"""CommandTask: external programs as managed subprocesses on a real local cluster."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time

import pytest

from bndl_like import (
    CommandFailed,
    CommandResult,
    CommandTask,
    CommandTimeout,
    FuncTask,
    Job,
    JobCancelled,
)
from bndl_like.execute.worker import command

from . import helpers

pytestmark = pytest.mark.timeout(60)




def run(ctx, tasks, **kw):
    return list(ctx.execute(Job(ctx, tasks), **kw))


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def write_pid(path) -> str:
    """Python code writing its pid to ``path`` atomically (so a reader never sees it half written)."""
    return (f"import os; open({str(path) + '.tmp'!r}, 'w').write(str(os.getpid())); "
            f"os.replace({str(path) + '.tmp'!r}, {str(path)!r})")


def wait_for_file(path, within: float = 10.0) -> str:
    deadline = time.monotonic() + within
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} was not written within {within}s"
        time.sleep(0.01)
    with open(path) as f:
        return f.read().strip()


def gone(pid: int) -> bool:
    """The process no longer runs: it does not exist, or is a zombie waiting for init."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped between the two looks
        return True


def assert_gone(*pids: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"processes {[p for p in pids if not gone(p)]} still run"
        time.sleep(0.02)


def test_a_command_that_succeeds(ctx):
    task = CommandTask(ctx, "hi", py("print('hi')"))
    [result] = run(ctx, [task])
    assert isinstance(result, CommandResult)
    assert result == (0, "hi\n", "")
    assert result.stdout.strip() == "hi" and result.returncode == 0
    assert task.name == f"{os.path.basename(sys.executable)}[hi]"


def test_env_is_added_and_path_prepended(ctx, tmp_path):
    [worker] = run(ctx, [CommandTask(ctx, 0, py("import os; print(os.environ['PATH'])"))])
    task = CommandTask(ctx, 1, 'echo "$FOO"; echo "$PATH"', env={"FOO": "bar baz", "PATH": str(tmp_path)})
    [result] = run(ctx, [task])
    foo, path = result.stdout.splitlines()
    assert foo == "bar baz"
    assert path.startswith(str(tmp_path) + os.pathsep)
    assert path == f"{tmp_path}{os.pathsep}{worker.stdout.strip()}"


def test_commands_and_task_processes_never_see_the_cluster_secret(ctx):
    # the local cluster hands its workers the secret in BNDL_LIKE_SECRET; they drop it on reading
    code = py("import os; print('BNDL_LIKE_SECRET' in os.environ)")
    tasks = [CommandTask(ctx, 0, code), CommandTask(ctx, 1, code, env={"EXTRA": "1"}),
             FuncTask(ctx, 2, helpers.secret_in_env)]
    plain, with_env, in_task = run(ctx, tasks)
    assert plain.stdout.strip() == with_env.stdout.strip() == "False"
    assert in_task == (False, False)


def test_command_env_drops_the_secret_the_worker_holds(monkeypatch):
    monkeypatch.setenv("BNDL_LIKE_SECRET", "held-by-this-worker-0123456789")
    assert "BNDL_LIKE_SECRET" not in command._command_env(None)
    env = command._command_env({"PATH": "/extra", "FOO": "1"})
    assert "BNDL_LIKE_SECRET" not in env and env["FOO"] == "1"
    assert env["PATH"] == f"/extra{os.pathsep}{os.environ['PATH']}"


def test_cwd(ctx, tmp_path):
    [result] = run(ctx, [CommandTask(ctx, 0, py("import os; print(os.getcwd())"), cwd=tmp_path)])
    assert os.path.realpath(result.stdout.strip()) == os.path.realpath(tmp_path)


def test_a_failing_command_fails_the_task(ctx):
    task = CommandTask(ctx, 0, py("import sys; sys.stderr.write('boom: it broke\\n'); sys.exit(3)"))
    with pytest.raises(CommandFailed) as info:
        run(ctx, [task])
    message = str(info.value)
    assert sys.executable in message and "exit code 3" in message and "boom: it broke" in message
    assert info.value.returncode == 3 and info.value.stderr == "boom: it broke\n"
    assert task.failed
    assert run(ctx, [CommandTask(ctx, 0, "true")]) == [(0, "", "")]  # the context stays usable


def test_a_command_that_times_out_is_terminated(ctx, tmp_path):
    pid_file = tmp_path / "pid"
    task = CommandTask(ctx, 0, py(write_pid(pid_file) + "; import time; time.sleep(30)"), timeout=1.0)
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"timed out after 1s") as info:
        run(ctx, [task])
    assert time.monotonic() - started < 15
    assert isinstance(info.value, CommandFailed) and isinstance(info.value, TimeoutError)
    assert info.value.timeout == 1.0 and info.value.returncode == -signal.SIGTERM
    assert_gone(int(wait_for_file(pid_file)))


def test_a_command_ignoring_sigterm_is_killed_after_the_grace_period(ctx, tmp_path):
    pid_file = tmp_path / "pid"
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            + write_pid(pid_file) + "; time.sleep(30)")
    task = CommandTask(ctx, 0, py(code), timeout=1.0, grace=0.5)
    with pytest.raises(CommandTimeout) as info:
        run(ctx, [task])
    assert info.value.returncode == -signal.SIGKILL
    assert_gone(int(wait_for_file(pid_file)))


def test_cancelling_a_running_command_kills_its_process_group(ctx, tmp_path):
    parent, child = tmp_path / "parent", tmp_path / "child"
    # the shell writes its own pid and its background child's, then waits for the child
    script = (f"sleep 30 & echo $! > {child}.tmp && mv {child}.tmp {child}; "
              f"echo $$ > {parent}.tmp && mv {parent}.tmp {parent}; wait")
    job = Job(ctx, [CommandTask(ctx, 0, script)])
    results = ctx.execute(job).start()
    pids = int(wait_for_file(parent)), int(wait_for_file(child))
    assert not any(gone(pid) for pid in pids)
    timer = threading.Timer(0.1, job.cancel)
    timer.start()
    try:
        with pytest.raises(JobCancelled):
            next(results)
    finally:
        timer.cancel()
    assert_gone(*pids)
    assert job.state == "cancelled" and job.tasks[0].cancelled
    deadline = time.monotonic() + 5  # the runner thread reaped the command and unregistered it
    while any(k[1] == job.id for keys in ctx.run_each_worker(command.running_commands).values()
              for k in keys):
        assert time.monotonic() < deadline, "the cancelled command stayed registered"
        time.sleep(0.02)
    assert run(ctx, [CommandTask(ctx, 0, ["echo", "usable"])]) == [(0, "usable\n", "")]


def test_signal_command_reaches_a_running_command(ctx, tmp_path):
    pid_file = tmp_path / "pid"
    job = Job(ctx, [CommandTask(ctx, "sig", py(write_pid(pid_file) + "; import time; time.sleep(30)"))])
    results = ctx.execute(job).start()
    wait_for_file(pid_file)
    running = {w: [k for k in keys if k[1:] == (job.id, "sig")]
               for w, keys in ctx.run_each_worker(command.running_commands).items()}
    [(worker, [key])] = [(w, keys) for w, keys in running.items() if keys]
    assert worker == job.tasks[0].executed_on_last()
    sent = ctx.run_each_worker(command.signal_command, key, signal.SIGTERM)
    assert sent == {w.name: w.name == worker for w in ctx.workers}
    with pytest.raises(CommandFailed, match=r"killed by signal SIGTERM \(15\)"):
        next(results)
    deadline = time.monotonic() + 5
    while key in ctx.run_each_worker(command.running_commands)[worker]:
        assert time.monotonic() < deadline, "the command stayed registered after it ended"
        time.sleep(0.02)
    assert command.signal_command(key, signal.SIGTERM) is False  # nothing runs in the driver


def test_output_is_bounded_to_its_tail(ctx):
    code = ("import sys; sys.stdout.write('x' * (10 * 2**20) + 'END'); "
            "sys.stderr.write('y' * (10 * 2**20) + 'ERR')")
    [result] = run(ctx, [CommandTask(ctx, 0, py(code))])
    assert len(result.stdout) == command.DEFAULT_OUTPUT_LIMIT and result.stdout.endswith("xxEND")
    assert len(result.stderr) == command.DEFAULT_OUTPUT_LIMIT and result.stderr.endswith("yyERR")
    [small] = run(ctx, [CommandTask(ctx, 0, py(code), output_limit=10)])
    assert small.stdout == "xxxxxxxEND" and small.stderr == "yyyyyyyERR"


def test_failure_pickles_and_invalid_commands_are_refused(ctx):
    exc = CommandTimeout(["prog", "arg"], -15, "tail", "out", 2.5)
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is CommandTimeout and str(copy) == str(exc)
    assert (copy.cmd, copy.returncode, copy.stderr, copy.stdout, copy.timeout) == (
        ["prog", "arg"], -15, "tail", "out", 2.5)
    with pytest.raises(ValueError, match="empty"):
        CommandTask(ctx, 0, [])
    with pytest.raises(ValueError, match="timeout"):
        CommandTask(ctx, 0, ["true"], timeout=0)
    with pytest.raises(FileNotFoundError):
        run(ctx, [CommandTask(ctx, 0, ["/no/such/program"])])


def test_stop_and_continue_a_command_task(ctx, tmp_path):
    ticks = tmp_path / "ticks"
    script = f"while true; do echo x >> {ticks}; sleep 0.02; done"
    task = CommandTask(ctx, "ticker", script)
    job = Job(ctx, [task])
    results = ctx.execute(job).start()

    def size() -> int:
        return os.path.getsize(ticks) if os.path.exists(ticks) else 0

    def grows(within: float = 5.0) -> bool:
        before, deadline = size(), time.monotonic() + within
        while time.monotonic() < deadline:
            if size() > before:
                return True
            time.sleep(0.02)
        return False

    assert grows(10), "the command did not start"
    assert ctx.stop_task(task) is True
    # stopped: after a moment to settle, the file no longer grows
    deadline = time.monotonic() + 5
    while True:
        before = size()
        time.sleep(0.2)
        if size() == before:
            break
        assert time.monotonic() < deadline, "the command kept running after stop_task"
    assert ctx.continue_task(task) is True
    assert grows(), "the command did not resume after continue_task"
    threading.Timer(0.05, job.cancel).start()
    with pytest.raises(JobCancelled):
        list(results)
    with pytest.raises(RuntimeError, match="not running"):
        ctx.stop_task(task)
