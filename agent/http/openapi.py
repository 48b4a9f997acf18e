"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

Derived, not hand-copied: request bodies are the JSON Schemas of the msgspec Structs the routes
decode with (``agent.http.schemas`` mirrors OpenAI's own spec, a subset of which lives in
``tests/http/data/openai-subset.openapi.json``; the management API's bodies and answers are the
protocol Structs of ``ipc.messages``), so the document cannot drift from what the code accepts.
Component and operation names follow OpenAI's spec (``CreateChatCompletionRequest``,
``createChatCompletion``...) so generated clients look familiar.

What a caller may rely on: every operation lists the error answers it can give, in the shape it
gives them (OpenAI's ``ErrorResponse`` under ``/v1``, ``{code, message, details}`` under ``/api``),
and the security each route needs (``apiKey`` for ``/v1`` when configured, ``agentToken`` for
``/api``). The document is built once per process and is the same for every request.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from agent.http import anthropic_schemas, responses_api_schemas, schemas
from agent.http.embeddings_routes import add_to_openapi as add_embeddings
from agent.variants import DEVICE_ALIASES, DEVICES, MODEL_ID_PATTERN, QUANTIZATIONS
from ipc import messages as m

REF = "#/components/schemas/{name}"

_OPENAI_NAMES = {"ChatCompletionRequest": "CreateChatCompletionRequest", "CompletionRequest": "CreateCompletionRequest",
                 "ResponsesRequest": "CreateResponse"}
"""Our Struct names → the names OpenAI's spec gives the same bodies."""

_PROTOCOL_FIELDS = ("type", "id", "token", "protocol")
"""Fields of a ZeroMQ request that an HTTP body does not carry (the route fills them in)."""

MODEL_ID = {"type": "string", "pattern": MODEL_ID_PATTERN, "maxLength": 193,
            "description": "A Hub repo, 'org/name' ('..' is refused)",
            "examples": ["onnx-community/Qwen2.5-0.5B-Instruct"]}
REVISION = {"type": "string", "minLength": 1, "maxLength": 255, "default": "main",
            "description": "A branch, tag or commit of the repo (git's ref-name rules)"}
LIMIT = {"type": "integer", "minimum": 1, "maximum": 200, "default": 20}
"""What the Hub operations accept (``agent.variants``, ``agent.handlers``), so that generated clients
and fuzzers send ids the Hub can be asked about."""


def _json(ref: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": _json_content({"$ref": f"#/components/schemas/{ref}"})}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _openai_errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Invalid request (the message names the parameter)", 401: "Missing or wrong API key",
        403: "Host not allowed (DNS rebinding protection)", 404: "Unknown model or route",
        405: "Method not allowed", 413: "Body larger than http.max_body_bytes",
        415: "Body is not JSON", 429: "Too many requests (Retry-After)", 500: "The model failed to load",
        503: "Queue full or model loading (Retry-After)",
    }
    return {str(s): _json("ErrorResponse", text.get(s, "Error")) for s in statuses}


def _api_errors(*statuses: int) -> dict[str, Any]:
    found = {str(s): _json("ApiError", "Error (code and message)") for s in statuses}
    # A path that matches no route (a model id with a newline, say) is the app's own 404, OpenAI-shaped.
    found["404"] = {"description": "Not found", "content": {"application/json": {"schema": {"anyOf": [
        {"$ref": REF.format(name="ApiError")}, {"$ref": REF.format(name="ErrorResponse")}]}}}}
    return found


_V1_ERRORS = (400, 401, 403, 404, 413, 500, 503)
_API_ERRORS = (400, 401, 403, 404, 409, 415, 422, 500, 502, 503, 507)


def _strip_protocol(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    out["properties"] = {k: v for k, v in schema["properties"].items() if k not in _PROTOCOL_FIELDS}
    if "required" in out:
        out["required"] = [k for k in out["required"] if k not in _PROTOCOL_FIELDS]
    return out


def _components() -> dict[str, Any]:
    body_structs = [schemas.ChatCompletionRequest, schemas.CompletionRequest, anthropic_schemas.MessagesRequest,
                    anthropic_schemas.CountTokensRequest, responses_api_schemas.ResponsesRequest]
    result_structs = [m.StatusResult, m.SearchResult, m.ModelFilesResult, m.InstalledResult, m.JobAccepted,
                      m.Cancelled, m.Deleted, m.HardwareInfo]
    _, found = msgspec.json.schema_components([*body_structs, *result_structs, m.Download, m.Activate],
                                             ref_template=REF)
    text = msgspec.json.encode(found).decode()
    for ours, theirs in _OPENAI_NAMES.items():  # rename, references included
        text = text.replace(f'"{ours}"', f'"{theirs}"').replace(f"/{ours}\"", f"/{theirs}\"")
    comps: dict[str, Any] = msgspec.json.decode(text)
    comps["Download"] = _strip_protocol(comps["Download"])
    comps["Download"]["properties"].update({
        "model_id": MODEL_ID, "revision": REVISION,
        "quantization": {"anyOf": [{"enum": list(QUANTIZATIONS)}, {"type": "null"}], "default": None,
                         "description": "null: the settings' default"},
        "device": {"anyOf": [{"enum": [*DEVICES, *DEVICE_ALIASES]}, {"type": "null"}], "default": None,
                   "description": "null: the settings' default"},
    })
    comps["Activate"] = _strip_protocol(comps["Activate"])
    nullable_str = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    comps.update({
        "Error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"}, "param": nullable_str, "code": nullable_str}},
        "ErrorResponse": {"type": "object", "required": ["error"],
                          "properties": {"error": {"$ref": REF.format(name="Error")}}},
        "ApiError": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}, "details": {}}},
        "Model": {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
            "id": {"type": "string"}, "object": {"enum": ["model"]}, "created": {"type": "integer"},
            "owned_by": {"type": "string"}, "kind": {"enum": ["chat", "embed"]},
            "context_length": {"type": ["integer", "null"],
                               "description": "tokens of context the model is served with (hflocal)"}}},
        "ListModelsResponse": {"type": "object", "required": ["object", "data"], "properties": {
            "object": {"enum": ["list"]}, "data": {"type": "array", "items": {"$ref": REF.format(name="Model")}}}},
        "CreateChatCompletionResponse": {"type": "object", "required": ["id", "object", "created", "model", "choices"],
                                         "properties": {"id": {"type": "string"},
                                                        "object": {"enum": ["chat.completion"]},
                                                        "created": {"type": "integer"}, "model": {"type": "string"},
                                                        "choices": {"type": "array"}, "usage": {"type": "object"}}},
        "CreateCompletionResponse": {"type": "object", "required": ["id", "object", "created", "model", "choices"],
                                     "properties": {"id": {"type": "string"}, "object": {"enum": ["text_completion"]},
                                                    "created": {"type": "integer"}, "model": {"type": "string"},
                                                    "choices": {"type": "array"}, "usage": {"type": "object"}}},
        "AnthropicMessageResponse": {"type": "object",
                                     "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
                                     "properties": {"id": {"type": "string"}, "type": {"enum": ["message"]},
                                                    "role": {"enum": ["assistant"]}, "model": {"type": "string"},
                                                    "content": {"type": "array", "items": {"type": "object"}},
                                                    "stop_reason": {"enum": ["end_turn", "max_tokens", "stop_sequence",
                                                                             "tool_use"]},
                                                    "stop_sequence": nullable_str, "usage": {"type": "object"}}},
        "AnthropicTokenCount": {"type": "object", "required": ["input_tokens"],
                                "properties": {"input_tokens": {"type": "integer"}}},
        "AnthropicErrorResponse": {"type": "object", "required": ["type", "error"], "properties": {
            "type": {"enum": ["error"]}, "error": {"type": "object", "required": ["type", "message"], "properties": {
                "type": {"type": "string"}, "message": {"type": "string"}}}}},
        "Response": {"type": "object", "required": ["id", "object", "created_at", "status", "model", "output"],
                     "properties": {"id": {"type": "string"}, "object": {"enum": ["response"]},
                                    "created_at": {"type": "integer"},
                                    "status": {"enum": ["completed", "incomplete", "in_progress", "failed"]},
                                    "model": {"type": "string"},
                                    "output": {"type": "array", "items": {"type": "object"}},
                                    "usage": {"anyOf": [{"type": "object"}, {"type": "null"}]}}},
        "Health": {"type": "object", "required": ["status", "version"], "properties": {
            "status": {"enum": ["ok"]}, "model": nullable_str, "model_state": {"type": "string"},
            "port": {"type": "integer"}, "queue_depth": {"type": "integer"}, "version": {"type": "string"}}},
        "Downloads": {"type": "object", "required": ["downloads"], "properties": {
            "downloads": {"type": "array", "items": {"$ref": REF.format(name="DownloadInfo")}}}},
    })
    return comps


