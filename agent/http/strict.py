"""Decoding request bodies for the APIs that, like their originals (Anthropic Messages, OpenAI
Responses), refuse fields they do not know: the 400 names the field and its place in the body."""

from __future__ import annotations

import re
from typing import TypeVar

from agent.http import schemas
from agent.http.errors import ApiError, invalid_request

T = TypeVar("T")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")


def decode_strict(body: bytes, kind: type[T], api: str) -> T:
    """``schemas.decode`` (type and range checks, 400 naming the parameter), with an unknown field
    reported as ``'<path>' is not a parameter of <api> that hflocal supports``."""
    try:
        return schemas.decode(body, kind)
    except ApiError as exc:
        found = _UNKNOWN.search(exc.message)
        if found is None:
            raise
        param = f"{exc.param}.{found.group(1)}" if exc.param else found.group(1)
        raise invalid_request(f"'{param}' is not a parameter of {api} that hflocal supports "
                              "(unknown fields are refused, as the original API does)", param=param) from None
