"""The OpenAI routes through Quart's test client (chunk by chunk), on the real engine with tiny models."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from agent.engine.types import SamplingParams
from tests.http.conftest import REPLY_A, REPLY_B, Models
from tests.http.support import World, close, next_event, open_stream, read_stream

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

AppFor = Callable[..., tuple[Quart, World]]
HI = [{"role": "user", "content": "Where?"}]


async def post(client: Client, path: str, payload: Any) -> tuple[int, dict[str, Any], Any]:
    response = await client.post(path, json=payload)
    return response.status_code, dict(response.headers), await response.get_json()


def prompt_tokens(models: Models, messages: list[dict[str, str]]) -> int:
    from tests.fakes.tiny_model import CHAT_TEMPLATE  # noqa: F401 - the template the ids come from

    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return len(models.tiny_a.tokenizer.encode(text + "<|im_start|>assistant\n", add_special_tokens=False).ids)


# --------------------------------------------------------------------------- chat


async def test_chat_non_streaming_with_exact_usage(client: Client, models: Models) -> None:
    status, _, body = await post(client, "/v1/chat/completions", {"model": models.a.key, "messages": HI})
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == models.a.key and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": REPLY_A, "refusal": None}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None and choice["index"] == 0
    assert models.tiny_a.reply_ids is not None
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens(models, HI),
        "completion_tokens": len(models.tiny_a.reply_ids),
        "total_tokens": prompt_tokens(models, HI) + len(models.tiny_a.reply_ids),
    }


async def test_model_may_be_omitted_or_a_bare_id(client: Client, models: Models) -> None:
    for model in (None, models.b.model_id):
        payload = {"messages": HI} if model is None else {"model": model, "messages": HI}
        status, _, body = await post(client, "/v1/chat/completions", payload)
        assert status == 200
        expected = models.a if model is None else models.b
        assert body["model"] == expected.key
        assert body["choices"][0]["message"]["content"] == (REPLY_A if model is None else REPLY_B)


async def test_chat_stream_chunk_by_chunk_matches_non_streaming(client: Client, models: Models) -> None:
    events = await read_stream(client, "/v1/chat/completions", {"messages": HI, "stream": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == models.a.key for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("usage" not in c for c in chunks)
    content = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert "".join(content) == REPLY_A
    assert len(chunks) > 3  # really streamed, not one blob
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert chunks[-1]["choices"][0]["delta"]["content"]  # the last content chunk carries finish_reason


async def test_stream_include_usage(client: Client, models: Models) -> None:
    payload = {"messages": HI, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 4}
    events = await read_stream(client, "/v1/chat/completions", payload)
    *chunks, final, done = events
    assert done == "[DONE]"
    assert final["choices"] == [] and final["usage"] == {
        "prompt_tokens": prompt_tokens(models, HI), "completion_tokens": 4,
        "total_tokens": prompt_tokens(models, HI) + 4,
    }
    assert all(c["usage"] is None for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_max_tokens_stop_and_aliases(client: Client, models: Models) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        _, _, body = await post(client, "/v1/chat/completions", {"messages": HI, field: 3})
        assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3
        assert REPLY_A.startswith(body["choices"][0]["message"]["content"])
    for stop in (" capital", [" capital", "zzz"]):
        _, _, body = await post(client, "/v1/chat/completions", {"messages": HI, "stop": stop})
        assert body["choices"][0]["message"]["content"] == "Paris is the"
        assert body["choices"][0]["finish_reason"] == "stop"
    events = await read_stream(client, "/v1/chat/completions", {"messages": HI, "stream": True, "stop": "capital"})
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "Paris is the "


async def test_chat_logprobs(client: Client) -> None:
    payload = {"messages": HI, "logprobs": True, "top_logprobs": 2, "max_tokens": 5}
    _, _, body = await post(client, "/v1/chat/completions", payload)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 5 == body["usage"]["completion_tokens"]
    assert "".join(item["token"] for item in content) == body["choices"][0]["message"]["content"]
    for item in content:
        assert item["logprob"] <= 0 and isinstance(item["bytes"], list) and len(item["top_logprobs"]) == 2
        assert item["top_logprobs"][0]["token"] == item["token"]  # greedy: the chosen one is the top one
    events = await read_stream(client, "/v1/chat/completions", {**payload, "stream": True})
    streamed = [t for e in events[1:-1] for t in (e["choices"][0]["logprobs"] or {"content": []})["content"]]
    assert [t["token"] for t in streamed] == [t["token"] for t in content]


async def test_developer_role_content_parts_and_tools_are_accepted(client: Client) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Where"}, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": "Again?"},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    status, _, body = await post(client, "/v1/chat/completions", {
        "messages": messages, "tools": tools, "tool_choice": "auto", "seed": 7, "user": "me",
        "response_format": {"type": "text"}, "n": 1, "unknown_field": {"ignored": True},
    })
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == REPLY_A


# --------------------------------------------------------------------------- completions


async def test_completions(client: Client, models: Models) -> None:
    status, _, body = await post(client, "/v1/completions", {"prompt": "The capital of France is"})
    assert status == 200, body
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
    prompt_ids = models.tiny_a.tokenizer.encode("The capital of France is", add_special_tokens=False).ids
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    assert body["usage"]["completion_tokens"] <= 16  # OpenAI's default max_tokens for completions
    # The same prompt as token ids, and echo.
    _, _, by_ids = await post(client, "/v1/completions", {"prompt": prompt_ids})
    assert by_ids["choices"][0]["text"] == choice["text"]
    _, _, echoed = await post(client, "/v1/completions", {"prompt": ["The capital of France is"], "echo": True})
    assert echoed["choices"][0]["text"] == "The capital of France is" + choice["text"]


async def test_completions_stream_logprobs_and_usage(client: Client, models: Models) -> None:
    payload = {"model": models.rand.key, "prompt": "Hello", "max_tokens": 6, "logprobs": 3, "temperature": 0}
    _, _, body = await post(client, "/v1/completions", payload)
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["text_offset"]) == 6
    assert all(len(top) <= 3 for top in logprobs["top_logprobs"]) and logprobs["text_offset"][0] == 0
    events = await read_stream(client, "/v1/completions", {
        **payload, "stream": True, "stream_options": {"include_usage": True}})
    *chunks, final, done = events
    assert "".join(c["choices"][0]["text"] for c in chunks) == body["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert final["usage"] == body["usage"] and done == "[DONE]"


# --------------------------------------------------------------------------- models and health


async def test_models_and_health(client: Client, models: Models) -> None:
    response = await client.get("/v1/models")
    listing = await response.get_json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == [v.key for v in models.all]
    assert listing["data"][0] == {"id": models.a.key, "object": "model", "created": 1_700_000_000,
                                  "owned_by": "test-org", "kind": "chat", "context_length": 2048}
    one = await (await client.get(f"/v1/models/{models.b.key}")).get_json()
    assert one["id"] == models.b.key
    bare = await (await client.get(f"/v1/models/{models.b.model_id}")).get_json()
    assert bare["id"] == models.b.key
    missing = await client.get("/v1/models/nobody/nothing::q4::cpu")
    assert missing.status_code == 404
    assert (await missing.get_json())["error"]["code"] == "model_not_found"

    health = await (await client.get("/health")).get_json()
    assert health["status"] == "ok" and health["model"] == models.a.key
    assert health["model_state"] == "unloaded" and health["loaded"] == [] and health["port"] == 9231
    assert health["version"]
    await post(client, "/v1/chat/completions", {"messages": HI, "max_tokens": 1})
    health = await (await client.get("/health")).get_json()
    assert health["model_state"] == "ready" and health["provider"] == "CPUExecutionProvider"
    assert health["loaded"] == [models.a.key] and health["fallback_reason"] is None


async def test_the_model_list_follows_the_catalog(app_for: AppFor, models: Models) -> None:
    """The list's body is kept between calls, and rebuilt as soon as the installed variants change."""
    app, world = app_for()
    client = app.test_client()

    async def ids() -> list[str]:
        return [m["id"] for m in (await (await client.get("/v1/models")).get_json())["data"]]

    assert await ids() == await ids() == [v.key for v in models.all]
    del world.catalog.variants[models.b.key]
    assert await ids() == [v.key for v in models.all if v is not models.b]
    world.catalog.variants[models.b.key] = models.b
    assert sorted(await ids()) == sorted(v.key for v in models.all)


