"""Tool calls in generated text, Hermes/Qwen style: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

This is the format of the chat templates of most small tool-calling models on the Hub (Qwen2.5,
Hermes, SmolLM3). Text before the first ``<tool_call>`` streams as content; from that tag on the
output is held back and parsed when generation ends. If it does not parse, it is returned as plain
content, unchanged: a model that merely talks about tags loses nothing.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    id: str
    name: str
    arguments: str
    """JSON text, as OpenAI sends it."""

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class ToolCallParser:
    """Feed generated text piece by piece; get back what may be shown as content now."""

    def __init__(self) -> None:
        self._held = ""
        self._capturing = False

    def feed(self, text: str) -> str:
        """Return the part of ``text`` that is surely content; keep the rest for ``finish``."""
        self._held += text
        if self._capturing:
            return ""
        start = self._held.find(OPEN)
        if start >= 0:
            out, self._held = self._held[:start], self._held[start:]
            self._capturing = True
            return out
        keep = next((k for k in range(len(OPEN) - 1, 0, -1) if self._held.endswith(OPEN[:k])), 0)
        cut = len(self._held) - keep
        out, self._held = self._held[:cut], self._held[cut:]
        return out

    def finish(self) -> tuple[str, list[ParsedToolCall]]:
        """At the end: (content still held back, tool calls). Unparseable calls come back as content."""
        held, self._held = self._held, ""
        if not self._capturing:
            return held, []
        calls: list[ParsedToolCall] = []
        for match in _BLOCK.finditer(held):
            call = _parse(match.group(1))
            if call is None:
                return held, []
            calls.append(call)
        outside = _BLOCK.sub("", held).strip()
        if not calls or outside:
            return held, []
        return "", calls


def _parse(body: str) -> ParsedToolCall | None:
    try:
        data = msgspec.json.decode(body.strip())
    except msgspec.DecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else msgspec.json.encode(arguments).decode()
    return ParsedToolCall(id=f"call_{uuid.uuid4().hex[:24]}", name=data["name"], arguments=text)
