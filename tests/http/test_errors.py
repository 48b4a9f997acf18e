"""Every error is OpenAI-shaped JSON with the right status, and names the parameter at fault."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from agent.settings import HttpSettings
from tests.http.conftest import Models
from tests.http.support import World

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

AppFor = Callable[..., tuple[Quart, World]]
HI = [{"role": "user", "content": "Where?"}]


async def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data()
    assert response.headers["Content-Type"] == "application/json"
    body = await response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


BAD_CHAT = [
    ({"messages": HI, "temperature": 2.5}, "temperature"),
    ({"messages": HI, "temperature": "hot"}, "temperature"),
    ({"messages": HI, "top_p": 1.5}, "top_p"),
    ({"messages": HI, "frequency_penalty": -3}, "frequency_penalty"),
    ({"messages": HI, "presence_penalty": 2.1}, "presence_penalty"),
    ({"messages": HI, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": HI, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": HI, "max_tokens": 0}, "max_tokens"),
    ({"messages": HI, "max_completion_tokens": -1}, "max_completion_tokens"),
    ({"messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": HI, "stop": 5}, "stop"),
    ({"messages": HI, "n": 2}, "n"),
    ({"messages": HI, "stream": "yes"}, "stream"),
    ({"messages": HI, "seed": 1.5}, "seed"),
    ({"messages": HI, "logit_bias": {"42": 10}}, "logit_bias"),
    ({"messages": HI, "response_format": {"type": "xml"}}, "response_format.type"),
    ({"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema.schema"),
    ({"messages": HI, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}}}},
     "response_format.json_schema.schema"),
    ({"messages": HI, "response_format": {"type": "regex", "regex": "[a-"}}, "response_format.regex"),
    ({"messages": HI, "response_format": {"type": "lark", "lark": "start: undefined_rule"}}, "response_format.lark"),
    ({"messages": HI, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"},
     "tool_choice"),
    ({"messages": HI, "model": 42}, "model"),
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "messages[0].content[0]"),
]


@pytest.mark.parametrize(("payload", "param"), BAD_CHAT)
async def test_invalid_chat_requests_name_the_param(client: Client, payload: dict[str, Any], param: str) -> None:
    error = await error_of(await client.post("/v1/chat/completions", json=payload), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param.split(".")[0].split("[")[0] in error["message"] or param == "messages[0].content[0]"


async def test_images_are_refused_plainly(client: Client) -> None:
    payload = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]}
    error = await error_of(await client.post("/v1/chat/completions", json=payload), 400)
    assert error["message"] == "this model does not accept images" and error["param"] == "messages[0].content[1]"


@pytest.mark.parametrize(("payload", "param"), [
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": ["x", "y"]}, "prompt"),
    ({"prompt": [1.5]}, "prompt"),
    ({}, "prompt"),
    ({"prompt": [1, 2], "echo": True}, "echo"),
    ({"prompt": [100000]}, "prompt"),
])
async def test_invalid_completion_requests(client: Client, payload: dict[str, Any], param: str | None) -> None:
    error = await error_of(await client.post("/v1/completions", json=payload), 400)
    assert error["param"] == param


@pytest.mark.parametrize("body", [b"{", b"not json", b"", b"[1, 2]", b"\xff\xfe"])
async def test_malformed_bodies(client: Client, body: bytes) -> None:
    response = await client.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    await error_of(response, 400)


async def test_unknown_model_is_404(client: Client) -> None:
    for path, payload in (("/v1/chat/completions", {"model": "gpt-4o", "messages": HI}),
                          ("/v1/completions", {"model": "org/missing::q4::cpu", "prompt": "x"})):
        error = await error_of(await client.post(path, json=payload), 404)
        assert (error["code"], error["param"]) == ("model_not_found", "model")
        assert payload["model"] in error["message"]


async def test_no_active_model_is_404(app_for: AppFor) -> None:
    app, _ = app_for(active=None)
    error = await error_of(await app.test_client().post("/v1/chat/completions", json={"messages": HI}), 404)
    assert error["code"] == "model_not_found" and "No model is active" in error["message"]


async def test_no_active_model_while_one_is_set_up_is_503(app_for: AppFor) -> None:
    app, world = app_for(active=None)
    world.pool.preparing = "the default model is being set up"
    response = await app.test_client().post("/v1/chat/completions", json={"messages": HI})
    error = await error_of(response, 503)
    assert error["code"] == "model_loading" and "the default model is being set up" in error["message"]
    assert int(response.headers["Retry-After"]) >= 1


async def test_context_too_long(client: Client) -> None:
    long = [{"role": "user", "content": "The capital of France is Paris. " * 400}]
    for stream in (False, True):
        response = await client.post("/v1/chat/completions", json={"messages": long, "stream": stream})
        error = await error_of(response, 400)
        assert error["code"] == "context_length_exceeded" and "2048" in error["message"]
    error = await error_of(await client.post("/v1/completions", json={"prompt": "Paris. " * 1500}), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt")


async def test_prompt_plus_max_tokens_over_the_context_names_both(client: Client) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    usage = (await (await client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
                    ).get_json())["usage"]
    prompt = usage["prompt_tokens"]
    fits = await client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 2048 - prompt})
    assert fits.status_code == 200
    for field in ("max_tokens", "max_completion_tokens"):
        for stream in (False, True):
            over = {"messages": messages, field: 2049 - prompt, "stream": stream}
            error = await error_of(await client.post("/v1/chat/completions", json=over), 400)
            assert (error["code"], error["param"]) == ("context_length_exceeded", field)
            assert all(str(n) in error["message"] for n in (2048, prompt, 2049 - prompt, 2049))
    error = await error_of(await client.post("/v1/completions", json={"prompt": "Paris", "max_tokens": 5000}), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", "max_tokens") and "5000" in error["message"]
    # left to the server, the budget is what the context leaves: no error
    assert (await client.post("/v1/completions", json={"prompt": "Paris"})).status_code == 200


async def test_body_too_large_is_413(app_for: AppFor) -> None:
    app, _ = app_for(http=HttpSettings(max_body_bytes=1000))
    payload = {"messages": [{"role": "user", "content": "x" * 2000}]}
    error = await error_of(await app.test_client().post("/v1/chat/completions", json=payload), 413)
    assert error["code"] == "request_too_large" and "1000" in error["message"]


async def test_unknown_route_and_wrong_method(client: Client) -> None:
    error = await error_of(await client.post("/v1/images/generations", json={}), 404)
    assert "/v1/images/generations" in error["message"]
    await error_of(await client.get("/nowhere"), 404)
    response = await client.get("/v1/chat/completions")
    error = await error_of(response, 405)
    assert error["code"] == "method_not_allowed" and "POST" in response.headers["Allow"]


async def test_queue_full_is_503_with_retry_after(app_for: AppFor) -> None:
    app, world = app_for(queue_size=1)
    client = app.test_client()
    # One request holds the turn, one waits: the next one is refused.
    lease = await world.pool.acquire(None)
    queued = asyncio.create_task(world.pool.acquire(None))
    while world.pool.status().queue_depth < 1:
        await asyncio.sleep(0.01)
    response = await client.post("/v1/chat/completions", json={"messages": HI})
    error = await error_of(response, 503)
    assert error["code"] == "queue_full" and error["type"] == "server_error"
    assert int(response.headers["Retry-After"]) >= 1
    lease.release()
    (await queued).release()


async def test_load_failure_is_500_with_the_reason(client: Client, models: Models) -> None:
    response = await client.post("/v1/chat/completions", json={"model": models.broken.key, "messages": HI})
    error = await error_of(response, 500)
    assert error["code"] == "model_load_failed" and "tiny-broken" in error["message"]


async def test_api_key(app_for: AppFor) -> None:
    app, _ = app_for(http=HttpSettings(api_key="s3cret"))
    client = app.test_client()
    error = await error_of(await client.get("/v1/models"), 401)
    assert error["code"] == "invalid_api_key"
    await error_of(await client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert (await client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})).status_code == 200
    assert (await client.get("/health")).status_code == 200


async def test_cors(app_for: AppFor) -> None:
    app, _ = app_for(http=HttpSettings(cors_origins=["http://localhost:3000"]))
    client = app.test_client()
    response = await client.get("/v1/models", headers={"Origin": "http://localhost:3000"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    response = await client.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    response = await client.options("/v1/chat/completions", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert response.status_code == 200 and "POST" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
