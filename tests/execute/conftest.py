"""Fixtures of the execute tests."""

from __future__ import annotations

import pytest

from bndl_like import ExecutionContext


@pytest.fixture(scope="module")
def ctx():
    with ExecutionContext.local(workers=2) as ctx:
        assert ctx.await_workers() == 2
        yield ctx
