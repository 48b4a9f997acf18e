"""Answer bodies of the OpenAI routes: engine steps in, ``chat.completion(.chunk)`` and
``text_completion`` objects out, shaped as in ``openai-subset.openapi.json``.

``Assembler`` turns the engine's steps into content pieces (holding back a possible tool call) and
counts completion tokens exactly: ``usage.completion_tokens`` is the number of tokens the engine
generated, ``prompt_tokens`` the length of the tokenized prompt.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from agent.engine.types import Step, TokenChoice, ToolFormat
from agent.http.tools import CallDelta, ParsedToolCall, ToolCallParser


@dataclass(slots=True)
class Piece:
    """Text that can be sent now, with the tokens generated since the previous piece."""

    text: str
    tokens: list[TokenChoice] = field(default_factory=list)
    calls: list[CallDelta] = field(default_factory=list)
    """Tool-call pieces generated since the previous piece (streamed as they come)."""


class Assembler:
    """Collects steps into pieces; knows the finish reason and the completion token count."""

    def __init__(self, *, tool_format: ToolFormat | None = None) -> None:
        self._tools = ToolCallParser(tool_format) if tool_format is not None else None
        self._markers = tool_format.markers if tool_format is not None else {}
        self._tokens: list[TokenChoice] = []
        self.completion_tokens = 0
        self.finish_reason = "stop"

    def feed(self, step: Step) -> Piece | None:
        self.completion_tokens += len(step.tokens)
        self._tokens.extend(step.tokens)
        if step.finish_reason is not None:
            # "cancelled" only happens when the client is gone; report it as a stop if anyone asks.
            self.finish_reason = "length" if step.finish_reason == "length" else "stop"
        text = step.text
        if self._markers and any(t.token_id in self._markers for t in step.tokens):
            # special-token markers are not in decoded text; the parser needs to see them
            text = "".join(self._markers.get(t.token_id, "") for t in step.tokens) + text
        text = self._tools.feed(text) if self._tools else text
        deltas = self._tools.deltas if self._tools else []
        if not text and not deltas:
            return None
        if not text:
            return Piece("", [], list(deltas))  # a call's tokens are reported with the last piece
        piece, self._tokens = Piece(text, self._tokens, list(deltas)), []
        return piece

    def finish(self) -> tuple[Piece | None, list[ParsedToolCall]]:
        """The last piece (held-back text, tokens and call pieces not yet sent) and the tool calls.
        ``finish_reason`` is ``tool_calls`` when calls were made, unless the budget ran out inside one
        (then ``length``: the last call's arguments are incomplete)."""
        text, calls = self._tools.finish() if self._tools else ("", [])
        deltas = list(self._tools.deltas) if self._tools else []
        if calls and not (self._tools and self._tools.cut):
            self.finish_reason = "tool_calls"
        piece = Piece(text, self._tokens, deltas) if text or self._tokens or deltas else None
        self._tokens = []
        return piece, calls


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_logprobs(tokens: list[TokenChoice]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": t.bytes,
                "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": a.bytes} for a in t.top],
            }
            for t in tokens
        ],
        "refusal": None,
    }


class ChatFormat:
    """Builds ``chat.completion`` answers and ``chat.completion.chunk`` events for one request."""

    def __init__(self, model: str, *, logprobs: bool) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.logprobs = logprobs

    def _chunk(self, delta: dict[str, Any], finish: str | None = None,
               tokens: list[TokenChoice] | None = None) -> dict[str, Any]:
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": chat_logprobs(tokens or []) if self.logprobs and tokens is not None else None,
            "finish_reason": finish,
        }
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [choice]}

    def opening(self) -> list[dict[str, Any]]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def chunks(self, piece: Piece) -> list[dict[str, Any]]:
        """The piece's text (with its tokens' logprobs), then one chunk per tool-call piece: a call's
        first carries ``index``, ``id``, ``type`` and ``function.name``, the rest more ``arguments``."""
        out = [self._chunk({"content": piece.text}, None, piece.tokens)] if piece.text or piece.tokens else []
        for delta in piece.calls:
            call: dict[str, Any] = {"index": delta.index}
            if delta.id is not None:
                call.update(id=delta.id, type="function", function={"name": delta.name, "arguments": delta.arguments})
            else:
                call["function"] = {"arguments": delta.arguments}
            out.append(self._chunk({"tool_calls": [call]}))
        return out

    def finish_only(self, finish: str) -> dict[str, Any]:
        return self._chunk({}, finish)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}

    def response(self, text: str, calls: list[ParsedToolCall], finish: str, tokens: list[TokenChoice],
                 prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None,
                                   "refusal": None}
        if calls:
            message["tool_calls"] = [call.as_openai() for call in calls]
        choice = {"index": 0, "message": message, "finish_reason": finish,
                  "logprobs": chat_logprobs(tokens) if self.logprobs else None}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}


class CompletionFormat:
    """Builds ``text_completion`` answers and stream events for one request."""

    def __init__(self, model: str, *, logprobs: bool, echo: str | None = None) -> None:
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.logprobs = logprobs
        self.echo = echo
        self._offset = len(echo) if echo else 0

    def _logprobs(self, tokens: list[TokenChoice]) -> dict[str, Any]:
        offsets = []
        for t in tokens:
            offsets.append(self._offset)
            self._offset += len(t.token)
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{a.token: a.logprob for a in t.top} for t in tokens],
            "text_offset": offsets,
        }

    def _chunk(self, text: str, finish: str | None, tokens: list[TokenChoice] | None) -> dict[str, Any]:
        logprobs = self._logprobs(tokens or []) if self.logprobs and tokens is not None else None
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}

    def opening(self) -> list[dict[str, Any]]:
        return [self._chunk(self.echo, None, None)] if self.echo else []

    def chunks(self, piece: Piece) -> list[dict[str, Any]]:
        return [self._chunk(piece.text, None, piece.tokens)]  # completions never parse tool calls

    def finish_only(self, finish: str) -> dict[str, Any]:
        return self._chunk("", finish, [] if self.logprobs else None)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [], "usage": usage(prompt_tokens, completion_tokens)}

    def response(self, text: str, calls: list[ParsedToolCall], finish: str, tokens: list[TokenChoice],
                 prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        chunk = self._chunk((self.echo or "") + text, finish, tokens)
        chunk["usage"] = usage(prompt_tokens, completion_tokens)
        return chunk


AnswerFormat = ChatFormat | CompletionFormat