NAMED_EVENT = {"type": "object", "required": ["event", "data"],
               "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}
"""One server-sent event with an ``event:`` name (Anthropic's and the Responses API's streams)."""


def _generation(op_id: str, summary: str, body: str, answer: str, *, named_events: bool = False) -> dict[str, Any]:
    ok = _json(answer)
    ok["content"]["text/event-stream"] = {"schema": NAMED_EVENT if named_events else {"type": "string"}}
    return {"post": {
        "operationId": op_id, "tags": ["OpenAI"], "summary": summary, "security": [{"apiKey": []}, {}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(name=body)}}}},
        "responses": {"200": ok, **_openai_errors(*_V1_ERRORS, 415)},
    }}


def _anthropic(op_id: str, summary: str, body: str, answer: str, *, stream: bool) -> dict[str, Any]:
    ok = _json(answer)
    if stream:
        ok["content"]["text/event-stream"] = {"schema": NAMED_EVENT}
    errors = {str(s): _json("AnthropicErrorResponse", "Error (Anthropic's shape)") for s in (*_V1_ERRORS, 415)}
    return {"post": {
        "operationId": op_id, "tags": ["Anthropic"], "summary": summary,
        "security": [{"apiKey": []}, {"anthropicKey": []}, {}],
        "requestBody": {"required": True, "content": _json_content({"$ref": REF.format(name=body)})},
        "responses": {"200": ok, **errors},
    }}


