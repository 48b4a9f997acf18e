"""How every route answers with JSON: one encoder (msgspec, which also takes Structs and
dataclasses) and one content type, whatever the body's shape (OpenAI, Anthropic or ``/api``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from quart import Response

JSON = "application/json"


def json_response(value: Any, status: int = 200, *, headers: Mapping[str, str] | None = None) -> Response:
    """``value`` encoded as JSON."""
    return encoded_json_response(msgspec.json.encode(value), status, headers=headers)


def encoded_json_response(body: bytes, status: int = 200, *, headers: Mapping[str, str] | None = None) -> Response:
    """A body that is JSON already (kept, or encoded off the event loop)."""
    return Response(body, status=status, content_type=JSON, headers=dict(headers) if headers else None)
