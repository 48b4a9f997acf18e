"""Tool calls: tools reach the chat template; Hermes-style ``<tool_call>`` output becomes ``tool_calls``."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from quart import Quart

from agent.http.tools import ToolCallParser
from tests.http.support import World, read_stream

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

AppFor = Callable[..., tuple[Quart, World]]
HI = [{"role": "user", "content": "Weather in Paris?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def feed_all(parser: ToolCallParser, text: str, size: int) -> str:
    return "".join(parser.feed(text[i:i + size]) for i in range(0, len(text), size))


@pytest.mark.parametrize("size", [1, 2, 5, 100])
def test_parser_streams_content_and_holds_back_calls(size: int) -> None:
    parser = ToolCallParser()
    shown = feed_all(parser, "Let me check. " + CALL + "\n" + CALL.replace("Paris", "Oslo"), size)
    assert shown == "Let me check. "
    rest, calls = parser.finish()
    assert rest == "" and [c.name for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert calls[0].id != calls[1].id and calls[0].id.startswith("call_")


@pytest.mark.parametrize("text", [
    "a < b and <tool but no call",
    "<tool_call>not json</tool_call>",
    "<tool_call>{\"arguments\": {}}</tool_call>",
    CALL + " and then some prose",
])
def test_parser_gives_back_anything_that_is_not_a_clean_call(text: str) -> None:
    parser = ToolCallParser()
    shown = feed_all(parser, text, 3)
    rest, calls = parser.finish()
    assert calls == [] and shown + rest == text


def test_parser_accepts_an_unclosed_last_call_at_eos() -> None:
    parser = ToolCallParser()
    parser.feed(CALL.removesuffix("</tool_call>"))
    assert [c.name for c in parser.finish()[1]] == ["get_weather"]


async def test_tool_calls_non_streaming_and_streaming(app_for: AppFor) -> None:
    app, world = app_for()
    world.loader.script = CALL
    client = app.test_client()
    response = await client.post("/v1/chat/completions", json={"messages": HI, "tools": TOOLS})
    body = await response.get_json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert body["usage"]["completion_tokens"] == (len(CALL) + 2) // 3

    events = await read_stream(client, "/v1/chat/completions", {"messages": HI, "tools": TOOLS, "stream": True})
    chunks = events[:-1]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant" and not any(d.get("content") for d in deltas)
    [streamed] = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert streamed["index"] == 0 and streamed["function"] == call["function"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_without_tools_the_text_is_plain_content(app_for: AppFor) -> None:
    app, world = app_for()
    world.loader.script = CALL
    client = app.test_client()
    for extra in ({}, {"tools": TOOLS, "tool_choice": "none"}):
        body = await (await client.post("/v1/chat/completions", json={"messages": HI, **extra})).get_json()
        assert body["choices"][0]["message"]["content"] == CALL
        assert body["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in body["choices"][0]["message"]
