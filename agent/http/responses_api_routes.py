"""The OpenAI Responses API, mounted at ``/v1``: ``POST /responses`` (stateless).

A request is translated into a chat-completions request (``responses_api_schemas.to_chat``) and runs
on that path (``agent.http.turns``): same chat template, tools, sampling and model turn. What a
caller may rely on:

- the answer is a ``response`` object whose ``output`` holds at most one ``message`` item (its
  ``output_text``) followed by one ``function_call`` item per tool call; ``status`` is ``completed``,
  or ``incomplete`` with ``incomplete_details.reason: "max_output_tokens"`` when the token budget or
  the context ran out; ``usage`` counts prompt and generated tokens exactly; ``store`` is false;
- a stream is the Responses event sequence, each event with its ``sequence_number``:
  ``response.created``, ``response.in_progress``; for the text ``response.output_item.added``,
  ``response.content_part.added``, ``response.output_text.delta``…, ``response.output_text.done``,
  ``response.content_part.done``, ``response.output_item.done``; for each call
  ``response.output_item.added``, ``response.function_call_arguments.delta``,
  ``response.function_call_arguments.done``, ``response.output_item.done``; then
  ``response.completed`` (or ``response.incomplete``). An engine error after the headers is a
  ``response.failed`` event;
- errors are OpenAI-shaped, as on every other ``/v1`` route.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from quart import Blueprint, Response

from agent.http import sse
from agent.http.body import read_body
from agent.http.errors import from_exception
from agent.http.replies import json_response
from agent.http.responses_api_schemas import ResponsesRequest, to_chat
from agent.http.strict import decode_strict
from agent.http.turns import Finished, TextDelta, ToolCall, ToolCallDelta, Turn, TurnEvent, prepare

blueprint = Blueprint("responses_api", __name__)


@blueprint.post("/responses")
async def create_response() -> Response:
    req = decode_strict(await read_body(), ResponsesRequest, "the Responses API")
    chat = to_chat(req)
    turn = await prepare(chat, param="input")
    answer = _Answer(req, turn.model)
    if req.stream:
        return sse.event_stream(_stream(turn, answer), stalled=lambda message: b"event: error\n" + sse.event({
            "type": "error", "code": "slow_reader", "message": message, "param": None}))
    async for event in turn.events():
        answer.add(event)
    return json_response(answer.response())


@dataclass
class _Answer:
    """The response object being built, event by event."""

    req: ResponsesRequest
    model: str
    id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    message_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    created_at: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    finished: Finished | None = None

    def add(self, event: TurnEvent) -> None:
        if isinstance(event, TextDelta):
            self.text.append(event.text)
        elif isinstance(event, ToolCall):
            self.calls.append(self.call_item(event))
        elif isinstance(event, Finished):
            self.finished = event

    def call_item(self, event: ToolCall) -> dict[str, Any]:
        return {"type": "function_call", "id": f"fc_{uuid.uuid4().hex}", "call_id": event.call.id,
                "name": event.call.name, "arguments": event.call.arguments, "status": "completed"}

    def message_item(self, status: str = "completed") -> dict[str, Any]:
        content = [self.text_part()] if status == "completed" else []
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content}

    def text_part(self, text: str | None = None) -> dict[str, Any]:
        return {"type": "output_text", "text": "".join(self.text) if text is None else text,
                "annotations": [], "logprobs": []}

    def output(self) -> list[dict[str, Any]]:
        items = [self.message_item()] if self.text or not self.calls else []
        return items + self.calls

    def response(self, status: str | None = None) -> dict[str, Any]:
        """The response object; ``status`` overrides the finished one (``in_progress``, ``failed``)."""
        req, done = self.req, self.finished
        if status is None:
            status = "incomplete" if done is not None and done.reason == "length" else "completed"
        fmt = req.text.format if req.text is not None and req.text.format is not None else None
        body: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": None, "model": self.model,
            "output": self.output() if status in ("completed", "incomplete") else [],
            "parallel_tool_calls": req.parallel_tool_calls is not False, "previous_response_id": None,
            "reasoning": {"effort": req.reasoning.effort if req.reasoning else None,
                          "summary": req.reasoning.summary if req.reasoning else None},
            "service_tier": req.service_tier or "default", "store": False,
            "temperature": req.temperature, "top_p": req.top_p,
            "text": {"format": msgspec.to_builtins(fmt) if fmt is not None else {"type": "text"}},
            "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
            "tools": [msgspec.to_builtins(t) for t in req.tools or ()], "truncation": "disabled",
            "usage": None, "user": req.user, "metadata": req.metadata or {},
        }
        if done is not None and status in ("completed", "incomplete"):
            body["usage"] = {
                "input_tokens": done.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": done.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": done.prompt_tokens + done.completion_tokens,
            }
        return body


class _Events:
    """Numbers the events of one stream."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\n" + sse.event(payload)


