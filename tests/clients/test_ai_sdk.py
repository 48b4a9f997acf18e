"""The Vercel AI SDK (``ai`` + ``@ai-sdk/openai-compatible``, the real npm packages) against a real
``hflocal serve``: tool calls (one step, an agent loop of two, streamed), structured output and plain
text. ``ai_sdk.mjs`` runs one scenario and prints what the SDK returned; the model is the tool-deciding
fake of ``tests.fakes.tool_model``, so every answer is known. Node packages come from
``tests/clients`` (``npm ci`` in ``scripts/test``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.tool_model import PLAIN_TEXT, RESULT_TEXT, WRITE_ARGUMENTS, build_tool_repo
from tests.support.agentproc import AgentProcess, offline_agent_serving

pytestmark = pytest.mark.timeout(300)

CLIENTS = Path(__file__).resolve().parent
KEY = "huggingface-local/local/Tool-Agent::fp32::auto"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent for the module, the tool model active."""
    root = tmp_path_factory.mktemp("ai-sdk")
    with offline_agent_serving(root, build_tool_repo(root / "Tool-Agent").path, KEY) as started:
        yield started


def sdk(agent: AgentProcess, scenario: str, **options: Any) -> dict[str, Any]:
    """Run one ``ai_sdk.mjs`` scenario; its JSON document (an SDK error is ``{"error": ...}``)."""
    node = shutil.which("node")
    assert node, "node is not on PATH"
    assert (CLIENTS / "node_modules" / "ai").is_dir(), "run scripts/test (it runs npm ci in tests/clients)"
    payload = json.dumps({"baseURL": f"{agent.http_url}/v1", "model": KEY, **options})
    result = subprocess.run(
        [node, "ai_sdk.mjs", scenario, payload], cwd=CLIENTS, capture_output=True, text=True, timeout=150,
        check=False, stdin=subprocess.DEVNULL)
    why = (scenario, options, result.stdout[-4000:], result.stderr[-4000:], agent.output()[-3000:])
    assert result.returncode == 0, why
    try:
        return dict(json.loads(result.stdout))
    except json.JSONDecodeError:
        pytest.fail(f"ai_sdk.mjs printed no JSON: {why}")


def positive_usage(usage: dict[str, Any]) -> None:
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0, usage
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"], usage


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_generate_text_calls_the_write_tool(agent: AgentProcess, choice: str) -> None:
    out = sdk(agent, "generate", toolChoice=choice, steps=1)
    assert "error" not in out, out
    [step] = out["steps"]
    assert step["finishReason"] == "tool-calls", step
    [call] = step["toolCalls"]
    assert call["toolName"] == "write" and call["input"] == WRITE_ARGUMENTS, call
    assert call["toolCallId"], call
    assert out["written"] == [WRITE_ARGUMENTS]  # the SDK executes the tool even in the last step
    request = step["request"]
    assert [t["function"]["name"] for t in request["tools"]] == ["write"], request
    assert request["tool_choice"] == choice, request
    positive_usage(step["usage"])


def test_generate_text_runs_an_agent_loop_of_two_steps(agent: AgentProcess) -> None:
    out = sdk(agent, "generate", steps=2)
    assert "error" not in out, out
    first, second = out["steps"]
    assert first["finishReason"] == "tool-calls", first
    assert [c["input"] for c in first["toolCalls"]] == [WRITE_ARGUMENTS], first
    assert out["written"] == [WRITE_ARGUMENTS]
    [result] = first["toolResults"]
    assert result["toolCallId"] == first["toolCalls"][0]["toolCallId"], first
    # the second request carries the call and its result back to the model
    roles = [m["role"] for m in second["request"]["messages"]]
    assert roles == ["user", "assistant", "tool"], second["request"]
    assert second["finishReason"] == "stop", second
    assert second["text"] == RESULT_TEXT == out["text"], second
    assert second["toolCalls"] == [], second
    for step in (first, second):
        positive_usage(step["usage"])
    positive_usage(out["totalUsage"])


