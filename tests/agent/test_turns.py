"""A model's turn queue (``agent.pool.turns``) on a real event loop: one holder, FIFO, cancelled
waiters leave, and a turn handed to a waiter that gives up is passed on, never lost."""

from __future__ import annotations

import asyncio

import pytest

from agent.pool.turns import TurnQueue

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def holder(turns: TurnQueue, name: str, order: list[str], release: asyncio.Event) -> None:
    await turns.take()
    order.append(name)
    await release.wait()
    turns.done(0.5)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_holder_at_a_time_first_come_first_served() -> None:
    turns = TurnQueue()
    order: list[str] = []
    releases = {name: asyncio.Event() for name in "abc"}
    tasks = []
    for name in "abc":
        tasks.append(asyncio.create_task(holder(turns, name, order, releases[name])))
        await settle()
    assert (order, turns.busy, len(turns)) == (["a"], True, 2)
    releases["a"].set()
    await settle()
    assert (order, len(turns)) == (["a", "b"], 1)
    releases["b"].set()
    releases["c"].set()
    await asyncio.gather(*tasks)
    assert (order, turns.busy, len(turns)) == (["a", "b", "c"], False, 0)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    turns = TurnQueue()
    await turns.take()
    waiter = asyncio.create_task(turns.take())
    await settle()
    assert len(turns) == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(turns) == 0
    turns.done(0.1)
    assert not turns.busy


async def test_a_turn_handed_to_a_waiter_that_gives_up_goes_to_the_next() -> None:
    turns = TurnQueue()
    await turns.take()
    first = asyncio.create_task(turns.take())
    await settle()
    second = asyncio.create_task(turns.take())
    await settle()
    turns.done(0.1)  # the turn is now first's, but first is cancelled before it runs
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert turns.busy and len(turns) == 0


async def test_refused_waiters_raise_the_error() -> None:
    turns = TurnQueue()
    await turns.take()
    waiter = asyncio.create_task(turns.take())
    await settle()
    turns.refuse_waiters(LookupError("gone"))
    with pytest.raises(LookupError, match="gone"):
        await waiter
    assert len(turns) == 0


async def test_retry_after_follows_the_turn_length() -> None:
    turns = TurnQueue()
    assert turns.retry_after() == 1
    for _ in range(30):
        await turns.take()
        turns.done(10.0)
    assert turns.retry_after() == 10
    for _ in range(30):
        await turns.take()
        turns.done(1000.0)
    assert turns.retry_after() == 60
