"""Tool calls: tools reach the chat template; Hermes-style ``<tool_call>`` output becomes ``tool_calls``."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from quart import Quart

from agent.engine.types import ToolFormat
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
])
def test_parser_gives_back_anything_that_is_not_a_clean_call(text: str) -> None:
    parser = ToolCallParser()
    shown = feed_all(parser, text, 3)
    rest, calls = parser.finish()
    assert calls == [] and shown + rest == text


FORMATS = {
    "hermes": (None, CALL + CALL.replace("Paris", 'Os\\"lo')),
    "mistral": (ToolFormat("mistral", True, "[TOOL_CALLS]", "", list_body=True),
                '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                '{"name": "get_weather", "arguments": {"city": "Os\\"lo", "n": [1, {"a": "}"}]}}]'),
    "llama3": (ToolFormat("llama3", True, "<|python_tag|>", "", args_key="parameters", separator=";"),
               '{"name": "get_weather", "parameters": {"city": "Paris"}}; '
               '{"name": "get_weather", "parameters": {"city": "Os\\"lo"}}'),
    "phi4": (ToolFormat("phi4", True, "<|tool_call|>", "<|/tool_call|>", list_body=True),
             '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
             '{"name": "get_weather", "arguments": {"city": "Os\\"lo"}}]<|/tool_call|>'),
}


@pytest.mark.parametrize("size", [1, 4, 1000])
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_calls_stream_as_they_are_generated(name: str, size: int) -> None:
    fmt, text = FORMATS[name]
    parser = ToolCallParser(fmt)
    deltas = []
    for i in range(0, len(text), size):
        assert parser.feed(text[i:i + size]) == ""
        deltas += parser.deltas
    rest, calls = parser.finish()
    deltas += parser.deltas
    assert rest == "" and [c.name for c in calls] == ["get_weather", "get_weather"] and not parser.cut
    assert json.loads(calls[1].arguments)["city"] == 'Os"lo'
    for index, call in enumerate(calls):
        mine = [d for d in deltas if d.index == index]
        assert (mine[0].id, mine[0].name) == (call.id, "get_weather")
        assert all(d.id is None and d.name is None for d in mine[1:])
        assert "".join(d.arguments for d in mine) == call.arguments
    # the first call's arguments are on their way before the call is complete
    early = ToolCallParser(fmt)
    early.feed(text[:text.index("Paris") + 2])
    assert "".join(d.arguments for d in early.deltas) == '{"city": "Pa'


def test_a_call_cut_short_stays_a_call_and_says_so() -> None:
    parser = ToolCallParser()
    parser.feed(CALL[:CALL.index("Paris") + 2])
    assert [d.name for d in parser.deltas if d.name] == ["get_weather"]
    rest, calls = parser.finish()
    assert rest == "" and parser.cut and calls[0].arguments == '{"city": "Pa'


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
    streamed = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert len(streamed) > 1 and all(s["index"] == 0 for s in streamed)
    assert streamed[0]["type"] == "function" and streamed[0]["function"]["name"] == "get_weather"
    assert "".join(s["function"]["arguments"] for s in streamed) == call["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_without_tools_the_text_is_plain_content(app_for: AppFor) -> None:
    app, world = app_for()
    world.loader.script = CALL
    client = app.test_client()
    for extra in ({}, {"tools": TOOLS, "tool_choice": "none"}):
        body = await (await client.post("/v1/chat/completions", json={"messages": HI, **extra})).get_json()
        assert body["choices"][0]["message"]["content"] == CALL
        assert body["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in body["choices"][0]["message"]