async def _stream(turn: Turn, answer: _Answer) -> AsyncIterator[bytes]:
    """The SSE body (see the module docstring)."""
    ev = _Events()
    yield ev("response.created", response=answer.response("in_progress"))
    yield ev("response.in_progress", response=answer.response("in_progress"))
    index = 0
    text_open = False
    msg = answer.message_id
    streamed: dict[str, tuple[str, int]] = {}  # call id -> (item id, output_index) of calls streamed as generated
    current: tuple[str, int] | None = None

    def close_text() -> list[bytes]:
        text = "".join(answer.text)
        return [
            ev("response.output_text.done", item_id=msg, output_index=0, content_index=0, text=text, logprobs=[]),
            ev("response.content_part.done", item_id=msg, output_index=0, content_index=0, part=answer.text_part()),
            ev("response.output_item.done", output_index=0, item=answer.message_item()),
        ]

    try:
        async for event in turn.events():
            answer.add(event)
            if isinstance(event, TextDelta):
                if not text_open:
                    yield ev("response.output_item.added", output_index=0, item=answer.message_item("in_progress"))
                    yield ev("response.content_part.added", item_id=msg, output_index=0, content_index=0,
                             part=answer.text_part(""))
                    text_open, index = True, 1
                yield ev("response.output_text.delta", item_id=msg, output_index=0, content_index=0,
                         delta=event.text, logprobs=[])
            elif isinstance(event, ToolCallDelta):
                delta = event.delta
                if delta.id is not None:
                    if text_open:
                        for chunk in close_text():
                            yield chunk
                        text_open = False
                    current = streamed[delta.id] = (f"fc_{uuid.uuid4().hex}", index)
                    yield ev("response.output_item.added", output_index=index, item={
                        "type": "function_call", "id": current[0], "call_id": delta.id, "name": delta.name,
                        "arguments": "", "status": "in_progress"})
                    index += 1
                if delta.arguments and current is not None:
                    yield ev("response.function_call_arguments.delta", item_id=current[0], output_index=current[1],
                             delta=delta.arguments)
            elif isinstance(event, ToolCall) and event.call.id in streamed:
                item = answer.calls[-1]
                item["id"], at = streamed[event.call.id]
                yield ev("response.function_call_arguments.done", item_id=item["id"], output_index=at,
                         name=item["name"], arguments=item["arguments"])
                yield ev("response.output_item.done", output_index=at, item=item)
            elif isinstance(event, ToolCall):
                if text_open:
                    for chunk in close_text():
                        yield chunk
                    text_open = False
                item = answer.calls[-1]
                yield ev("response.output_item.added", output_index=index,
                         item={**item, "arguments": "", "status": "in_progress"})
                yield ev("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                         delta=item["arguments"])
                yield ev("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                         name=item["name"], arguments=item["arguments"])
                yield ev("response.output_item.done", output_index=index, item=item)
                index += 1
            elif isinstance(event, Finished):
                if not text_open and not answer.calls and not streamed:  # an empty answer is still one (empty) message
                    yield ev("response.output_item.added", output_index=0, item=answer.message_item("in_progress"))
                    yield ev("response.content_part.added", item_id=msg, output_index=0, content_index=0,
                             part=answer.text_part(""))
                    text_open = True
                if text_open:
                    for chunk in close_text():
                        yield chunk
                final = answer.response()
                yield ev("response.completed" if final["status"] == "completed" else "response.incomplete",
                         response=final)
    except Exception as exc:
        error = from_exception(exc)
        failed = answer.response("failed")
        failed["error"] = {"code": error.code or "server_error", "message": error.message}
        yield ev("response.failed", response=failed)
    finally:
        turn.release()
