"""One assistant turn on the chat-completions path, as plain events, for the APIs that are not
chat completions (Anthropic Messages, OpenAI Responses).

Those APIs are translated into a ``schemas.ChatCompletionRequest`` and run exactly as
``/v1/chat/completions`` runs it: the same checks, chat template, tools, sampling parameters,
context check, model turn and output assembly (tool calls included). What differs is only the
shape of the answer, so this module hands the answer over as a stream of ``TurnEvent``:

- ``TextDelta`` — assistant text that may be shown now (never part of a tool call);
- ``ToolCallDelta`` — a piece of a tool call as it is generated (``agent.http.tools.CallDelta``: the
  first of a call carries its id and name, the rest more arguments text), for streaming formatters;
- ``ToolCall`` — one complete tool call (name and JSON arguments), all of them after the text;
- ``Finished`` — the last event: why generation ended, the stop string that ended it (if any) and
  the exact token counts.

``keepalive`` wraps the stream so that a formatter can send its own keep-alive (Anthropic's
``ping``) while the model is still reading a long prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from agent.engine.types import SamplingParams, Step, ToolFormat
from agent.http import schemas, tool_use
from agent.http.errors import invalid_request
from agent.http.responses import Assembler
from agent.http.state import state
from agent.http.tools import CallDelta, ParsedToolCall
from agent.pool import Lease


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    call: ParsedToolCall


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    delta: CallDelta


@dataclass(frozen=True, slots=True)
class Finished:
    reason: str
    """``stop`` (eos or a stop string), ``length`` (the token budget or the context ran out) or
    ``tool_calls`` (the turn ended with tool calls)."""
    stop_sequence: str | None
    """The stop string that ended the turn, if one did."""
    prompt_tokens: int
    completion_tokens: int


TurnEvent = TextDelta | ToolCallDelta | ToolCall | Finished


@dataclass(slots=True)
class Turn:
    """A prepared turn: the model's lease (held until ``events`` ends or ``release``), the prompt
    and the request's options. Create with ``prepare``."""

    lease: Lease
    prompt_ids: list[int]
    params: SamplingParams
    tool_format: ToolFormat | None

    @property
    def model(self) -> str:
        return self.lease.key

    def release(self) -> None:
        self.lease.release()

    async def events(self) -> AsyncGenerator[TurnEvent, None]:
        """Run the generation. Always ends with ``Finished`` unless the engine raises; the lease is
        released when the iterator ends, is closed, or its task is cancelled (client gone)."""
        assembler = Assembler(tool_format=self.tool_format)
        stops = tuple(self.params.stop)
        raw = bytearray()
        last: Step | None = None
        try:
            async for steps in self.lease.batches(self.prompt_ids, self.params):
                for step in steps:
                    if stops:
                        for token in step.tokens:
                            raw += bytes(token.bytes)
                    last = step
                    piece = assembler.feed(step)
                    if piece is not None:
                        if piece.text:
                            yield TextDelta(piece.text)
                        for delta in piece.calls:
                            yield ToolCallDelta(delta)
            rest, calls = assembler.finish()
            if rest is not None:
                if rest.text:
                    yield TextDelta(rest.text)
                for delta in rest.calls:
                    yield ToolCallDelta(delta)
            for call in calls:
                yield ToolCall(call)
            reason = assembler.finish_reason
            matched = None
            if reason == "stop" and stops and last is not None:
                matched = matched_stop(stops, raw.decode("utf-8", errors="replace"))
            yield Finished(reason, matched, len(self.prompt_ids), assembler.completion_tokens)
        finally:
            self.lease.release()


def matched_stop(stops: Sequence[str], generated: str) -> str | None:
    """The stop string that ended ``generated`` (the raw text of every generated token), chosen by
    the engine's rule (``agent.engine.detokenize.StopMatcher``): the one that is completed first,
    then the one that starts first. ``None`` when none occurs (the turn ended on eos)."""
    best: tuple[int, int, str] | None = None
    for stop in stops:
        at = generated.find(stop) if stop else -1
        if at >= 0 and (best is None or (at + len(stop), at) < best[:2]):
            best = (at + len(stop), at, stop)
    return best[2] if best is not None else None


async def prepare(req: schemas.ChatCompletionRequest, param: str = "messages") -> Turn:
    """Check ``req`` as ``/v1/chat/completions`` does, take the model's turn and tokenize the
    prompt. Raises ``ApiError`` (400 naming ``param`` for an empty or too long prompt) or the
    pool's errors; on any error the turn is given back."""
    schemas.check_chat(req)
    params = schemas.sampling_params(req, state().settings.models.default_max_tokens)
    lease = await state().pool.acquire(req.model or None)
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(lambda _: lease.release())
    try:
        use = tool_use.plan(req, lease.info)
        params = dataclasses.replace(params, grammar=use.grammar)
        prompt_ids = await lease.encode_chat(use.messages, tools=use.tools)
        if not prompt_ids:
            raise invalid_request(f"The {param} is empty", param=param)
        too_long = schemas.error_for_context(len(prompt_ids), lease.info.context_length, param)
        if too_long is not None:
            raise too_long
    except BaseException:
        lease.release()
        raise
    return Turn(lease, prompt_ids, params, tool_format=use.format)


async def count_prompt_tokens(req: schemas.ChatCompletionRequest) -> tuple[str, int]:
    """(variant key, prompt tokens) of ``req`` rendered as ``prepare`` renders it, without
    generating. It waits for the model's turn like any request."""
    turn = await prepare(req)
    turn.release()
    return turn.model, len(turn.prompt_ids)


class Tick:
    """What ``keepalive`` yields when ``every`` seconds passed without an event."""


TICK = Tick()


async def keepalive(events: AsyncGenerator[TurnEvent, None], every: float) -> AsyncIterator[TurnEvent | Tick]:
    """``events`` with ``TICK`` inserted whenever ``every`` seconds pass without one (a long
    prompt is being read). Closing this iterator closes ``events``."""
    pending: asyncio.Task[TurnEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield TICK
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                pending = None
                return
            pending = None
            yield event
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await events.aclose()