def test_stream_text_streams_the_tool_call(agent: AgentProcess) -> None:
    out = sdk(agent, "stream", toolChoice="required", steps=1)
    assert "error" not in out, out
    parts = out["parts"]
    types = [p["type"] for p in parts]
    assert "error" not in types, parts
    [start] = [p for p in parts if p["type"] == "tool-input-start"]
    assert start["toolName"] == "write", start
    deltas = [p["delta"] for p in parts if p["type"] == "tool-input-delta"]
    assert len(deltas) > 1, parts  # the arguments stream as they are generated; together they are the arguments
    assert all(p["id"] == start["id"] for p in parts if p["type"] == "tool-input-delta"), parts
    assert json.loads("".join(deltas)) == WRITE_ARGUMENTS, deltas
    [call] = [p for p in parts if p["type"] == "tool-call"]
    assert call["toolName"] == "write" and call["input"] == WRITE_ARGUMENTS, call
    assert call["toolCallId"] == start["id"], (call, start)
    assert types.index("tool-input-start") < types.index("tool-input-delta") < types.index("tool-call"), types
    [finish_step] = [p for p in parts if p["type"] == "finish-step"]
    assert finish_step["finishReason"] == "tool-calls", finish_step
    positive_usage(finish_step["usage"])
    assert types[-1] == "finish" and parts[-1]["finishReason"] == "tool-calls", parts[-1]
    assert out["steps"][0]["request"]["stream"] is True


def valid_city(value: Any) -> None:
    """The zod schema of ai_sdk.mjs's object scenario, checked by hand."""
    assert isinstance(value, dict), value
    assert set(value) == {"city", "country", "population", "landmarks"}, value
    assert isinstance(value["city"], str) and isinstance(value["country"], str), value
    assert isinstance(value["population"], int) and not isinstance(value["population"], bool), value
    landmarks = value["landmarks"]
    assert isinstance(landmarks, list) and len(landmarks) <= 3, value
    assert all(isinstance(x, str) for x in landmarks), value


@pytest.mark.parametrize("api", ["object", "output"])
def test_structured_output_with_a_schema_matches_it(agent: AgentProcess, api: str) -> None:
    """``supportsStructuredOutputs: true``: the SDK sends ``response_format: json_schema`` and the
    server's grammar makes even this tiny model's answer a valid object (nonsense values)."""
    out = sdk(agent, "object", api=api, supportsStructuredOutputs=True, maxOutputTokens=400)
    assert "error" not in out, out
    valid_city(out["object"])
    assert out["finishReason"] == "stop", out
    response_format = out["request"]["response_format"]
    assert response_format["type"] == "json_schema", response_format
    assert response_format["json_schema"]["schema"]["required"] == ["city", "country", "population", "landmarks"]


@pytest.mark.parametrize("api", ["object", "output"])
def test_structured_output_without_schema_support_gets_json(agent: AgentProcess, api: str) -> None:
    """``supportsStructuredOutputs: false`` (the provider's default): the SDK sends only
    ``response_format: {"type": "json_object"}`` (it warns that the schema is not supported) and does
    not put the schema into the prompt, so the server is only asked for *some* JSON object. It returns
    one (the tool model writes its call's arguments), and the SDK then rejects it as not matching the
    schema: what any model that ignores the prompt gets. This proves the JSON mode round trip; a
    schema only reaches the server with ``supportsStructuredOutputs: true`` (see the test above)."""
    out = sdk(agent, "object", api=api, supportsStructuredOutputs=False, maxOutputTokens=400)
    error = out.get("error")
    assert error is not None, out
    assert error["name"] == "AI_NoObjectGeneratedError", error
    # parsed fine (valid JSON from the server), then failed zod validation
    assert "did not match schema" in error["message"], error
    assert json.dumps(WRITE_ARGUMENTS, separators=(",", ":")) in (error["cause"] or ""), error


def test_plain_text_streams_with_usage(agent: AgentProcess) -> None:
    out = sdk(agent, "text")
    assert "error" not in out, out
    assert out["text"] == PLAIN_TEXT, out
    assert out["finishReason"] == "stop", out
    positive_usage(out["usage"])
    request = out["request"]
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}, request
    assert "tools" not in request, request
