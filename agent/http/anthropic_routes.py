"""The Anthropic Messages API, mounted at ``/v1``: ``POST /messages`` and ``POST /messages/count_tokens``.

A request is translated into a chat-completions request (``anthropic_schemas.to_chat``) and runs on
that path (``agent.http.turns``): same chat template, tools, sampling and model turn. What a caller
may rely on:

- the answer is a ``message`` object; ``stop_reason`` is ``end_turn`` (eos), ``stop_sequence`` (with
  ``stop_sequence`` set to the string that matched), ``max_tokens`` or ``tool_use``; ``usage`` counts
  the prompt and generated tokens exactly;
- a stream is Anthropic's event sequence: ``message_start``, ``ping``, then per content block
  ``content_block_start`` / ``content_block_delta`` (``text_delta`` or ``input_json_delta``) /
  ``content_block_stop``, then ``message_delta`` (``stop_reason``, ``usage``) and ``message_stop``;
  a ``ping`` every few seconds while a long prompt is read; an engine error after the headers is an
  ``error`` event;
- errors on these routes are Anthropic-shaped: ``{"type": "error", "error": {"type", "message"}}``;
- ``x-api-key`` is accepted wherever ``Authorization: Bearer`` is (see ``agent.http.app``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from quart import Blueprint, Response

from agent.http import sse
from agent.http.anthropic_schemas import CountTokensRequest, MessagesRequest, to_chat
from agent.http.body import read_body
from agent.http.errors import ApiError, from_exception
from agent.http.replies import json_response
from agent.http.strict import decode_strict
from agent.http.turns import (
    TICK,
    Finished,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Turn,
    count_prompt_tokens,
    keepalive,
    prepare,
)

blueprint = Blueprint("anthropic", __name__)

API = "the Messages API"
PING_EVERY_S = 5.0
"""Seconds without output after which a stream gets a ``ping`` (clients time out idle streams)."""

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def error_payload(error: ApiError) -> dict[str, Any]:
    """Anthropic's error body for ``error`` (the message keeps naming the parameter)."""
    kind = _ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    named = error.param is None or error.param in error.message
    message = error.message if named else f"{error.param}: {error.message}"
    return {"type": "error", "error": {"type": kind, "message": message}}


@blueprint.errorhandler(Exception)
async def _anthropic_error(exc: Exception) -> Response:
    error = from_exception(exc)
    return json_response(error_payload(error), error.status, headers=error.headers)


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\n" + sse.event(payload)


@blueprint.post("/messages")
async def create_message() -> Response:
    req = decode_strict(await read_body(), MessagesRequest, API)
    turn = await prepare(to_chat(req))
    message_id = f"msg_{uuid.uuid4().hex}"
    if req.stream:
        return sse.event_stream(_stream(turn, message_id), stalled=lambda message: _event("error", {
            "type": "error", "error": {"type": "overloaded_error", "message": message}}))
    content: list[dict[str, Any]] = []
    text: list[str] = []
    finished: Finished | None = None
    async for event in turn.events():
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ToolCall):
            content.append(_tool_use(event))
        elif isinstance(event, Finished):  # the last event; a call's pieces (ToolCallDelta) are not needed here
            finished = event
    assert finished is not None
    if text:
        content.insert(0, {"type": "text", "text": "".join(text)})
    return json_response({
        "id": message_id, "type": "message", "role": "assistant", "model": turn.model, "content": content,
        "stop_reason": _stop_reason(finished), "stop_sequence": finished.stop_sequence,
        "usage": _usage(finished.prompt_tokens, finished.completion_tokens),
    })


@blueprint.post("/messages/count_tokens")
async def count_tokens() -> Response:
    """``{"input_tokens": n}``: the prompt as the model would read it (template and tools included)."""
    req = decode_strict(await read_body(), CountTokensRequest, API)
    _, tokens = await count_prompt_tokens(to_chat(req))
    return json_response({"input_tokens": tokens})


def _stop_reason(finished: Finished) -> str:
    return "stop_sequence" if finished.stop_sequence is not None else STOP_REASONS[finished.reason]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}


def _tool_use(event: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": _tool_id(event.call.id), "name": event.call.name,
            "input": _input(event.call.arguments)}


def _tool_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def _input(arguments: str) -> Any:
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def _stream(turn: Turn, message_id: str) -> AsyncIterator[bytes]:
    """The SSE body (see the module docstring)."""
    yield _event("message_start", {"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": turn.model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": _usage(len(turn.prompt_ids), 0)}})
    yield _event("ping", {"type": "ping"})
    index = 0
    text_open = False
    tool_open: str | None = None  # the call id whose tool_use block is open (its input streaming)
    streamed: set[str] = set()
    try:
        async for event in keepalive(turn.events(), PING_EVERY_S):
            if event is TICK:
                yield _event("ping", {"type": "ping"})
            elif isinstance(event, ToolCallDelta):
                delta = event.delta
                if delta.id is not None:
                    if text_open or tool_open is not None:
                        yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                        index, text_open = index + 1, False
                    tool_open = delta.id
                    streamed.add(delta.id)
                    block: dict[str, Any] = {"type": "tool_use", "id": _tool_id(delta.id), "name": delta.name,
                                             "input": {}}
                    yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                         "content_block": block})
                if delta.arguments and tool_open is not None:
                    yield _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                        "type": "input_json_delta", "partial_json": delta.arguments}})
            elif isinstance(event, ToolCall) and event.call.id in streamed:
                if tool_open == event.call.id:
                    yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                    index, tool_open = index + 1, None
            elif isinstance(event, TextDelta):
                if tool_open is not None:
                    yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                    index, tool_open = index + 1, None
                if not text_open:
                    yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                         "content_block": {"type": "text", "text": ""}})
                    text_open = True
                yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "text_delta", "text": event.text}})
            elif isinstance(event, ToolCall):
                if text_open:
                    yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                    index, text_open = index + 1, False
                block = _tool_use(event)
                yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                     "content_block": {**block, "input": {}}})
                yield _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                    "type": "input_json_delta", "partial_json": msgspec.json.encode(block["input"]).decode()}})
                yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                index += 1
            elif isinstance(event, Finished):
                if text_open or tool_open is not None:
                    yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                yield _event("message_delta", {
                    "type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(event), "stop_sequence": event.stop_sequence},
                    "usage": {"output_tokens": event.completion_tokens}})
                yield _event("message_stop", {"type": "message_stop"})
    except Exception as exc:
        yield _event("error", error_payload(from_exception(exc)))
    finally:
        turn.release()
