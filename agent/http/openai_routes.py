"""The OpenAI-compatible routes, mounted at ``/v1``: models, chat completions, completions.

A request's ``model`` may be a variant key, a bare model id or absent (the active model); the
answer's ``model`` is always the variant key that ran. Every generation holds the model's single
turn (see ``agent.pool``) from tokenization to the last byte; a client that disconnects — while
queued, while generating, or while streaming — gives the turn back within one decode step.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from quart import Blueprint, Response

from agent.engine.embedding_config import read_embedding_config
from agent.engine.model_files import read_json, read_model_config
from agent.engine.types import SamplingParams, TokenChoice
from agent.http import schemas, sse, tool_use
from agent.http.body import read_body
from agent.http.errors import from_exception, invalid_request
from agent.http.replies import encoded_json_response, json_response
from agent.http.responses import AnswerFormat, Assembler, ChatFormat, CompletionFormat
from agent.http.state import state
from agent.pool import Lease, ModelUnavailableError, ResolvedVariant, UnknownModelError

blueprint = Blueprint("openai", __name__)

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default for ``/v1/completions``; chat uses ``models.default_max_tokens``."""


# --------------------------------------------------------------------------- models


def _model_object(variant: ResolvedVariant) -> dict[str, Any]:
    return {"id": variant.key, "object": "model", "created": variant.created,
            "owned_by": variant.model_id.split("/", 1)[0], "kind": variant.kind,
            "context_length": context_length_of(variant)}


def context_length_of(variant: ResolvedVariant) -> int | None:
    """The context (tokens) the variant is served with, read from its files as the loader reads
    them; ``None`` when they cannot be read (the model then fails to load with the reason)."""
    try:
        if variant.kind == "embed":
            return read_embedding_config(variant.path, graph_pools=False).max_length
        tokenizer_config = read_json(variant.path / "tokenizer_config.json", required=False)
        return read_model_config(variant.path, tokenizer_config).context_length
    except Exception:  # a broken install is reported by the loader, not by the listing
        return None


@blueprint.get("/models")
async def list_models() -> Response:
    """Installed variants whose files are ready, by variant key. The body is kept and sent again
    while the variants are the same (clients poll this; under load it was built on every call)."""
    st = state()
    variants = st.pool.installed()
    cached = st.models_body
    if cached is None or (cached[0] is not variants and cached[0] != variants):
        body = msgspec.json.encode({"object": "list", "data": [_model_object(v) for v in variants]})
        cached = st.models_body = (variants, body)
    return encoded_json_response(cached[1])


@blueprint.get("/models/<path:model>")
async def get_model(model: str) -> Response:
    """One model by variant key (slashes and ``::`` included) or bare model id."""
    pool = state().pool
    for variant in pool.installed():
        if variant.key == model:
            return json_response(_model_object(variant))
    try:
        return json_response(_model_object(pool.resolve(model)))
    except ModelUnavailableError as exc:
        raise UnknownModelError(model, exc.message) from None


# --------------------------------------------------------------------------- generation


@blueprint.post("/chat/completions")
async def chat_completions() -> Response:
    req = schemas.decode(await read_body(), schemas.ChatCompletionRequest)
    schemas.check_chat(req)
    params = schemas.sampling_params(req, state().settings.models.default_max_tokens)
    lease = await _acquire(req.model or None)
    try:
        use = tool_use.plan(req, lease.info)
    except BaseException:
        lease.release()
        raise
    params = dataclasses.replace(params, grammar=use.grammar)
    fmt = ChatFormat(lease.key, logprobs=params.logprobs)
    return await _answer(
        lease, lambda: lease.encode_chat(use.messages, tools=use.tools), "messages", params, fmt,
        Assembler(tool_format=use.format), stream=bool(req.stream), include_usage=req.include_usage,
        requested=schemas.requested_max_tokens(req),
    )


