"""Server-sent events as OpenAI streams them: ``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``.

``event_stream`` wraps an async generator of bytes in a Quart response with the response timeout
off (a long answer is not an error) and buffering disabled for proxies. When the client goes away
Quart cancels the task iterating the generator: the ``CancelledError`` surfaces at its ``await``,
so its ``finally`` blocks (which stop the generation) run.

The generator does not run at the client's pace: a task drives it into a bounded buffer that the
response drains (``decoupled``). So the generation — and the model's turn it holds — ends when the
model is done, not when a slow client has read the last byte, and the next request gets the model
then. What a caller may rely on:

- Up to ``BUFFER_BYTES`` of a stream may wait for the client; the rest of the generation waits
  while the buffer is full.
- A buffer that stays full for ``STALL_S`` seconds (the client reads nothing) ends the generation:
  the turn is given back, the client gets what was buffered, then one error event (in the route's shape,
  ``slow_reader``), and the stream ends.
- A client that disconnects still stops the generation within a step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from quart import Response

DONE = b"data: [DONE]\n\n"
BUFFER_BYTES = 8 * 1024 * 1024
"""Bytes of one stream that may wait for a slow client while the generation goes on."""
STALL_S = 30.0
"""Seconds a full buffer may wait for the client before the generation is stopped."""
_encoder = msgspec.json.Encoder()


def event(payload: Any) -> bytes:
    """One SSE event carrying ``payload`` as compact JSON."""
    return b"data: " + _encoder.encode(payload) + b"\n\n"


def event_stream(body: AsyncIterator[bytes], *, stalled: Callable[[str], bytes] | None = None) -> Response:
    """``body`` as an SSE response; ``stalled`` makes the event that ends a stream whose client
    stopped reading from its message, in the route's own error shape (default: OpenAI's)."""
    response = Response(
        decoupled(body, stalled=stalled or stall_event),
        status=200,
        content_type="text/event-stream; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.timeout = None
    return response


def stall_message(limit: int, stall_s: float) -> str:
    return f"the client read too slowly: {limit} bytes waited {stall_s:g} s unread, so the generation was stopped"


def stall_event(message: str) -> bytes:
    """The event that ends a stream whose client stopped reading (OpenAI's error shape)."""
    return event({"error": {"message": message, "type": "server_error", "param": None, "code": "slow_reader"}})


async def decoupled(body: AsyncIterator[bytes], limit: int = BUFFER_BYTES, stall_s: float = STALL_S, *,
                    stalled: Callable[[str], bytes] = stall_event) -> AsyncIterator[bytes]:
    """``body``'s chunks, produced by a task of their own ahead of the reader (see the module
    docstring). Each step yields everything buffered so far as one chunk."""
    chunks: deque[bytes] = deque()
    buffered = 0
    ready = asyncio.Event()  # set when there is something to read or the body ended
    space = asyncio.Event()  # set when the reader took what was buffered
    ended = False
    failure: BaseException | None = None

    async def produce() -> None:
        nonlocal buffered, ended, failure
        try:
            async for chunk in body:
                if buffered >= limit:
                    space.clear()
                    try:
                        await asyncio.wait_for(space.wait(), stall_s)
                    except TimeoutError:
                        chunks.append(stalled(stall_message(limit, stall_s)))
                        return
                chunks.append(chunk)
                buffered += len(chunk)
                ready.set()
        except Exception as exc:  # handed to the reader: the response fails as it would have
            failure = exc
        finally:
            ended = True
            ready.set()
            with contextlib.suppress(Exception):
                await body.aclose()  # type: ignore[attr-defined]

    task = asyncio.ensure_future(produce())
    try:
        while chunks or not ended:
            if not chunks:
                ready.clear()
                await ready.wait()
                continue
            out = b"".join(chunks)
            chunks.clear()
            buffered = 0
            space.set()
            yield out
        if failure is not None:
            raise failure
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task
