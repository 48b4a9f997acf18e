"""Answers conform to OpenAI's published schemas (``data/openai-subset.openapi.json``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from quart import Quart

from tests.http.conftest import Models
from tests.http.openapi_check import errors
from tests.http.support import World, read_stream
from tests.http.test_tool_calls import CALL, TOOLS

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

AppFor = Callable[..., tuple[Quart, World]]
HI = [{"role": "user", "content": "Where?"}]


def test_the_validator_catches_mistakes() -> None:
    good = {"id": "x", "object": "model", "created": 1, "owned_by": "me"}
    assert errors(good, "Model") == []
    assert errors({**good, "created": "yesterday"}, "Model") == ["$.created: expected integer, got str"]
    assert errors({"error": {"message": "m", "type": "t", "param": None}}, "ErrorResponse") == [
        "$.error: missing required 'code'"]


async def test_chat_answers_and_chunks(app_for: AppFor) -> None:
    app, _ = app_for()
    client = app.test_client()
    for extra in ({}, {"logprobs": True, "top_logprobs": 3, "max_tokens": 4}):
        body = await (await client.post("/v1/chat/completions", json={"messages": HI, **extra})).get_json()
        assert errors(body, "CreateChatCompletionResponse") == []
        events = await read_stream(client, "/v1/chat/completions", {
            "messages": HI, "stream": True, "stream_options": {"include_usage": True}, **extra})
        for event in events[:-1]:
            assert errors(event, "CreateChatCompletionStreamResponse") == [], event


async def test_tool_call_answers_and_chunks(app_for: AppFor) -> None:
    app, world = app_for()
    world.loader.script = CALL
    client = app.test_client()
    body = await (await client.post("/v1/chat/completions", json={"messages": HI, "tools": TOOLS})).get_json()
    assert body["choices"][0]["message"]["tool_calls"]
    assert errors(body, "CreateChatCompletionResponse") == []
    events = await read_stream(client, "/v1/chat/completions", {"messages": HI, "tools": TOOLS, "stream": True})
    for event in events[:-1]:
        assert errors(event, "CreateChatCompletionStreamResponse") == [], event


async def test_completion_answers_and_chunks(app_for: AppFor, models: Models) -> None:
    app, _ = app_for(active="rand")
    client = app.test_client()
    for extra in ({}, {"logprobs": 2}, {"echo": True}):
        payload: dict[str, Any] = {"prompt": "Hello", "max_tokens": 5, **extra}
        body = await (await client.post("/v1/completions", json=payload)).get_json()
        assert errors(body, "CreateCompletionResponse") == []
        events = await read_stream(client, "/v1/completions", {**payload, "stream": True})
        for event in events[:-1]:
            # The spec has no chunk schema for completions; chunks are answers whose finish_reason
            # is null until the last one (as OpenAI streams them).
            choices = [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in event["choices"]]
            assert errors({**event, "choices": choices}, "CreateCompletionResponse") == [], event


async def test_models_and_errors(app_for: AppFor, models: Models) -> None:
    app, _ = app_for()
    client = app.test_client()
    assert errors(await (await client.get("/v1/models")).get_json(), "ListModelsResponse") == []
    assert errors(await (await client.get(f"/v1/models/{models.a.key}")).get_json(), "Model") == []
    for response in (
        await client.get("/v1/models/none/such"),
        await client.post("/v1/chat/completions", json={"messages": HI, "temperature": 9}),
        await client.post("/v1/chat/completions", data=b"{", headers={"Content-Type": "application/json"}),
        await client.put("/v1/models"),
        await client.post("/v1/completions", json={"prompt": "x", "model": models.broken.key}),
    ):
        assert errors(await response.get_json(), "ErrorResponse") == []