@blueprint.post("/completions")
async def completions() -> Response:
    req = schemas.decode(await read_body(), schemas.CompletionRequest)
    prompt = schemas.check_completion(req)
    params = schemas.sampling_params(req, COMPLETIONS_DEFAULT_MAX_TOKENS)
    answer = tool_use.answer_grammar(req.response_format)
    if answer is not None:
        params = dataclasses.replace(params, grammar=answer.whole)
    lease = await _acquire(req.model or None)
    echo = prompt if req.echo and isinstance(prompt, str) else None
    fmt = CompletionFormat(lease.key, logprobs=params.logprobs, echo=echo)

    async def encode() -> list[int]:
        if isinstance(prompt, str):
            return await lease.encode_text(prompt)
        vocab = getattr(lease.info, "vocab_size", 0)
        if vocab and max(prompt) >= vocab:
            raise invalid_request(f"prompt token ids must be below the vocabulary size {vocab}", param="prompt")
        return prompt

    return await _answer(lease, encode, "prompt", params, fmt, Assembler(),
                         stream=bool(req.stream), include_usage=req.include_usage,
                         requested=schemas.requested_max_tokens(req))


async def _acquire(name: str | None) -> Lease:
    """Wait for the model's turn. The lease is also released when the request's task ends, so a
    response that is abandoned before its body starts (client gone) cannot keep the turn."""
    lease = await state().pool.acquire(name)
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(lambda _: lease.release())
    return lease


async def _answer(
    lease: Lease,
    encode: Callable[[], Awaitable[list[int]]],
    param: str,
    params: SamplingParams,
    fmt: AnswerFormat,
    assembler: Assembler,
    *,
    stream: bool,
    include_usage: bool,
    requested: tuple[int, str] | None = None,
) -> Response:
    streaming = False
    try:
        prompt_ids = await encode()
        if not prompt_ids:
            raise invalid_request(f"The {param} is empty", param=param)
        too_long = schemas.error_for_context(len(prompt_ids), lease.info.context_length, param, requested)
        if too_long is not None:
            raise too_long
        if stream:
            streaming = True
            return sse.event_stream(_events(lease, prompt_ids, params, fmt, assembler, include_usage))
        texts: list[str] = []
        tokens: list[TokenChoice] = []
        async for step in lease.stream(prompt_ids, params):
            if (piece := assembler.feed(step)) is not None:
                texts.append(piece.text)
                tokens += piece.tokens
        last, calls = assembler.finish()
        if last is not None:
            texts.append(last.text)
            tokens += last.tokens
        answer = fmt.response("".join(texts), calls, assembler.finish_reason, tokens,
                              len(prompt_ids), assembler.completion_tokens)
        return json_response(answer)
    finally:
        if not streaming:
            lease.release()


async def _events(
    lease: Lease,
    prompt_ids: list[int],
    params: SamplingParams,
    fmt: AnswerFormat,
    assembler: Assembler,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The SSE body. One chunk is held back so that the last one carries ``finish_reason``; an
    engine error after the headers went out becomes an ``{"error": ...}`` event. The events of the
    steps that were ready together are written as one chunk (one send, not one per token). Tool
    calls stream as they are generated (``ChatFormat.chunks``)."""

    def chunk(payload: dict[str, Any]) -> bytes:
        if include_usage:
            payload["usage"] = None
        return sse.event(payload)

    try:
        for opening in fmt.opening():
            yield chunk(opening)
        held: dict[str, Any] | None = None
        try:
            async for steps in lease.batches(prompt_ids, params):
                ready: list[bytes] = []
                for step in steps:
                    piece = assembler.feed(step)
                    for payload in fmt.chunks(piece) if piece is not None else ():
                        if held is not None:
                            ready.append(chunk(held))
                        held = payload
                if ready:
                    yield b"".join(ready)
            last, _ = assembler.finish()
        except Exception as exc:
            yield sse.event(from_exception(exc).payload())
            return
        for payload in fmt.chunks(last) if last is not None else ():
            if held is not None:
                yield chunk(held)
            held = payload
        finish = assembler.finish_reason
        if held is not None:
            held["choices"][0]["finish_reason"] = finish
            yield chunk(held)
        else:
            yield chunk(fmt.finish_only(finish))
        if include_usage:
            yield sse.event(fmt.usage_chunk(len(prompt_ids), assembler.completion_tokens))
        yield sse.DONE
    finally:
        lease.release()
