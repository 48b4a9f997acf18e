"""``agent.http.sse.decoupled``: a stream's body runs ahead of its reader, within a bounded buffer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from agent.http.sse import decoupled, event

pytestmark = pytest.mark.anyio


class Body:
    """A generator of ``count`` events that records how far it got and whether its ``finally`` ran
    (where the routes give the model's turn back)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.made = 0
        self.ended = asyncio.Event()

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            for n in range(self.count):
                await asyncio.sleep(0)
                self.made += 1
                yield event({"n": n, "pad": "x" * 200})
        finally:
            self.ended.set()


async def test_the_body_ends_before_the_reader_reads_on() -> None:
    body = Body(200)
    stream = decoupled(body(), limit=1 << 20, stall_s=60)
    first = await anext(stream)
    await asyncio.wait_for(body.ended.wait(), 30)  # the reader has taken one chunk only
    assert body.made == 200
    rest = [chunk async for chunk in stream]
    events = (first + b"".join(rest)).split(b"\n\n")[:-1]
    assert [msgspec.json.decode(e[6:])["n"] for e in events] == list(range(200))


async def test_a_reader_that_stops_reading_is_cut_after_stall_s() -> None:
    body = Body(10_000)
    stream = decoupled(body(), limit=4096, stall_s=0.05)
    await anext(stream)
    await asyncio.wait_for(body.ended.wait(), 30)  # stopped, not finished: the buffer stayed full
    assert body.made < 100
    rest = b"".join([chunk async for chunk in stream]).split(b"\n\n")[:-1]
    last = msgspec.json.decode(rest[-1][6:])
    assert last["error"]["code"] == "slow_reader" and "4096 bytes" in last["error"]["message"]
    assert all(b'"n":' in e for e in rest[:-1])


async def test_a_reader_that_goes_away_stops_the_body() -> None:
    body = Body(10_000)
    stream = decoupled(body(), limit=4096, stall_s=60)
    await anext(stream)
    await stream.aclose()  # what Quart does when the client disconnects
    assert body.ended.is_set() and body.made < 10_000


async def test_an_error_in_the_body_reaches_the_reader() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise RuntimeError("engine broke")

    stream = decoupled(failing())
    with pytest.raises(RuntimeError, match="engine broke"):
        async for _ in stream:
            pass
