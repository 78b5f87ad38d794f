"""Fixtures of the deployment tests."""

from __future__ import annotations

import pytest

from bndl_like import ExecutionContext

from .test_cli import SECRET


@pytest.fixture
def seed_ctx():
    """A driver that is the seed: workers started by the tests join it."""
    with ExecutionContext(seeds=[], listen="tcp://127.0.0.1:0", secret=SECRET,
                          heartbeat_timeout=2.0, heartbeat_interval=0.25) as ctx:
        yield ctx