# --------------------------------------------------------------------------- disconnects


async def test_disconnect_mid_stream_frees_the_model(app_for: AppFor) -> None:
    app, world = app_for(active="rand")
    world.loader.step_s = 0.05
    client = app.test_client()
    conn = await open_stream(client, "/v1/chat/completions", {"messages": HI, "stream": True, "max_tokens": 200})
    for _ in range(3):
        await next_event(conn)
    world.loader.step_s = 60  # parked: the generation can now only end by being cancelled
    await conn.disconnect()
    await close(conn)
    world.loader.step_s = 0
    # Bounded only so that a failure cannot hang; answering at all proves the parked one was cancelled.
    status, _, body = await asyncio.wait_for(post(client, "/v1/chat/completions", {"messages": HI, "max_tokens": 2}), 30)
    assert status == 200 and body["usage"]["completion_tokens"] == 2
    assert world.loader.finished[0] == "tiny-rand" and world.pool.status().running == 0


async def test_disconnect_while_queued_leaves_the_queue(app_for: AppFor) -> None:
    app, world = app_for(queue_size=1)
    client = app.test_client()
    lease = await world.pool.acquire(None)
    conn = await open_stream(client, "/v1/chat/completions", {"messages": HI})
    while world.pool.status().queue_depth == 0:
        await asyncio.sleep(0.01)
    await conn.disconnect()
    await close(conn)
    assert world.pool.status().queue_depth == 0
    lease.release()
    status, _, _ = await post(client, "/v1/chat/completions", {"messages": HI})
    assert status == 200


