"""Functions sent by value (a script's, a notebook's, nested ones) are pickled once for every
batch sent at once; task ids are checked plain once per job. The fallbacks: two such functions
in one batch, one too large to share, ids of every kind."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bndl_like import FuncTask, Job
from bndl_like.execute.messages import plain_key, plain_keys
from bndl_like.rmi.serialize import OUT_OF_BAND_MIN

pytestmark = pytest.mark.timeout(120)

atoms = st.one_of(st.integers(), st.text(max_size=3), st.floats(allow_nan=False), st.none(),
                  st.booleans(), st.binary(max_size=3), st.frozensets(st.integers(), max_size=2))
keys = st.recursive(atoms, lambda inner: st.tuples(inner, inner) | st.tuples(inner), max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(keys, max_size=12))
def test_plain_keys_says_what_plain_key_says_of_every_id(ids):
    assert plain_keys(ids) == all(map(plain_key, ids))


def test_plain_keys_of_tuples_of_one_length_looks_at_every_position():
    assert plain_keys([(1, "a"), (2, "b")]) and plain_keys([(1, (2, 3)), (4, (5, 6))])
    assert not plain_keys([(1, "a"), (2, frozenset())])
    assert not plain_keys([(1, (2, object()))])
    assert not plain_keys([(1,), (2, 3), (frozenset(),)])


def nested():
    """Functions no pickler can import: cloudpickle sends their code."""
    def triple(x):
        return 3 * x

    def label(x):
        return f"<{x}>"

    table = np.arange(OUT_OF_BAND_MIN, dtype=np.uint8)  # closed over: too large to share

    def look_up(i):
        return int(table[i])

    return triple, label, look_up


def test_a_function_sent_by_value_runs_in_every_batch_of_a_job(ctx):
    triple, _, _ = nested()
    tasks = [FuncTask(ctx, i, triple, (i,)) for i in range(400)]
    assert list(ctx.execute(Job(ctx, tasks), progress=False)) == [3 * i for i in range(400)]


def test_two_functions_by_value_in_one_job_and_one_too_large_to_share(ctx):
    triple, label, look_up = nested()
    tasks = [FuncTask(ctx, ("t", i), triple, (i,)) for i in range(100)]
    tasks += [FuncTask(ctx, ("l", i), label, (i,)) for i in range(100)]
    tasks += [FuncTask(ctx, ("k", i), look_up, (i,)) for i in range(100)]
    results = list(ctx.execute(Job(ctx, tasks), progress=False))
    assert results == [3 * i for i in range(100)] + [f"<{i}>" for i in range(100)] + list(range(100))