def _api_get(op_id: str, summary: str, answer: str, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "tags": ["Management"], "summary": summary,
                          "security": [{"agentToken": []}],
                          "responses": {"200": _json(answer), **_api_errors(*_API_ERRORS)}}
    if parameters:
        op["parameters"] = parameters
    return op


def _param(name: str, where: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema}


def _api_post(op_id: str, summary: str, body: str, answer: str) -> dict[str, Any]:
    return {"operationId": op_id, "tags": ["Management"], "summary": summary, "security": [{"agentToken": []}],
            "requestBody": {"required": True, "content": _json_content({"$ref": REF.format(name=body)})},
            "responses": {"202": _json(answer, "Accepted: follow the job's events"), **_api_errors(*_API_ERRORS)}}


@cache
def openapi_document(version: str) -> dict[str, Any]:
    """The whole document (built once; ``version`` is the agent's version)."""
    model_path = _param("model", "path", {"type": "string"})
    paths: dict[str, Any] = {
        "/health": {"get": {"operationId": "health", "tags": ["Agent"],
                            "summary": "Liveness and the active model; answers at once.",
                            "responses": {"200": _json("Health")}}},
        "/openapi.json": {"get": {"operationId": "openapi", "tags": ["Agent"], "summary": "This document.",
                                  "responses": {"200": {"description": "OK",
                                                        "content": _json_content({"type": "object"})}}}},
        "/v1/models": {"get": {"operationId": "listModels", "tags": ["OpenAI"],
                               "summary": "Installed, ready variants by variant key.",
                               "security": [{"apiKey": []}, {}],
                               "responses": {"200": _json("ListModelsResponse"), **_openai_errors(401, 403)}}},
        "/v1/models/{model}": {"get": {"operationId": "retrieveModel", "tags": ["OpenAI"],
                                       "summary": "One model by variant key or bare model id.",
                                       "parameters": [model_path],
                                       "security": [{"apiKey": []}, {}],
                                       "responses": {"200": _json("Model"), **_openai_errors(401, 403, 404)}}},
        "/v1/chat/completions": _generation("createChatCompletion", "A chat answer, streamed (SSE) or not.",
                                            "CreateChatCompletionRequest", "CreateChatCompletionResponse"),
        "/v1/completions": _generation("createCompletion", "A text completion, streamed (SSE) or not.",
                                       "CreateCompletionRequest", "CreateCompletionResponse"),
        "/v1/messages": _anthropic("createMessage", "Anthropic Messages API: a message, streamed (SSE) or not.",
                                   "MessagesRequest", "AnthropicMessageResponse", stream=True),
        "/v1/messages/count_tokens": _anthropic("countMessageTokens", "Prompt tokens of a Messages request.",
                                                "CountTokensRequest", "AnthropicTokenCount", stream=False),
        "/v1/responses": _generation("createResponse",
                                     "OpenAI Responses API, stateless: a response, streamed (SSE) or not.",
                                     "CreateResponse", "Response", named_events=True),
        "/api/status": {"get": _api_get("status", "What the agent is doing.", "StatusResult")},
        "/api/search": {"get": _api_get("search", "ONNX models on the Hub: chat (text generation) or embed.",
                                        "SearchResult", [
            _param("q", "query", {"type": "string", "examples": ["qwen"]}), _param("limit", "query", LIMIT),
            _param("kind", "query", {"enum": ["chat", "embed"], "default": "chat"})])},
        "/api/models/{model_id}/files": {"get": _api_get("modelFiles", "Quantizations a repo offers and their sizes.",
                                                         "ModelFilesResult", [
                                                             _param("model_id", "path", MODEL_ID),
                                                             _param("revision", "query", REVISION)])},
        "/api/installed": {"get": _api_get("listInstalled", "Every variant in the store.", "InstalledResult")},
        "/api/installed/{key}": {"delete": {**_api_get("deleteVariant", "Remove a variant (shared files are kept).",
                                                       "Deleted", [_param("key", "path", {"type": "string"})])}},
        "/api/downloads": {"get": _api_get("listDownloads", "Downloads in progress.", "Downloads"),
                           "post": _api_post("startDownload", "Start (or join) a download.", "Download",
                                             "JobAccepted")},
        "/api/downloads/{job_id}": {"delete": _api_get("cancelDownload",
                                                       "Cancel a download; bytes are kept for a resume.",
                                                       "Cancelled", [_param("job_id", "path", {"type": "string"})])},
        "/api/activate": {"post": _api_post("activate", "Make a variant the active model and load it.", "Activate",
                                            "JobAccepted")},
        "/api/hardware": {"get": _api_get("hardware", "OS, CPU, RAM, GPUs, providers and free disk.", "HardwareInfo")},
    }
    components = _components()
    add_embeddings(paths, components, _openai_errors(*_V1_ERRORS, 415), REF)
    return {
        "openapi": "3.1.0",
        "info": {"title": "hflocal", "version": version,
                 "description": "OpenAI-compatible API of a local hflocal agent, plus its management API."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "http.api_key or HFLOCAL_API_KEY, when set"},
                "anthropicKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                                 "description": "the same key, as Anthropic's clients send it"},
                "agentToken": {"type": "http", "scheme": "bearer",
                               "description": "the token in agent.json (or the page's cookie)"},
            },
        },
    }


__all__ = ["openapi_document"]
