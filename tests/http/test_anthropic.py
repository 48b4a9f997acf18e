"""The Anthropic Messages API (``/v1/messages``): shapes, the stream's event sequence, tools, stop
reasons, errors in Anthropic's shape, ``x-api-key``, count_tokens; and the real ``anthropic`` client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import pytest
from quart import Quart

from agent.http.turns import matched_stop
from agent.settings import HttpSettings
from tests.http.conftest import REPLY_A, Models
from tests.http.support import LiveServer, World

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

AppFor = Callable[..., tuple[Quart, World]]
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {"name": "get_weather", "description": "Current weather",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


async def post(app: Quart, body: dict[str, Any], path: str = "/v1/messages",
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    response = await app.test_client().post(path, json=body, headers=headers or {})
    return response.status_code, json.loads(await response.get_data())


async def stream(app: Quart, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """(event name, payload) of every SSE event of a streamed answer."""
    response = await app.test_client().post("/v1/messages", json={**body, "stream": True})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for block in (await response.get_data(as_text=True)).strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        payload = json.loads(data_line[6:])
        assert payload["type"] == name_line[7:]
        events.append((name_line[7:], payload))
    return events


async def test_message_shape_and_usage(app_for: AppFor, models: Models) -> None:
    app, _ = app_for()
    status, body = await post(app, {"model": models.a.key, "max_tokens": 64, "messages": HI})
    assert status == 200, body
    assert body["type"] == "message" and body["role"] == "assistant" and body["id"].startswith("msg_")
    assert body["model"] == models.a.key
    assert body["content"] == [{"type": "text", "text": REPLY_A}]
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    prompt = models.tiny_a.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert body["usage"] == {"input_tokens": len(prompt), "output_tokens": len(models.tiny_a.reply_ids or ())}


async def test_system_blocks_and_turns_reach_the_template(app_for: AppFor, models: Models) -> None:
    app, _ = app_for()
    request = {"max_tokens": 64, "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
               "messages": [*HI, {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                            {"role": "user", "content": [{"type": "text", "text": "Again", "cache_control": {"type": "ephemeral"}}]}],
               "metadata": {"user_id": "u1"}, "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
               "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}}
    status, counted = await post(app, {k: v for k, v in request.items() if k not in ("max_tokens", "metadata")},
                                 "/v1/messages/count_tokens")
    assert status == 200, counted
    text = ("<|im_start|>system\nBe brief.\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n")
    assert counted == {"input_tokens": len(models.tiny_a.encode(text))}
    status, body = await post(app, request)
    assert status == 200 and body["usage"]["input_tokens"] == counted["input_tokens"]


async def test_stream_event_sequence(app_for: AppFor, models: Models) -> None:
    app, _ = app_for()
    events = await stream(app, {"max_tokens": 64, "messages": HI})
    names = [name for name, _ in events]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    text = "".join(p["delta"]["text"] for n, p in events if n == "content_block_delta")
    assert text == REPLY_A
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == len(models.tiny_a.reply_ids or ())


async def test_max_tokens_and_stop_sequences(app_for: AppFor) -> None:
    app, _ = app_for()
    status, body = await post(app, {"max_tokens": 3, "messages": HI})
    assert status == 200 and body["stop_reason"] == "max_tokens" and body["usage"]["output_tokens"] == 3
    status, body = await post(app, {"max_tokens": 64, "messages": HI, "stop_sequences": ["zzz", "capital"]})
    assert body["stop_reason"] == "stop_sequence" and body["stop_sequence"] == "capital", body
    assert body["content"] == [{"type": "text", "text": REPLY_A.split("capital")[0]}]


def test_matched_stop_follows_the_engine_rule() -> None:
    assert matched_stop(["b c", "c"], "a b c d") == "b c"  # completes at the same place, starts first
    assert matched_stop(["world", "lo"], "hello world") == "lo"
    assert matched_stop(["x"], "hello") is None


async def test_tool_use_round_trip_and_stream(app_for: AppFor) -> None:
    app, world = app_for()
    world.loader.script = "Let me look. " + CALL
    request = {"max_tokens": 64, "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER]}
    status, body = await post(app, request)
    assert status == 200, body
    assert body["stop_reason"] == "tool_use"
    text, call = body["content"]
    assert text == {"type": "text", "text": "Let me look. "}
    assert call["type"] == "tool_use" and call["id"].startswith("toolu_")
    assert call["name"] == "get_weather" and call["input"] == {"city": "Paris"}

    events = await stream(app, request)
    starts = [p for n, p in events if n == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"]
    assert [s["index"] for s in starts] == [0, 1]
    assert starts[1]["content_block"]["input"] == {} and starts[1]["content_block"]["name"] == "get_weather"
    partial = "".join(p["delta"]["partial_json"] for n, p in events
                      if n == "content_block_delta" and p["delta"]["type"] == "input_json_delta")
    assert json.loads(partial) == {"city": "Paris"}
    # the input streams as it is generated, not in one piece at the end
    assert len([p for n, p in events if n == "content_block_delta" and p["delta"]["type"] == "input_json_delta"]) > 1
    assert [p["index"] for n, p in events if n == "content_block_stop"] == [0, 1]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    world.loader.script = "It is sunny."
    follow = {**request, "messages": [*request["messages"], {"role": "assistant", "content": [call]},
                                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                                                    "content": "sunny", "is_error": False}]}]}
    status, body = await post(app, follow)
    assert status == 200 and body["content"] == [{"type": "text", "text": "It is sunny."}]


@pytest.mark.parametrize(("tools", "choice", "expected"), [
    ([], {"type": "any"}, 400), ([WEATHER], {"type": "tool", "name": "nope"}, 400),
    ([WEATHER], {"type": "any"}, 200), ([WEATHER], {"type": "auto"}, 200), ([WEATHER], {"type": "none"}, 200),
    ([WEATHER], {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}, 200),
])
async def test_tool_choice_is_checked(app_for: AppFor, tools: list[Any], choice: dict[str, Any], expected: int) -> None:
    app, world = app_for()
    world.loader.script = CALL
    status, body = await post(app, {"max_tokens": 64, "messages": HI, "tools": tools, "tool_choice": choice})
    assert status == expected, body
    if choice["type"] == "none":  # no tools offered: the text is not parsed as a call
        assert body["stop_reason"] == "end_turn" and body["content"] == [{"type": "text", "text": CALL}]


@pytest.mark.parametrize(("patch", "param"), [
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking.type"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]}, "messages[0].content[0]"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}, "context_management.edits[0].type"),
    ({"temperature": 1.5}, "temperature"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
])
async def test_unsupported_fields_get_anthropic_shaped_400s(app_for: AppFor, patch: dict[str, Any], param: str) -> None:
    app, _ = app_for()
    status, body = await post(app, {"max_tokens": 64, "messages": HI, **patch})
    assert status == 400, body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert param in body["error"]["message"]


async def test_api_key_as_x_api_key_or_bearer(app_for: AppFor) -> None:
    app, _ = app_for(http=HttpSettings(api_key="sekret"))
    request = {"max_tokens": 8, "messages": HI}
    status, body = await post(app, request)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert (await post(app, request, headers={"x-api-key": "wrong"}))[0] == 401
    assert (await post(app, request, headers={"x-api-key": "sekret"}))[0] == 200
    assert (await post(app, request, headers={"Authorization": "Bearer sekret"}))[0] == 200
    models = await app.test_client().get("/v1/models", headers={"x-api-key": "sekret"})
    assert models.status_code == 200


async def test_unknown_model_is_a_not_found_error(app_for: AppFor) -> None:
    app, _ = app_for()
    status, body = await post(app, {"model": "nope/nope", "max_tokens": 8, "messages": HI})
    assert status == 404 and body["error"]["type"] == "not_found_error"


# --------------------------------------------------------------------------- the real client


@pytest.fixture
def server(live: Callable[..., LiveServer]) -> LiveServer:
    return live(http=HttpSettings(api_key="sekret"))


def test_anthropic_client_messages_stream_and_tools(server: LiveServer, models: Models) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="sekret", max_retries=0)
    message = client.messages.create(model=models.a.key, max_tokens=64, messages=[{"role": "user", "content": "Hi"}])
    assert message.content[0].type == "text" and message.content[0].text == REPLY_A
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0

    with client.messages.stream(model=models.a.key, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == REPLY_A and final.content[0].text == REPLY_A and final.stop_reason == "end_turn"

    assert server.world is not None
    server.world.loader.script = CALL
    tools: Any = [WEATHER]
    message = client.messages.create(model=models.a.key, max_tokens=64, tools=tools,
                                     messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert message.stop_reason == "tool_use"
    block = message.content[-1]
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    with client.messages.stream(model=models.a.key, max_tokens=64, tools=tools,
                                messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        final = s.get_final_message()
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"city": "Paris"}

    assert client.messages.count_tokens(model=models.a.key, messages=[{"role": "user", "content": "Hi"}]).input_tokens > 0
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=models.a.key, max_tokens=64, messages=[{"role": "user", "content": "Hi"}],
                               thinking={"type": "enabled", "budget_tokens": 1024})
    assert "thinking" in str(bad.value)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
            model=models.a.key, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
