"""``POST /v1/embeddings``, OpenAI's embeddings API, for the installed embedding models.

What a caller may rely on:

- ``input``: a string, a list of strings, a list of token ids or a list of token-id lists (at most
  2048 inputs; token ids are the model's own and are fed as given). An empty string or list is a
  400 naming ``input``.
- ``model``: a variant key or model id of an *embedding* model; a chat model is a 400
  (``wrong_model_kind``), and so is an embedding model on the chat routes. Omitted (or ``""``):
  the active model if it embeds, else the only installed embedding model (several: 400
  ``model_required``; none: 404).
- ``encoding_format`` ``float`` (default) or ``base64`` (little-endian float32, as OpenAI sends it);
  ``dimensions`` shortens the vectors only for models that declare Matryoshka training (else it
  must equal the model's size: 400 naming ``dimensions``); ``user`` is accepted and not used.
  ``truncate`` (hflocal's extension, default false) cuts inputs longer than the model takes instead
  of answering 400 ``context_length_exceeded``. Any other field is a 400 naming it.
- ``usage.prompt_tokens`` = ``usage.total_tokens`` = the tokens run, special tokens included.
- Like a generation, the request holds the model's turn (``agent.pool``) while it computes; a client
  that disconnects stops it between batches.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
from quart import Blueprint, Response

from agent.engine.types import EmbeddingRequestError
from agent.http import schemas
from agent.http.body import read_body
from agent.http.errors import ApiError, invalid_request
from agent.http.replies import encoded_json_response
from agent.http.state import state

blueprint = Blueprint("embeddings", __name__)

MODEL_KIND = "embed"
_ENCODE_OFF_LOOP = 1 << 16
"""Answers with more numbers than this are encoded in a thread (a big batch takes tens of ms)."""


class EmbeddingRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenAI's ``CreateEmbeddingRequest`` plus ``truncate``."""

    input: str | list[Any]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None
    truncate: bool = False


def _decode(body: bytes) -> EmbeddingRequest:
    try:
        return msgspec.json.decode(body, type=EmbeddingRequest)
    except msgspec.ValidationError as exc:
        unknown = re.match(r"Object contains unknown field `([^`]*)`", str(exc))
        if unknown:
            name = unknown.group(1)
            raise invalid_request(f"'{name}' is not a field hflocal's embeddings take (input, model, encoding_format, "
                                  "dimensions, user, truncate)", param=name) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    return schemas.decode(body, EmbeddingRequest)  # raises the shared, param-naming 400


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def inputs_of(value: str | list[Any]) -> list[str] | list[list[int]]:
    """``input`` as a list of texts or of token-id lists; a 400 naming ``input`` for any other shape."""
    if isinstance(value, str):
        return [value]
    if not value:
        raise invalid_request("'input' is an empty list: send a string or a list of strings", param="input")
    if all(isinstance(v, str) for v in value):
        return value
    if all(_is_id(v) for v in value):
        return [value]
    if all(isinstance(v, list) and all(_is_id(t) for t in v) for v in value):
        return value
    raise invalid_request("'input' must be a string, a list of strings, a list of token ids or a list of "
                          "token-id lists", param="input")


def _data(vectors: Any, encoding: str) -> list[dict[str, Any]]:
    if encoding == "base64":
        rows = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
    else:
        rows = vectors.tolist()
    return [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]


@blueprint.post("/embeddings")
async def create_embeddings() -> Response:
    req = _decode(await read_body())
    inputs = inputs_of(req.input)
    lease = await state().pool.acquire(req.model or None, kind=MODEL_KIND)
    task = asyncio.current_task()
    if task is not None:  # a response abandoned before it is sent must not keep the turn
        task.add_done_callback(lambda _: lease.release())
    try:
        embed = getattr(lease.model, "embed", None)
        if embed is None:
            raise ApiError(400, f"{lease.key} cannot compute embeddings", param="model", code="wrong_model_kind")
        result = await lease.call(lambda cancel: embed(inputs, dimensions=req.dimensions, truncate=req.truncate,
                                                       cancel=cancel))
    except EmbeddingRequestError as exc:
        raise ApiError(400, str(exc), param=exc.param, code=exc.code) from None
    finally:
        lease.release()

    def encode() -> bytes:
        return msgspec.json.encode({
            "object": "list", "data": _data(result.vectors, req.encoding_format), "model": lease.key,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        })

    body = await asyncio.to_thread(encode) if result.vectors.size > _ENCODE_OFF_LOOP else encode()
    return encoded_json_response(body)


# --------------------------------------------------------------------------- /openapi.json


def add_to_openapi(paths: dict[str, Any], schemas_: dict[str, Any], errors: dict[str, Any], ref: str) -> None:
    """Document ``POST /v1/embeddings`` (request and answer schemas, the error answers ``errors``)
    and the ``kind`` of each model in ``/v1/models``; ``ref`` is the ``$ref`` template."""
    _, found = msgspec.json.schema_components([EmbeddingRequest], ref_template=ref)
    body = found["EmbeddingRequest"]
    body["properties"]["input"] = {"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2048},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
         "minItems": 1, "maxItems": 2048}],
        "description": "Text(s) or the model's own token ids"}
    body["properties"]["truncate"]["description"] = "hflocal: cut inputs longer than the model takes instead of a 400"
    body["properties"]["user"]["description"] = "Accepted and not used"
    schemas_["CreateEmbeddingRequest"] = body
    schemas_["Embedding"] = {"type": "object", "required": ["index", "embedding", "object"], "properties": {
        "index": {"type": "integer"}, "object": {"enum": ["embedding"]},
        "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}],
                      "description": "floats, or base64 of little-endian float32 with encoding_format base64"}}}
    schemas_["CreateEmbeddingResponse"] = {
        "type": "object", "required": ["object", "data", "model", "usage"], "properties": {
            "object": {"enum": ["list"]}, "model": {"type": "string"},
            "data": {"type": "array", "items": {"$ref": ref.format(name="Embedding")}},
            "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
                "prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}}}
    model = schemas_.get("Model")
    if model is not None:
        model["properties"]["kind"] = {"enum": ["chat", "embed"],
                                       "description": "chat: chat/text completions; embed: /v1/embeddings"}
    paths["/v1/embeddings"] = {"post": {
        "operationId": "createEmbedding", "tags": ["OpenAI"], "security": [{"apiKey": []}, {}],
        "summary": "Vectors for texts or token ids from an installed embedding model.",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": ref.format(name="CreateEmbeddingRequest")}}}},
        "responses": {"200": {"description": "OK", "content": {"application/json": {
            "schema": {"$ref": ref.format(name="CreateEmbeddingResponse")}}}}, **errors},
    }}
