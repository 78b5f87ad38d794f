"""The scheduler core under a simulated cluster (benchmarks/scale.py, small and seeded): every
shape of job ends, with worker losses, holds, failures and failed fetches on the way. The
simulation asserts as it plays that no task runs twice at once, that no worker is handed more
than its slots nor runs more than its concurrency, and that no task goes to a worker it forbids."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "benchmarks", "scale.py")


def _load_scale():
    """benchmarks/scale.py as a module of its own name (the benchmarks are no package)."""
    name = "bndl_like_bench_scale"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses look their module up while the class is made)
    spec.loader.exec_module(module)
    return module


scale = _load_scale()
NAMES = scale.worker_names(7)


def play(shape: str, seed: int, trouble, *, n: int = 300, concurrency: int = 2, prefetch: int = 1):
    job = scale.make_job(shape, n, NAMES, seed)
    sim = scale.ClusterSim(job, NAMES, concurrency=concurrency, prefetch=prefetch, trouble=trouble,
                           seed=seed, check_every=10)
    result = sim.run()  # asserts the rules as it goes, and the outcome
    sim.sched.validate_state()
    return sim, result


@pytest.mark.parametrize("shape", scale.SHAPES)
@pytest.mark.parametrize("seed", [1, 2])
def test_every_shape_ends_done_through_losses_holds_and_failures(shape, seed):
    trouble = scale.Trouble(fail_rate=0.05, depfail_rate=0.05, losses=2, holds=2)
    sim, result = play(shape, seed, trouble)
    assert result.outcome == "done" and result.counts["done"] == 300
    assert result.counts["failed_attempts"] == result.counts["retried"] > 0
    assert len(sim.incarnations) == 7 + 2, "two workers were lost (and came back)"
    assert result.runs >= 300 + result.counts["retried"]
    if sim.job.edges:  # failed fetches (and losses) made outputs run again
        assert result.counts["dependencies_lost"] > 0


def test_take_backs_are_answered_and_runs_taken_back_run_again():
    # one slow slot per worker and deep prefetch: held workers give back what they had not started
    trouble = scale.Trouble(fail_rate=0.0, depfail_rate=0.0, losses=0, holds=3)
    sim, result = play("independent", 3, trouble, concurrency=1, prefetch=3)
    assert result.outcome == "done"
    assert result.counts["taken_back"] > 0
    assert result.runs == 300 + result.counts["taken_back"]


def test_dag_forbidden_workers_are_never_used():
    sim, result = play("dag", 4, scale.Trouble(losses=1, holds=1), n=400)
    assert sim.job.forbidden, "the random DAG forbids some workers"
    assert result.outcome == "done"  # (every RunTask was checked against the forbidden workers)


def test_tasks_failing_on_every_attempt_fail_the_job():
    sim, result = play("tree", 5, scale.Trouble(doomed=1))
    assert result.outcome == "failed"
    assert sim.end.task_id in sim.doomed and isinstance(sim.end.error, RuntimeError)
    assert result.counts["failed_attempts"] >= 2


def test_the_simulation_catches_a_scheduler_that_breaks_a_rule():
    """A check of the checks: a scheduler that hands a task out twice is caught."""
    job = scale.make_job("independent", 50, NAMES)
    sim = scale.ClusterSim(job, NAMES, trouble=scale.Trouble(0, 0, 0, 0, 0))
    sched = sim.build()
    original = sched.start

    def start_twice():
        out = original()
        return out + [out[0]]  # the first RunTask again

    sched.start = start_twice
    with pytest.raises(AssertionError, match="handed to"):
        sim.run()


def test_every_failure_is_retried_once_then_succeeds():
    sim, result = play("chain", 6, scale.Trouble(fail_rate=0.2, depfail_rate=0, losses=0, holds=0), n=60)
    assert result.outcome == "done" and result.counts["retried"] == len(sim.failed_once) > 0
    assert result.runs == 60 + len(sim.failed_once)
