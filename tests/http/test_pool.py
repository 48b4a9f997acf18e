"""The model pool with the real engine on tiny models: loading, turns, queues, unloading, switching."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from agent.engine.types import EngineError, SamplingParams
from agent.pool import (
    LoadTimeoutError,
    ModelLoadFailedError,
    PoolClosedError,
    QueueFullError,
    UnknownModelError,
)
from tests.http.conftest import REPLY_A, REPLY_B, Models
from tests.http.support import World

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

Worlds = Callable[..., World]
CHAT = [{"role": "user", "content": "Where?"}]


async def reply_of(world: World, name: str | None, params: SamplingParams | None = None) -> tuple[str, str]:
    async with world.pool.generation(name) as lease:
        ids = await lease.encode_chat(CHAT)
        text = "".join([step.text async for step in lease.stream(ids, params or SamplingParams())])
        return lease.key, text


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_loads_on_demand_once_and_publishes_events(worlds: Worlds, models: Models) -> None:
    world = worlds()
    assert world.pool.status().model_state == "unloaded"
    assert await reply_of(world, None) == (models.a.key, REPLY_A)
    assert await reply_of(world, models.a.model_id) == (models.a.key, REPLY_A)
    assert world.loader.loads == ["tiny-a"]
    assert world.topics() == ["model.loading", "model.ready"]
    status = world.pool.status()
    assert (status.active, status.model_state, status.loaded) == (models.a.key, "ready", [models.a.key])
    assert status.provider == "CPUExecutionProvider"


async def test_unknown_model(worlds: Worlds) -> None:
    world = worlds()
    with pytest.raises(UnknownModelError):
        await world.pool.acquire("nobody/nothing")
    no_active = worlds(active=None)
    with pytest.raises(UnknownModelError, match="No model is active"):
        await no_active.pool.acquire(None)


async def test_no_active_model_yet_says_retry(worlds: Worlds, models: Models) -> None:
    """While the agent sets a model up (the quickstart's import) or loads the first one, a request
    that names no model is told to retry (503 + Retry-After), not that no model exists."""
    world = worlds(active=None)
    world.pool.preparing = "the default model is being set up"
    with pytest.raises(LoadTimeoutError, match="No model is active yet: the default model is being set up") as info:
        await world.pool.acquire(None)
    assert info.value.retry_after >= 1
    world.pool.preparing = None
    world.loader.load_s = 0.5
    activation = asyncio.ensure_future(world.pool.activate(models.a.key))
    await until(lambda: world.pool.status().activating == models.a.key)
    with pytest.raises(LoadTimeoutError, match=f"{models.a.key} is loading"):
        await world.pool.acquire(None)
    await activation
    world.loader.load_s = 0
    assert await reply_of(world, None) == (models.a.key, REPLY_A)


async def test_concurrent_requests_share_one_load(worlds: Worlds, models: Models) -> None:
    world = worlds()
    world.loader.load_s = 0.3
    results = await asyncio.gather(*(reply_of(world, None) for _ in range(3)))
    assert results == [(models.a.key, REPLY_A)] * 3
    assert world.loader.loads == ["tiny-a"]
    assert world.topics().count("model.loading") == 1


async def test_load_wait_is_bounded_and_the_load_goes_on(worlds: Worlds) -> None:
    world = worlds(load_wait_s=0.1)
    world.loader.load_s = 0.5
    with pytest.raises(LoadTimeoutError) as info:
        await world.pool.acquire(None)
    assert info.value.retry_after >= 1
    assert world.pool.status().model_state == "loading"
    await until(lambda: world.pool.status().model_state == "ready")
    world.loader.load_s = 0
    assert (await reply_of(world, None))[1] == REPLY_A
    assert world.loader.loads == ["tiny-a"]


async def test_load_failure_is_reported_and_retried(worlds: Worlds, models: Models) -> None:
    world = worlds(active="broken")
    for _ in range(2):
        with pytest.raises(ModelLoadFailedError) as info:
            await world.pool.acquire(None)
        assert "does not exist" in info.value.message or "tiny-broken" in info.value.message
    assert world.loader.loads == ["tiny-broken", "tiny-broken"]
    failed = [e for e in world.events if world.topics()[world.events.index(e)] == "model.failed"]
    assert len(failed) == 2 and failed[0].code == "load_failed" and failed[0].message  # type: ignore[attr-defined]
    status = world.pool.status()
    assert status.model_state == "failed" and status.error and status.loaded == []


async def test_lru_unloads_the_least_recently_used_idle_model(worlds: Worlds, models: Models) -> None:
    world = worlds(max_loaded=1)
    await reply_of(world, None)
    assert await reply_of(world, models.b.key) == (models.b.key, REPLY_B)
    assert world.pool.status().loaded == [models.b.key]
    unloaded = [e for e in world.events if type(e).__name__ == "ModelUnloaded"]
    assert [(e.key, e.reason) for e in unloaded] == [(models.a.key, "lru")]  # type: ignore[attr-defined]
    await until(lambda: world.loader.closed == ["tiny-a"])
    # The active model comes back on demand.
    assert await reply_of(world, None) == (models.a.key, REPLY_A)
    assert world.pool.status().loaded == [models.a.key]


async def test_over_the_limit_the_other_model_goes_once_idle_and_the_active_one_stays(
        worlds: Worlds, models: Models) -> None:
    """All models busy: the pool goes over ``max_loaded``, then trims back to the active model
    (``agent.pool.eviction.to_trim``), not to whichever was used least recently."""
    world = worlds(max_loaded=1)
    active = await world.pool.acquire(None)
    other = await world.pool.acquire(models.b.key)  # loads although the active model is held
    assert world.pool.status().loaded == [models.a.key, models.b.key]
    active.release()  # idle now, but the other model is still in memory: the active one stays
    assert world.pool.status().loaded == [models.a.key, models.b.key]
    other.release()
    assert world.pool.status().loaded == [models.a.key]
    unloaded = [(e.key, e.reason) for e in world.events if type(e).__name__ == "ModelUnloaded"]  # type: ignore[attr-defined]
    assert unloaded == [(models.b.key, "lru")]
    await until(lambda: world.loader.closed == ["tiny-b"])


async def test_keep_alive_unloads_idle_non_active_models_only(worlds: Worlds, models: Models) -> None:
    world = worlds(keep_alive_s=0.1, max_loaded=3)
    await reply_of(world, None)
    await reply_of(world, models.b.key)
    assert set(world.pool.status().loaded) == {models.a.key, models.b.key}
    await until(lambda: world.pool.status().loaded == [models.a.key])
    unloaded = [(e.key, e.reason) for e in world.events if type(e).__name__ == "ModelUnloaded"]  # type: ignore[attr-defined]
    assert unloaded == [(models.b.key, "idle")]
    await asyncio.sleep(0.3)
    assert world.pool.status().loaded == [models.a.key]


async def test_one_generation_at_a_time_fifo_and_a_bounded_queue(worlds: Worlds) -> None:
    world = worlds(queue_size=2)
    first = await world.pool.acquire(None)
    order: list[int] = []

    async def waiter(n: int) -> None:
        async with world.pool.generation(None):
            order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(2)]
    await until(lambda: world.pool.status().queue_depth == 2)
    with pytest.raises(QueueFullError) as info:
        await world.pool.acquire(None)
    assert info.value.retry_after >= 1
    assert order == []
    first.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1]
    assert world.pool.status().queue_depth == 0 and world.pool.status().running == 0


async def test_a_cancelled_waiter_leaves_the_queue(worlds: Worlds) -> None:
    world = worlds(queue_size=1)
    first = await world.pool.acquire(None)
    waiting = asyncio.create_task(world.pool.acquire(None))
    await until(lambda: world.pool.status().queue_depth == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert world.pool.status().queue_depth == 0
    first.release()
    assert (await reply_of(world, None))[1] == REPLY_A


async def test_cancelling_a_stream_stops_the_thread_and_frees_the_turn(worlds: Worlds) -> None:
    world = worlds(active="rand")
    world.loader.step_s = 0.05
    seen = 0

    async def consume() -> None:
        nonlocal seen
        async with world.pool.generation(None) as lease:
            ids = await lease.encode_text("Hello")
            async for _ in lease.stream(ids, SamplingParams(max_tokens=200)):
                seen += 1

    task = asyncio.create_task(consume())
    await until(lambda: seen >= 3)
    world.loader.step_s = 60  # parked: the thread can now only stop by being cancelled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    world.loader.step_s = 0
    # The wait is bounded only so that a failure cannot hang the suite.
    async with asyncio.timeout(30), world.pool.generation(None) as lease:
        assert world.loader.finished == ["tiny-rand"]  # the first thread has stopped
        ids = await lease.encode_text("Hello")
        steps = [s async for s in lease.stream(ids, SamplingParams(max_tokens=5))]
    assert sum(len(s.tokens) for s in steps) == 5 and steps[-1].finish_reason == "length"


async def test_steps_come_in_order_in_batches_on_a_kept_thread(worlds: Worlds) -> None:
    """A consumer that was busy gets every step made meanwhile in one batch (one wake-up of the
    loop, one SSE write), in order; and generations run on the waiting runner thread instead of
    starting a thread each (starting one blocked the event loop)."""
    world = worlds(active="rand")
    params = SamplingParams(max_tokens=12, seed=7, temperature=1.0)
    async with world.pool.generation(None) as lease:
        ids = await lease.encode_text("Hello")
        one_by_one = [s async for s in lease.stream(ids, params)]
    assert len(one_by_one) > 2
    runners = {t for t in threading.enumerate() if t.name.startswith("generate")}
    for n in range(2, 5):
        async with world.pool.generation(None) as lease:
            batches = lease.batches(ids, params)
            first = await anext(batches)
            await until(lambda n=n: len(world.loader.finished) == n)  # the thread has made every step
            rest = [batch async for batch in batches]
        assert len(rest) <= 1 and [*first, *(rest[0] if rest else [])] == one_by_one
        assert {t for t in threading.enumerate() if t.name.startswith("generate")} <= runners


async def test_a_stream_ends_with_the_engine_error_after_its_steps(worlds: Worlds) -> None:
    world = worlds(active="rand")
    world.loader.fail_after = 3
    async with world.pool.generation(None) as lease:
        ids = await lease.encode_text("Hello")
        seen = []
        with pytest.raises(EngineError, match="a test fault"):
            async for step in lease.stream(ids, SamplingParams(max_tokens=20)):
                seen.append(step)
    assert len(seen) == 3
    world.loader.fail_after = None
    assert (await reply_of(world, None))[0] == world.pool.active  # the runner thread is still usable


async def test_activate_during_traffic_loses_no_request(worlds: Worlds, models: Models) -> None:
    world = worlds(max_loaded=1)
    world.loader.step_s = 0.02
    await reply_of(world, None)
    before = [asyncio.create_task(reply_of(world, None)) for _ in range(3)]
    await until(lambda: world.pool.status().running == 1)
    activated = await world.pool.activate(models.b.key, job_id="job-1")
    after = [asyncio.create_task(reply_of(world, None)) for _ in range(2)]
    results = await asyncio.gather(*before, *after)
    assert results[:3] == [(models.a.key, REPLY_A)] * 3
    assert results[3:] == [(models.b.key, REPLY_B)] * 2
    assert activated.key == models.b.key and world.catalog.active == models.b.key
    assert world.pool.active == models.b.key
    b_events = [(topic, getattr(e, "job_id", "")) for topic, e in zip(world.topics(), world.events, strict=True)
                if getattr(e, "key", None) == models.b.key]
    assert b_events[:2] == [("model.loading", "job-1"), ("model.ready", "job-1")]
    await until(lambda: world.pool.status().loaded == [models.b.key])
    assert ("model.unloaded", models.a.key) in [(t, getattr(e, "key", "")) for t, e in zip(world.topics(), world.events, strict=True)]


async def test_activate_failure_keeps_the_previous_model(worlds: Worlds, models: Models) -> None:
    world = worlds()
    await reply_of(world, None)
    with pytest.raises(ModelLoadFailedError):
        await world.pool.activate(models.broken.key, job_id="j")
    assert world.pool.active == models.a.key and world.catalog.active == models.a.key
    assert (await reply_of(world, None))[0] == models.a.key


async def test_close_stops_generations_and_refuses_waiters(worlds: Worlds) -> None:
    world = worlds(active="rand")
    world.loader.step_s = 0.05
    lease = await world.pool.acquire(None)
    ids = await lease.encode_text("Hello")
    stream = lease.stream(ids, SamplingParams(max_tokens=200))
    await anext(stream)
    waiting = asyncio.create_task(world.pool.acquire(None))
    await until(lambda: world.pool.status().queue_depth == 1)
    await world.pool.close()
    with pytest.raises(PoolClosedError):
        await waiting
    assert world.loader.finished == ["tiny-rand"] and world.loader.closed == ["tiny-rand"]
    await stream.aclose()  # type: ignore[attr-defined]
    lease.release()
    with pytest.raises(PoolClosedError):
        await world.pool.acquire(None)
