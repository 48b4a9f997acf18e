"""The OpenAI Responses API (``/v1/responses``, stateless): shapes, the stream's event sequence, input
items, function tools, refusals; and the real ``openai`` client's ``responses.create``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from quart import Quart

from agent.settings import HttpSettings
from tests.http.conftest import REPLY_A, Models
from tests.http.support import LiveServer, World

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

AppFor = Callable[..., tuple[Quart, World]]
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


async def post(app: Quart, body: dict[str, Any]) -> tuple[int, Any]:
    response = await app.test_client().post("/v1/responses", json=body)
    return response.status_code, json.loads(await response.get_data())


async def stream(app: Quart, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = await app.test_client().post("/v1/responses", json={**body, "stream": True})
    assert response.status_code == 200
    events = []
    for block in (await response.get_data(as_text=True)).strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        payload = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {payload['type']}"
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


async def test_response_shape_and_usage(app_for: AppFor, models: Models) -> None:
    app, _ = app_for()
    status, body = await post(app, {"model": models.a.key, "input": "Hi", "metadata": {"k": "v"}})
    assert status == 200, body
    assert body["object"] == "response" and body["id"].startswith("resp_") and body["status"] == "completed"
    assert body["model"] == models.a.key and body["store"] is False and body["metadata"] == {"k": "v"}
    (message,) = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    assert [(p["type"], p["text"]) for p in message["content"]] == [("output_text", REPLY_A)]
    prompt = models.tiny_a.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    usage = body["usage"]
    assert usage["input_tokens"] == len(prompt) and usage["output_tokens"] == len(models.tiny_a.reply_ids or ())
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_items_and_instructions_render_like_chat_messages(app_for: AppFor, models: Models) -> None:
    app, world = app_for()
    world.loader.script = "ok"
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Rules."}], "id": "m1"},
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}',
         "id": "fc_1", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks"}]},
    ]
    status, body = await post(app, {"instructions": "Be brief.", "input": items,
                                    "reasoning": {"summary": "auto"}, "include": ["reasoning.encrypted_content"],
                                    "store": False, "prompt_cache_key": "k", "parallel_tool_calls": True,
                                    "client_metadata": {"session_id": "s"}})
    assert status == 200, body
    # The tiny template knows no tools: the call is written as a <tool_call> block in the assistant's
    # message and its output as a <tool_response> block from the user (hflocal's generic format).
    text = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>system\nRules.<|im_end|>\n"
            "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
            "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\nSunny.<|im_end|>\n"
            "<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n")
    assert body["usage"]["input_tokens"] == len(models.tiny_a.encode(text))


async def test_stream_event_sequence(app_for: AppFor) -> None:
    app, _ = app_for()
    events = await stream(app, {"input": "Hi"})
    types = [e["type"] for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == REPLY_A
    assert events[-4]["text"] == REPLY_A
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == REPLY_A and final["usage"]["output_tokens"] > 0
    assert {e.get("item_id") for e in events[3:-2]} == {final["output"][0]["id"]}


async def test_max_output_tokens_is_incomplete(app_for: AppFor) -> None:
    app, _ = app_for()
    status, body = await post(app, {"input": "Hi", "max_output_tokens": 2})
    assert status == 200 and body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"} and body["usage"]["output_tokens"] == 2
    events = await stream(app, {"input": "Hi", "max_output_tokens": 2})
    assert events[-1]["type"] == "response.incomplete"


async def test_function_calls(app_for: AppFor) -> None:
    app, world = app_for()
    world.loader.script = "Checking. " + CALL
    request = {"input": "Weather in Paris?", "tools": [WEATHER]}
    status, body = await post(app, request)
    assert status == 200, body
    message, call = body["output"]
    assert message["content"][0]["text"] == "Checking. "
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["call_id"].startswith("call_")
    assert json.loads(call["arguments"]) == {"city": "Paris"} and call["status"] == "completed"

    events = await stream(app, request)
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["type"]) for e in added] == [(0, "message"), (1, "function_call")]
    assert added[1]["item"]["arguments"] == ""
    args = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert json.loads(args) == {"city": "Paris"} and done["arguments"] == args and done["output_index"] == 1
    # the arguments stream as they are generated; the item keeps its id from added to done to the response
    assert len([e for e in events if e["type"] == "response.function_call_arguments.delta"]) > 1
    item_done = [e for e in events if e["type"] == "response.output_item.done"][-1]
    assert added[1]["item"]["id"] == done["item_id"] == item_done["item"]["id"] == events[-1]["response"]["output"][1]["id"]
    types = [e["type"] for e in events]
    assert types.index("response.output_item.done") < types.index("response.function_call_arguments.delta")
    assert events[-1]["type"] == "response.completed"
    assert [i["type"] for i in events[-1]["response"]["output"]] == ["message", "function_call"]


@pytest.mark.parametrize(("patch", "param"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search", "external_web_access": False}]}, "tools[0].type"),
    ({"tools": [{"type": "namespace", "name": "n", "description": "d", "tools": []}]}, "tools[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA=="}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "reasoning", "summary": [], "encrypted_content": "x"}]}, "input[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"include": ["message.output_text.logprobs"]}, "include[0]"),
    ({"truncation": "auto"}, "truncation"),
    ({"seed": 1}, "seed"),
    ({"input": []}, "input"),
    ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice"),
])
async def test_refusals_name_the_field(app_for: AppFor, patch: dict[str, Any], param: str) -> None:
    app, _ = app_for()
    status, body = await post(app, {"input": "Hi", **patch})
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param


# --------------------------------------------------------------------------- the real client


@pytest.fixture
def server(live: Callable[..., LiveServer]) -> LiveServer:
    return live(http=HttpSettings(api_key="sekret"))


def test_openai_client_responses(server: LiveServer, models: Models) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="sekret", max_retries=0)
    response = client.responses.create(model=models.a.key, input="Hi")
    assert response.output_text == REPLY_A and response.status == "completed"
    assert response.usage is not None and response.usage.output_tokens > 0

    with client.responses.stream(model=models.a.key, input="Hi") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == REPLY_A and final.output_text == REPLY_A

    assert server.world is not None
    server.world.loader.script = CALL
    tools: Any = [WEATHER]
    response = client.responses.create(model=models.a.key, input="Weather in Paris?", tools=tools)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    streamed = client.responses.create(model=models.a.key, input="Weather in Paris?", tools=tools, stream=True)
    kinds = [event.type for event in streamed]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"

    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=models.a.key, input="Hi", previous_response_id="resp_123")
    assert "previous_response_id" in str(bad.value)
