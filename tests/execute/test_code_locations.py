"""Code that cloudpickle sends by value (a script's, a notebook's, a nested function) keeps
its file and line on the workers: in remote tracebacks, the CPU profile and the memory
profile, with every supported cloudpickle version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

import pytest

from bndl_like import FuncTask, Job

pytestmark = pytest.mark.timeout(120)

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "code_location_driver.py")
# the oldest supported, the last before 3.1.3, and 3.1.3 (which writes "<dynamic-code>")
CLOUDPICKLE_VERSIONS = ("2.1.0", "3.0.0", "3.1.3")


def line_of(path: str, marker: str) -> int:
    with open(path, encoding="utf-8") as f:
        return next(i for i, line in enumerate(f, 1) if marker in line)


def by_value():
    """Task functions nested here: no pickler can import them, cloudpickle sends their code."""
    def fail(text):
        return int(text)  # FAILS HERE

    def spin(n):  # SPINS HERE
        total = 0
        for i in range(n):
            total += i * i
        return total

    def hold(n):
        sys.held_by_code_location_test = bytearray(n)  # ALLOCATES HERE
        return n

    return fail, spin, hold


def test_the_remote_frame_of_code_sent_by_value_names_its_file_and_line(ctx):
    fail, _, _ = by_value()
    with pytest.raises(ValueError) as info:
        list(ctx.execute(Job(ctx, [FuncTask(ctx, "bad", fail, ("x",))]), progress=False))
    remote = traceback.extract_tb(info.value.__traceback__)
    assert [(f.filename, f.lineno, f.name) for f in remote][-1:] == \
        [(__file__, line_of(__file__, "# FAILS HERE"), "fail")]
    assert remote[-1].line == "return int(text)  # FAILS HERE"  # the driver shows the line
    assert f'File "{__file__}", line {line_of(__file__, "# FAILS HERE")}, in fail' \
        in info.value.remote_traceback


def drop_held() -> None:
    vars(sys).pop("held_by_code_location_test", None)


def test_profiles_name_the_file_and_line_of_code_sent_by_value(ctx):
    _, spin, hold = by_value()
    with ctx.cpu_profiling:
        ctx.run_function(spin, 20_000)
    assert [(s.filename, s.lineno) for s in ctx.cpu_profiling.get_stats() if s.name == "spin"] == \
        [(__file__, line_of(__file__, "# SPINS HERE"))]
    ctx.memory_profiling.start()
    try:
        ctx.run_function(hold, 4 << 20)
        stats = ctx.memory_profiling.take_snapshot().statistics("lineno")
    finally:
        ctx.memory_profiling.stop()
        ctx.run_each_worker(drop_held)
    big = [(s.filename, s.lineno, s.source) for s in stats if s.size >= 4 << 20]
    assert big == [(__file__, line_of(__file__, "# ALLOCATES HERE"),
                    "sys.held_by_code_location_test = bytearray(n)  # ALLOCATES HERE")]


@pytest.fixture(scope="session")
def cloudpickle_dirs(tmp_path_factory):
    """``{version: directory}``: each cloudpickle version installed on its own (pure Python)."""
    base = tmp_path_factory.mktemp("cloudpickle")
    dirs = {}
    for version in CLOUDPICKLE_VERSIONS:
        target = base / version
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                               "--disable-pip-version-check", "--target", str(target),
                               f"cloudpickle=={version}"], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            pytest.skip(f"pip could not install cloudpickle=={version}: {done.stderr.strip()[-300:]}")
        dirs[version] = str(target)
    return dirs


@pytest.mark.timeout(180)
@pytest.mark.parametrize("version", CLOUDPICKLE_VERSIONS)
def test_code_locations_survive_every_supported_cloudpickle(cloudpickle_dirs, version):
    """A driver script and its workers with this cloudpickle first on the path: the remote
    frame, the CPU profile and the memory profile name the script's own file and lines."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [cloudpickle_dirs[version], *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run([sys.executable, DRIVER], capture_output=True, text=True, env=env,
                          timeout=90, cwd=HERE)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert found["driver_cloudpickle"] == found["worker_cloudpickle"] == version
    fail_line = line_of(DRIVER, "# FAIL_LINE")
    assert found["traceback"][-1] == [DRIVER, fail_line, "fail", "return int(text)  # FAIL_LINE"]
    assert f'File "{DRIVER}", line {fail_line}, in fail' in found["remote_traceback"]
    assert found["cpu"] == [[DRIVER, line_of(DRIVER, "# SPIN_LINE"), "spin"]]
    hold_line = line_of(DRIVER, "# HOLD_LINE")
    assert found["memory"] == [[DRIVER, hold_line, open(DRIVER).read().splitlines()[hold_line - 1].strip()]]