async def test_a_request_naming_another_variant_loads_it(app_for: AppFor, models: Models) -> None:
    app, world = app_for(max_loaded=1)
    client = app.test_client()
    _, _, body = await post(client, "/v1/chat/completions", {"messages": HI})
    assert body["model"] == models.a.key
    _, _, body = await post(client, "/v1/chat/completions", {"model": models.b.key, "messages": HI})
    assert body["model"] == models.b.key and body["choices"][0]["message"]["content"] == REPLY_B
    assert world.loader.loads == ["tiny-a", "tiny-b"]
    assert world.pool.status().loaded == [models.b.key]


async def test_lease_stream_params_reach_the_engine(app_for: AppFor) -> None:
    """Sampling with a seed is reproducible through HTTP (the engine gets temperature and seed)."""
    app, _ = app_for(active="rand")
    client = app.test_client()
    payload = {"prompt": "Hello", "max_tokens": 12, "temperature": 1.5, "top_p": 0.9, "seed": 3}
    texts = {(await post(client, "/v1/completions", payload))[2]["choices"][0]["text"] for _ in range(2)}
    assert len(texts) == 1
    other = (await post(client, "/v1/completions", {**payload, "seed": 4}))[2]["choices"][0]["text"]
    greedy = (await post(client, "/v1/completions", {**payload, "temperature": 0}))[2]["choices"][0]["text"]
    assert len({texts.pop(), other, greedy}) >= 2
    assert SamplingParams().temperature is None


async def test_an_engine_failure_mid_stream_ends_with_an_error_event(app_for: AppFor) -> None:
    app, world = app_for(active="rand")
    world.loader.fail_after = 3
    client = app.test_client()
    events = await read_stream(client, "/v1/chat/completions", {"messages": HI, "stream": True})
    assert "[DONE]" not in events
    error = events[-1]["error"]
    assert error["type"] == "server_error" and "test fault" in error["message"]
    assert len(events) >= 3  # the role chunk and some content went out before the failure
    response = await client.post("/v1/chat/completions", json={"messages": HI})
    assert response.status_code == 500 and "test fault" in (await response.get_json())["error"]["message"]
    world.loader.fail_after = None
    response = await client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2})
    assert response.status_code == 200 and world.pool.status().running == 0
