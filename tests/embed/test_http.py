"""``POST /v1/embeddings`` through the Quart app over a real pool with real tiny models: every input
shape, both encodings, dimensions, the model default, the 400s of both kinds, ``/v1/models``,
``/openapi.json``, and a chat and an embedding model loaded at the same time."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from quart import Quart

from agent.http import create_app
from agent.pool import ResolvedVariant
from agent.settings import HttpSettings, Settings
from tests.fakes.encoder_reference import sentence_vector, token_states
from tests.fakes.tiny_encoder import TinyEncoder, build_encoder_repo
from tests.fakes.tiny_model import build_tiny_repo
from tests.http.support import World, make_world, variant_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

REPLY = "Paris is the capital of France."
TEXTS = ["The capital of France is Paris.", "Hello world!", "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024."]


@dataclass(frozen=True)
class Setup:
    chat: ResolvedVariant
    embed: ResolvedVariant
    matryoshka: ResolvedVariant
    enc: TinyEncoder


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("embed-http")
    build_tiny_repo(root / "chat", ("fp32",), reply=REPLY)
    enc = build_encoder_repo(root / "embed", pooling=("mean",), max_seq_length=24)
    build_encoder_repo(root / "mrl", pooling=("cls",), config_extra={"matryoshka_dimensions": [8, 16]}, seed=3)
    return Setup(chat=variant_for("test-org/chat", root / "chat"),
                 embed=variant_for("test-org/embed", root / "embed", kind="embed"),
                 matryoshka=variant_for("test-org/mrl", root / "mrl", kind="embed"), enc=enc)


@pytest.fixture
async def apps(setup: Setup) -> AsyncIterator[Callable[..., tuple[Quart, World]]]:
    made: list[World] = []

    def make(variants: list[ResolvedVariant] | None = None, active: str | None = None,
             http: HttpSettings | None = None, **settings: Any) -> tuple[Quart, World]:
        world = make_world(variants or [setup.chat, setup.embed], active or setup.chat.key, **settings)
        made.append(world)
        return create_app(world.pool, Settings(http=http or HttpSettings(), models=world.settings)), world

    yield make
    for world in made:
        await world.pool.close()


def expected(enc: TinyEncoder, texts: list[str]) -> np.ndarray:
    return np.stack([sentence_vector(token_states(enc.shape, enc.weights, enc.encode(t)), enc.pooling, normalize=True)
                     for t in texts])


async def post(app: Quart, body: Any, path: str = "/v1/embeddings") -> tuple[int, Any]:
    response = await app.test_client().post(path, json=body)
    return response.status_code, await response.get_json()


async def test_floats_and_base64_for_every_input_shape(apps: Callable[..., tuple[Quart, World]], setup: Setup) -> None:
    app, _ = apps()
    want = expected(setup.enc, TEXTS)
    status, body = await post(app, {"model": setup.embed.key, "input": TEXTS})
    assert status == 200, body
    assert body["object"] == "list" and body["model"] == setup.embed.key
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", i) for i in range(3)]
    np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]]), want, rtol=1e-4, atol=2e-5)
    tokens = sum(len(setup.enc.encode(t)) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    status, b64 = await post(app, {"model": "test-org/embed", "input": TEXTS, "encoding_format": "base64"})
    assert status == 200, b64
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in b64["data"]])
    np.testing.assert_array_equal(decoded, np.array([d["embedding"] for d in body["data"]], np.float32))

    status, one = await post(app, {"model": setup.embed.key, "input": TEXTS[1], "user": "someone"})
    assert status == 200 and len(one["data"]) == 1
    np.testing.assert_allclose(one["data"][0]["embedding"], want[1], rtol=1e-4, atol=2e-5)
    ids = [setup.enc.encode(t) for t in TEXTS]
    status, by_ids = await post(app, {"model": setup.embed.key, "input": ids})
    assert status == 200
    np.testing.assert_allclose(np.array([d["embedding"] for d in by_ids["data"]]), want, rtol=1e-4, atol=2e-5)
    status, single = await post(app, {"model": setup.embed.key, "input": ids[0]})
    assert status == 200 and by_ids["data"][0]["embedding"] == single["data"][0]["embedding"]


async def test_model_may_be_omitted_when_one_embedding_model_is_installed(
        apps: Callable[..., tuple[Quart, World]], setup: Setup) -> None:
    app, _ = apps()
    for body in ({"input": "hi"}, {"input": "hi", "model": ""}):
        status, answer = await post(app, body)
        assert (status, answer["model"]) == (200, setup.embed.key)
    app, _ = apps([setup.chat, setup.embed, setup.matryoshka])
    status, answer = await post(app, {"input": "hi"})
    assert (status, answer["error"]["code"], answer["error"]["param"]) == (400, "model_required", "model")
    assert setup.embed.key in answer["error"]["message"] and setup.matryoshka.key in answer["error"]["message"]
    app, _ = apps([setup.chat, setup.embed, setup.matryoshka], active=setup.matryoshka.key)
    assert (await post(app, {"input": "hi"}))[1]["model"] == setup.matryoshka.key  # the active one embeds
    app, _ = apps([setup.chat])
    status, answer = await post(app, {"input": "hi"})
    assert (status, answer["error"]["code"]) == (404, "model_not_found")
    assert "none installed is an embedding model" in answer["error"]["message"]


async def test_the_wrong_kind_is_a_400_both_ways(apps: Callable[..., tuple[Quart, World]], setup: Setup) -> None:
    app, world = apps()
    status, answer = await post(app, {"model": setup.chat.key, "input": "hi"})
    assert (status, answer["error"]["code"], answer["error"]["param"]) == (400, "wrong_model_kind", "model")
    assert "is a chat model; this request needs an embedding model" in answer["error"]["message"]
    chat = {"model": setup.embed.key, "messages": [{"role": "user", "content": "hi"}]}
    status, answer = await post(app, chat, "/v1/chat/completions")
    assert (status, answer["error"]["code"], answer["error"]["param"]) == (400, "wrong_model_kind", "model")
    assert "is an embedding model; this request needs a chat model" in answer["error"]["message"]
    status, answer = await post(app, {"model": setup.embed.key, "prompt": "hi"}, "/v1/completions")
    assert (status, answer["error"]["code"]) == (400, "wrong_model_kind")
    assert world.loader.loads == []  # refused before anything was loaded
    app, _ = apps(active=setup.embed.key)
    status, answer = await post(app, {"messages": chat["messages"]}, "/v1/chat/completions")
    assert (status, answer["error"]["code"]) == (400, "wrong_model_kind")
    assert "The active model" in answer["error"]["message"]


@pytest.mark.parametrize(("body", "param", "code", "needle"), [
    ({"input": ""}, "input", "invalid_request", "input[0] is an empty string"),
    ({"input": []}, "input", None, "'input' is an empty list"),
    ({"input": ["a", 3]}, "input", None, "must be a string, a list of strings"),
    ({"input": [[1, 2], "a"]}, "input", None, "must be a string, a list of strings"),
    ({"input": [True]}, "input", None, "must be a string"),
    ({"input": [[]]}, "input", "invalid_request", "input[0] is an empty list of token ids"),
    ({"input": [10 ** 6]}, "input", "invalid_request", "outside the vocabulary"),
    ({"input": "x " * 40}, "input", "context_length_exceeded", "this model embeds at most 24"),
    ({"input": "hi", "dimensions": 8}, "dimensions", "invalid_request", "does not declare Matryoshka"),
    ({"input": "hi", "dimensions": 0}, "dimensions", None, ">= 1"),
    ({"input": "hi", "encoding_format": "int8"}, "encoding_format", None, "encoding_format"),
    ({"input": "hi", "input_type": "query"}, "input_type", None, "'input_type' is not a field"),
    ({"model": 3, "input": "hi"}, "model", None, "model"),
    ({}, "input", None, "'input' is required"),
])
async def test_bad_requests_name_the_field(apps: Callable[..., tuple[Quart, World]], setup: Setup,
                                           body: dict[str, Any], param: str, code: str | None, needle: str) -> None:
    app, _ = apps()
    status, answer = await post(app, {"model": setup.embed.key, **body} if "model" not in body else body)
    assert status == 400, answer
    error = answer["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert needle in error["message"]


async def test_the_api_key_guards_embeddings_like_every_v1_route(apps: Callable[..., tuple[Quart, World]],
                                                                 setup: Setup) -> None:
    app, world = apps(http=HttpSettings(api_key="s3cret"))
    client = app.test_client()
    body = {"model": setup.embed.key, "input": "Hello world!"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
        response = await client.post("/v1/embeddings", json=body, headers=headers)
        assert response.status_code == 401, headers
        assert (await response.get_json())["error"]["code"] == "invalid_api_key"
    assert world.loader.loads == []  # refused before the pool was asked
    for headers in ({"Authorization": "Bearer s3cret"}, {"x-api-key": "s3cret"}):
        response = await client.post("/v1/embeddings", json=body, headers=headers)
        assert response.status_code == 200, await response.get_data()


async def test_truncate_and_dimensions(apps: Callable[..., tuple[Quart, World]], setup: Setup) -> None:
    app, _ = apps([setup.embed, setup.matryoshka])
    status, answer = await post(app, {"model": setup.embed.key, "input": "x " * 40, "truncate": True})
    assert status == 200 and answer["usage"]["prompt_tokens"] == 24
    status, full = await post(app, {"model": setup.matryoshka.key, "input": TEXTS})
    status, short = await post(app, {"model": setup.matryoshka.key, "input": TEXTS, "dimensions": 8})
    assert status == 200 and {len(d["embedding"]) for d in short["data"]} == {8}
    head = np.array([d["embedding"][:8] for d in full["data"]])
    np.testing.assert_allclose([d["embedding"] for d in short["data"]],
                               head / np.linalg.norm(head, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    status, answer = await post(app, {"model": setup.matryoshka.key, "input": "hi", "dimensions": 12})
    assert (status, answer["error"]["param"]) == (400, "dimensions")
    assert "trained for dimensions 8, 16 (or 32)" in answer["error"]["message"]


async def test_models_say_their_kind_and_the_openapi_document_has_the_route(
        apps: Callable[..., tuple[Quart, World]], setup: Setup) -> None:
    from openai.types import embedding_create_params

    app, _ = apps()
    client = app.test_client()
    listing = await (await client.get("/v1/models")).get_json()
    assert {m["id"]: m["kind"] for m in listing["data"]} == {setup.chat.key: "chat", setup.embed.key: "embed"}
    assert (await (await client.get("/v1/models/test-org/embed")).get_json())["kind"] == "embed"
    doc = await (await client.get("/openapi.json")).get_json()
    operation = doc["paths"]["/v1/embeddings"]["post"]
    assert operation["operationId"] == "createEmbedding" and {"200", "400", "404", "503"} <= set(operation["responses"])
    fields = set(doc["components"]["schemas"]["CreateEmbeddingRequest"]["properties"])
    assert fields - {"truncate"} == set(embedding_create_params.EmbeddingCreateParams.__annotations__)
    assert doc["components"]["schemas"]["Model"]["properties"]["kind"]["enum"] == ["chat", "embed"]


async def test_answers_parse_as_the_openai_clients_own_types(
        apps: Callable[..., tuple[Quart, World]], setup: Setup) -> None:
    from openai.types import CreateEmbeddingResponse

    app, _ = apps()
    _, body = await post(app, {"model": setup.embed.key, "input": TEXTS})
    parsed = CreateEmbeddingResponse.model_validate(body, strict=True)
    assert parsed.model == setup.embed.key and len(parsed.data[2].embedding) == 32


async def test_a_chat_and_an_embedding_model_are_loaded_together(
        apps: Callable[..., tuple[Quart, World]], setup: Setup) -> None:
    app, world = apps(max_loaded=2)
    chat = {"model": setup.chat.key, "messages": [{"role": "user", "content": "Where?"}]}
    status, answer = await post(app, chat, "/v1/chat/completions")
    assert status == 200 and answer["choices"][0]["message"]["content"] == REPLY
    status, vectors = await post(app, {"input": TEXTS})
    assert status == 200
    assert sorted(world.pool.status().loaded) == sorted([setup.chat.key, setup.embed.key])
    status, again = await post(app, chat, "/v1/chat/completions")
    assert status == 200 and again["choices"][0]["message"]["content"] == REPLY
    assert world.loader.loads == ["chat", "embed"]  # nothing was unloaded and loaded again
    # With room for one model they take turns: each request still gets its own kind of answer.
    app, world = apps(max_loaded=1)
    for _ in range(2):
        assert (await post(app, chat, "/v1/chat/completions"))[1]["choices"][0]["message"]["content"] == REPLY
        assert (await post(app, {"input": TEXTS}))[1]["data"][0]["embedding"] == vectors["data"][0]["embedding"]
    assert world.loader.loads == ["chat", "embed", "chat", "embed"] and len(world.pool.status().loaded) == 1


async def test_requests_at_the_same_time_are_each_answered_in_full(
        apps: Callable[..., tuple[Quart, World]], setup: Setup) -> None:
    """Two requests at once on one model take its turn one after the other; each gets its own vectors."""
    import asyncio

    app, world = apps()
    client = app.test_client()
    many = [f"{t} {n}" for n in range(100) for t in TEXTS]
    first, second = await asyncio.gather(client.post("/v1/embeddings", json={"input": many}),
                                         client.post("/v1/embeddings", json={"input": TEXTS}))
    assert (first.status_code, second.status_code) == (200, 200)
    assert len((await first.get_json())["data"]) == 300
    got = np.array([d["embedding"] for d in (await second.get_json())["data"]])
    np.testing.assert_allclose(got, expected(setup.enc, TEXTS), rtol=1e-4, atol=2e-5)
    assert world.pool.status().running == 0 and world.loader.loads == ["embed"]
