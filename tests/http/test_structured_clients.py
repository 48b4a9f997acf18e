"""Structured output and tool calls through the real ``openai`` client and LangChain, against a real
server whose active model has random weights and a template without tools (the generic format):
whatever the weights prefer, the grammar makes every answer parse and validate."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from agent.http.tool_use import MAX_PARALLEL_CALLS
from tests.http.support import LiveServer

pytestmark = pytest.mark.timeout(180)

Live = Callable[..., LiveServer]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


class City(BaseModel):
    name: str = Field(max_length=16)
    population: int = Field(ge=0, le=100_000_000)
    capital: bool


@pytest.fixture(scope="module")
def server(models: Any) -> Any:
    from tests.http.support import LiveServer, make_world

    live = LiveServer(lambda: make_world(models.all, models.rand.key)).start()
    yield live
    live.stop()


@pytest.fixture
def client(server: LiveServer) -> Any:
    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def valid_call(name: str, arguments: str) -> dict[str, Any]:
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    for seed in (0, 1):
        answer = client.chat.completions.parse(model="", messages=ASK, response_format=City,  # type: ignore[arg-type]
                                               max_tokens=200, temperature=1.0, seed=seed)
        city = answer.choices[0].message.parsed
        assert isinstance(city, City) and answer.choices[0].finish_reason == "stop"


def test_json_object_and_streamed_json_schema(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="", messages=ASK, response_format={"type": "json_object"},
                                            max_tokens=600, temperature=0.7, seed=3)
    text = answer.choices[0].message.content or ""
    # a free object lets a random model write one endless string; what it wrote is still JSON so far
    assert text.startswith("{")
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert answer.choices[0].finish_reason == "length"
    schema = City.model_json_schema()
    stream = client.chat.completions.create(
        model="", messages=ASK, stream=True, max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}})
    chunks = list(stream)
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)), schema)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_running_out_of_tokens_inside_json_says_length(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"essay": {"type": "string", "minLength": 500}}, "required": ["essay"]}
    answer = client.chat.completions.create(model="", messages=ASK, max_tokens=10,
                                            response_format={"type": "json_schema",
                                                             "json_schema": {"name": "e", "schema": schema}})
    assert answer.choices[0].finish_reason == "length"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls_are_valid(client: openai.OpenAI, choice: Any) -> None:
    for seed in (0, 1, 2):
        answer = client.chat.completions.create(model="", messages=ASK, tools=TOOLS, tool_choice=choice,
                                                max_tokens=600, temperature=1.0, seed=seed)
        message = answer.choices[0].message
        assert answer.choices[0].finish_reason == "tool_calls" and message.tool_calls
        for call in message.tool_calls:
            valid_call(call.function.name, call.function.arguments)
            if isinstance(choice, dict):
                assert call.function.name == "get_time"


def test_parallel_tool_calls_false_makes_one_call(client: openai.OpenAI) -> None:
    for seed in range(3):
        answer = client.chat.completions.create(model="", messages=ASK, tools=TOOLS, tool_choice="required",
                                                parallel_tool_calls=False, max_tokens=600, temperature=1.2, seed=seed)
        assert len(answer.choices[0].message.tool_calls or []) == 1


def test_parallel_calls_are_capped(client: openai.OpenAI) -> None:
    """Greedy, this random model calls tools again and again: the grammar ends the answer after
    MAX_PARALLEL_CALLS calls."""
    answer = client.chat.completions.create(model="", messages=ASK, tools=TOOLS, tool_choice="required",
                                            max_tokens=1400, temperature=0)
    calls = answer.choices[0].message.tool_calls or []
    assert answer.choices[0].finish_reason == "tool_calls" and 1 <= len(calls) <= MAX_PARALLEL_CALLS
    for call in calls:
        valid_call(call.function.name, call.function.arguments)


def test_streamed_tool_calls_have_index_id_and_name_first(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="", messages=ASK, tools=TOOLS, tool_choice="required", stream=True,
                                            stream_options={"include_usage": True}, max_tokens=1400)
    chunks = list(stream)
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.index not in calls:
                assert delta.id and delta.type == "function" and delta.function and delta.function.name
                calls[delta.index] = {"name": delta.function.name, "arguments": ""}
            calls[delta.index]["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert calls and sorted(calls) == list(range(len(calls)))
    for call in calls.values():
        valid_call(call["name"], call["arguments"])
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_auto_calls_are_valid_when_made_and_round_trip(client: openai.OpenAI) -> None:
    for seed in range(4):
        answer = client.chat.completions.create(model="", messages=ASK, tools=TOOLS, max_tokens=120,
                                                temperature=1.0, seed=seed)
        choice = answer.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                valid_call(call.function.name, call.function.arguments)
        else:
            assert choice.finish_reason in ("stop", "length")
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"}]
    answer = client.chat.completions.create(model="", messages=history, tools=TOOLS, max_tokens=16)  # type: ignore[arg-type]
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_langchain_bind_tools_and_structured_output(server: LiveServer) -> None:
    llm = ChatOpenAI(base_url=server.base_url, api_key="unused", model="", max_tokens=600,  # type: ignore[arg-type]
                     max_retries=0, timeout=120)

    class get_weather(BaseModel):  # lower case: a tool's name, as the model sees it
        """Weather now in a city, in celsius or fahrenheit."""

        city: str = Field(max_length=16)
        unit: str = Field(pattern="^(celsius|fahrenheit)$")

    bound = llm.bind_tools([get_weather], tool_choice="required", parallel_tool_calls=False)
    reply = bound.invoke([HumanMessage("Weather in Paris?")])
    assert isinstance(reply, AIMessage) and reply.tool_calls
    assert reply.tool_calls[0]["name"] == "get_weather" and set(reply.tool_calls[0]["args"]) == {"city", "unit"}
    follow = bound.invoke([HumanMessage("Weather in Paris?"), reply,
                           ToolMessage("sunny", tool_call_id=reply.tool_calls[0]["id"])])
    assert isinstance(follow, AIMessage)

    for method in ("json_schema", "function_calling"):
        city = llm.with_structured_output(City, method=method).invoke("Describe Paris.")  # type: ignore[arg-type]
        assert isinstance(city, City), method
