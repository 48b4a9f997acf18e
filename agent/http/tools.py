"""Tool calls in generated text, Hermes/Qwen style: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

This is the format of the chat templates of most small tool-calling models on the Hub (Qwen2.5,
Hermes, SmolLM3). Text before the first ``<tool_call>`` streams as content; from that tag on the
output is held back and parsed when generation ends. If it does not parse, it is returned as plain
content, unchanged: a model that merely talks about tags loses nothing.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from agent.engine.types import ToolFormat

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    id: str
    name: str
    arguments: str
    """JSON text, as OpenAI sends it."""

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class ToolCallParser:
    """Feed generated text piece by piece; get back what may be shown as content now.

    ``fmt`` is the model's call format (``agent.engine.tool_format``); the default is the Hermes
    markup. Text before the format's opening marker streams as content; from the marker on (or, for
    formats whose calls are bare JSON, from a ``{`` that starts the answer) it is held back and
    parsed at the end."""

    def __init__(self, fmt: ToolFormat | None = None) -> None:
        self._fmt = fmt or ToolFormat("hermes", True, OPEN, CLOSE)
        self._open = self._fmt.open
        self._bare = self._fmt.args_key == "parameters"
        self._held = ""
        self._shown = False
        self._capturing = False

    def feed(self, text: str) -> str:
        """Return the part of ``text`` that is surely content; keep the rest for ``finish``."""
        self._held += text
        if self._capturing:
            return ""
        if self._bare and not self._shown:
            stripped = self._held.lstrip()
            if not stripped:
                return ""
            if stripped.startswith("{"):
                self._capturing = True
                return ""
        start = self._held.find(self._open) if self._open else -1
        if start >= 0:
            out, self._held = self._held[:start], self._held[start:]
            self._capturing = True
            self._shown = self._shown or bool(out)
            return out
        opener = self._open
        keep = next((k for k in range(len(opener) - 1, 0, -1) if self._held.endswith(opener[:k])), 0)
        cut = len(self._held) - keep
        out, self._held = self._held[:cut], self._held[cut:]
        self._shown = self._shown or bool(out)
        return out

    def finish(self) -> tuple[str, list[ParsedToolCall]]:
        """At the end: (content still held back, tool calls). Unparseable calls come back as content."""
        held, self._held = self._held, ""
        if not self._capturing:
            return held, []
        calls = _parse_calls(held, self._fmt)
        if not calls:
            return held, []
        return "", calls


_DECODER = json.JSONDecoder()


def _parse_calls(text: str, fmt: ToolFormat) -> list[ParsedToolCall]:
    """Every call in ``text`` (markers, separators and whitespace between them allowed); an empty
    list if anything else is there."""
    for marker in {fmt.open, fmt.close, OPEN, CLOSE} - {""}:
        text = text.replace(marker, " ")
    calls: list[ParsedToolCall] = []
    at = 0
    while True:
        while at < len(text) and (text[at].isspace() or text[at] in ";,"):
            at += 1
        if at >= len(text):
            return calls
        try:
            value, at = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError:
            return []
        for item in value if isinstance(value, list) else [value]:
            call = _call_of(item)
            if call is None:
                return []
            calls.append(call)


def _call_of(data: Any) -> ParsedToolCall | None:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ParsedToolCall(id=f"call_{uuid.uuid4().hex[:24]}", name=data["name"], arguments=text)
