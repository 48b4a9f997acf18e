"""Answer a request only once its body has arrived, so an early refusal never costs the connection.

A check that refuses a request before its route runs (a foreign ``Host``, a missing API key or
token, a bad ``Origin``) answers before reading the body. Over HTTP/1.1 Hypercorn then closes the
connection as soon as the answer is written if the client was still sending the body (h11's
"their side" is not done, so it cannot start the next request/response cycle), without a
``Connection: close`` header. A keep-alive client that sent its next request on that connection got
no answer to it at all ("Server disconnected without sending a response") — which is what made the
DNS-rebinding test fail about one run in four: the ``GET /health`` after a refused
``POST /v1/chat/completions``.

:func:`finish_body` (an ``after_request`` hook) therefore waits, briefly and within
``MAX_CONTENT_LENGTH``, for the rest of a body that nobody read; what it cannot wait for (a body
over the limit, one that does not arrive within :data:`DRAIN_TIMEOUT_S`) gets ``Connection: close``
on the answer, so the client knows to open a new connection instead of losing its next request.
A route that read its body is not slowed down: the body is complete by then.
"""

from __future__ import annotations

import asyncio

from quart import Response, request
from werkzeug.exceptions import HTTPException

DRAIN_TIMEOUT_S = 5.0
"""How long an answer waits for the unread rest of its request's body."""


async def read_body() -> bytes:
    """The whole request body as bytes (cached: a second read returns it again)."""
    return await request.get_data(True, False, False)  # positional: the overload typed ``bytes``


def _has_body() -> bool:
    length = request.content_length
    return bool(length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()


async def finish_body(response: Response) -> Response:
    """Let the request's body arrive before ``response`` goes out, or mark the connection closing."""
    if not _has_body():
        return response
    try:
        await asyncio.wait_for(request.body, timeout=DRAIN_TIMEOUT_S)
    except (TimeoutError, HTTPException):  # too slow, or over MAX_CONTENT_LENGTH (413)
        response.headers["Connection"] = "close"
    return response


__all__ = ["DRAIN_TIMEOUT_S", "finish_body", "read_body"]
