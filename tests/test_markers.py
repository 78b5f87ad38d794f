"""The `cluster` marker: set by tests/conftest.py on the tests that start processes, and enforced
(a test left unmarked that starts a process fails), so `-m "not cluster"` is the in-process set."""

from __future__ import annotations

import pytest

from tests import conftest

pytestmark = pytest.mark.timeout(60)

INNER_CONFTEST = "from tests.conftest import *  # noqa: F401,F403  the rule and the guard under test\n"
INNER_INI = ("[pytest]\nasyncio_default_fixture_loop_scope = function\n"
             "markers =\n    cluster: starts processes\n")

INNER_TESTS = '''
import importlib
import subprocess
import sys
import threading

import pytest


def start_a_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def compute():
    return sum(range(10))


def test_in_process():
    assert compute() == 45


def test_through_a_helper():
    start_a_process()


def test_uses_a_peer(spawn_peer):
    pass


def hidden_run():  # starts a process, hidden from the rule
    python = getattr(sys, "exec" + "utable")
    return getattr(importlib.import_module("subpro" + "cess"), "run")([python, "-c", "pass"], check=True)


def test_unmarked_in_a_thread_it_starts():
    failed = []

    def run():
        try:
            hidden_run()
        except Exception as exc:
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    raise failed[0]


def test_unmarked_that_starts_one():
    hidden_run()


@pytest.mark.cluster
def test_marked_that_starts_one():
    hidden_run()
'''


@pytest.fixture
def inner(pytester):
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makeini(INNER_INI)
    pytester.makepyfile(test_inner=INNER_TESTS)
    return pytester


INNER_OPTIONS = ("-p", "no:timeout", "-p", "no:cacheprovider", "-p", "no:benchmark")


def test_not_cluster_selects_the_tests_that_start_no_process(inner):
    result = inner.runpytest_inprocess(*INNER_OPTIONS, "-m", "not cluster", "--collect-only", "-q")
    collected = {line.split("::")[1] for line in result.outlines if "::" in line}
    # the rule cannot see through hidden_run: those two are left to the guard
    assert collected == {"test_in_process", "test_unmarked_in_a_thread_it_starts",
                         "test_unmarked_that_starts_one"}


@pytest.mark.cluster  # the inner test marked cluster starts one
def test_an_unmarked_test_that_starts_a_process_fails(inner):
    result = inner.runpytest_inprocess(*INNER_OPTIONS, "-rA")
    result.assert_outcomes(passed=4, failed=2)
    for name in ("test_unmarked_that_starts_one", "test_unmarked_in_a_thread_it_starts"):
        result.stdout.fnmatch_lines([f"E *.ProcessStartRefused: test_inner.py::{name} started a process "
                                     "(*) but is not marked cluster*"])
        result.stdout.fnmatch_lines([f"FAILED test_inner.py::{name} - *"])
    result.stdout.fnmatch_lines(["PASSED test_inner.py::test_marked_that_starts_one"])


@pytest.mark.parametrize("module, name, starts", [
    ("tests.execute.test_scheduler", "test_random_jobs_always_end", False),
    ("tests.rmi.test_protocol", "test_encode_small_frame_layout", False),
    # ExecutionContext(workers=1): the embedded default starts a local cluster
    ("tests.execute.test_local_lifecycle", "test_the_embedded_default_returns_with_its_workers_connected",
     True),
    # a helper imported inside the test, from another test module, starts the supervisor
    ("tests.execute.test_task_output", "test_a_supervised_cluster_forwards_when_the_driver_asks", True),
    ("tests.profile.test_demo", "test_demo_prints_the_top_of_the_cpu_profile", True),
])
def test_the_rule_on_tests_of_this_suite(module, name, starts):
    function = getattr(pytest.importorskip(module), name, None)
    if function is None:
        pytest.skip(f"{module}.{name} is gone")
    assert conftest._starts_processes(function) is starts
