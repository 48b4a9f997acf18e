"""Server-sent events as OpenAI streams them: ``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``.

``event_stream`` wraps an async generator of bytes in a Quart response with the response timeout
off (a long answer is not an error) and buffering disabled for proxies. When the client goes away
Quart cancels the task iterating the generator: the ``CancelledError`` surfaces at its ``await``,
so its ``finally`` blocks (which stop the generation) run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from quart import Response

DONE = b"data: [DONE]\n\n"
_encoder = msgspec.json.Encoder()


def event(payload: Any) -> bytes:
    """One SSE event carrying ``payload`` as compact JSON."""
    return b"data: " + _encoder.encode(payload) + b"\n\n"


def event_stream(body: AsyncIterator[bytes]) -> Response:
    response = Response(
        body,
        status=200,
        content_type="text/event-stream; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.timeout = None
    return response
