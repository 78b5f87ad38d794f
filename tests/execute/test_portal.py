"""The driver's portal into its event loop thread (no network, no processes)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bndl_like.execute.driver.portal import Portal, PortalError
from bndl_like.execute.driver.state import Changes, RunTable

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def portal():
    with Portal("test-portal") as portal:
        yield portal
    assert not portal.thread.is_alive()


def test_run_and_call_happen_on_the_loop_thread(portal):
    async def where():
        return threading.current_thread().name, asyncio.get_running_loop()

    name, loop = portal.run(where())
    assert name == "test-portal" and loop is portal.loop
    assert portal.call(lambda a, b: (a + b, threading.current_thread().name), 2, 3) == (5, "test-portal")
    # a function returning an awaitable is called on the loop thread too
    assert portal.run(lambda: where())[0] == "test-portal"


def test_errors_come_back_with_the_coroutines_frames(portal):
    async def fails():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="^boom$") as info:
        portal.run(fails())
    names = [entry.name for entry in info.traceback]
    assert "fails" in names
    assert "result" not in names  # concurrent.futures' plumbing left out


def test_a_call_from_the_loop_thread_is_refused_not_a_deadlock(portal):
    def from_the_loop():
        with pytest.raises(PortalError, match="event loop thread .* wait for itself"):
            portal.call(lambda: None)
        return "refused"

    assert portal.call(from_the_loop) == "refused"


def test_a_timeout_cancels_the_work_on_the_loop(portal):
    cancelled = threading.Event()

    async def forever():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        portal.run(forever(), timeout=0.05)
    assert cancelled.wait(5)


def test_stop_cancels_what_is_pending_and_later_calls_are_refused():
    portal = Portal("test-stop")
    started, cancelled = threading.Event(), threading.Event()

    async def forever():
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    future = portal.submit(forever())
    assert started.wait(5)
    portal.stop()
    assert cancelled.is_set() and future.cancelled()
    assert not portal.thread.is_alive() and portal.loop.is_closed()
    portal.stop()  # idempotent
    with pytest.raises(PortalError, match="has stopped"):
        portal.call(lambda: None)
    assert "stopped" in repr(portal)


def test_wrap_awaits_from_another_loop_without_blocking_it(portal):
    gate = threading.Event()

    async def on_portal():
        await asyncio.to_thread(gate.wait, 5)
        return threading.current_thread().name

    async def caller():
        ticks = 0
        task = asyncio.ensure_future(portal.wrap(on_portal()))
        while not task.done():  # the caller's loop keeps running meanwhile
            ticks += 1
            if ticks == 3:
                gate.set()
            await asyncio.sleep(0.01)
        return await task, ticks

    name, ticks = asyncio.run(caller())
    assert name == "test-portal" and ticks >= 3


def test_changes_wake_a_waiter_and_time_out_without_one(portal):
    changes = Changes()

    async def scenario():
        assert not await changes.wait(0.01)  # nothing changed
        waiter = asyncio.ensure_future(changes.wait(5))
        await asyncio.sleep(0)
        changes.notify()
        return await waiter

    assert portal.run(scenario()) is True


def test_a_run_taken_out_of_the_table_wakes_whoever_waits_for_its_end(portal):
    changes = Changes()
    runs = RunTable(changes)

    async def scenario():
        runs[7] = "run"
        assert 7 in runs and runs.get(7) == "run" and len(runs) == 1
        ended = asyncio.ensure_future(runs.wait_ended(7))
        await asyncio.sleep(0)
        assert not ended.done()
        assert runs.pop(7) == "run"
        await asyncio.wait_for(ended, 5)
        await runs.wait_ended(8)  # never in: at once
        return list(runs)

    assert portal.run(scenario()) == []
