"""Tool calls in generated text, in the model's format (``agent.engine.tool_format``); Hermes/Qwen
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` by default.

Text before the first call marker streams as content. From the marker on, ``CallStreamer`` reads the
call objects as they grow: a call's head (``id``, name) goes out as soon as its name is known, its
arguments' raw JSON as it is generated (``ToolCallParser.deltas``). At the end the whole capture is
parsed; output from which no call was streamed and that does not parse comes back as plain content,
unchanged: a model that merely talks about tags loses nothing.
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
class CallDelta:
    """A piece of the ``index``-th call, as it is generated: the first carries ``id`` and ``name``,
    the rest only more ``arguments`` text (the raw JSON the model writes)."""

    index: int
    id: str | None
    name: str | None
    arguments: str


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
        self._streamer = CallStreamer(self._fmt)
        self._markers = [m for m in {self._fmt.open, self._fmt.close, OPEN, CLOSE} if m]
        self.deltas: list[CallDelta] = []
        """Call pieces found by the last ``feed`` (see ``CallDelta``)."""
        self.cut = False
        """After ``finish``: the output ended inside a call that was already streamed."""

    def feed(self, text: str) -> str:
        """Return the part of ``text`` that is surely content; keep the rest for ``finish``."""
        self._held += text
        self.deltas = []
        if self._capturing:
            self._scan()
            return ""
        if self._bare and not self._shown:
            stripped = self._held.lstrip()
            if not stripped:
                return ""
            if stripped.startswith("{"):
                self._capturing = True
                self._scan()
                return ""
        start = self._held.find(self._open) if self._open else -1
        if start >= 0:
            out, self._held = self._held[:start], self._held[start:]
            self._capturing = True
            self._shown = self._shown or bool(out)
            self._scan()
            return out
        opener = self._open
        keep = next((k for k in range(len(opener) - 1, 0, -1) if self._held.endswith(opener[:k])), 0)
        cut = len(self._held) - keep
        out, self._held = self._held[:cut], self._held[cut:]
        self._shown = self._shown or bool(out)
        return out

    def _scan(self) -> None:
        """Stream the calls of the captured text, short of a marker that may still be growing."""
        held = self._held
        keep = max((k for m in self._markers for k in range(len(m) - 1, 0, -1) if held.endswith(m[:k])), default=0)
        self.deltas = self._streamer.scan(held, len(held) - keep)

    def finish(self) -> tuple[str, list[ParsedToolCall]]:
        """At the end: (content still held back, tool calls). Unparseable output comes back as content,
        unless calls were already streamed from it (``deltas``): those stay calls, as sent."""
        held, self._held = self._held, ""
        self.deltas = []
        if not self._capturing:
            return held, []
        self.deltas = self._streamer.scan(held, len(held))
        streamed = self._streamer.calls
        self.cut = self._streamer.complete < len(streamed)
        calls = _parse_calls(held, self._fmt)
        if streamed:
            same = len(calls) == len(streamed) and all(c.name == s[1] for c, s in zip(calls, streamed, strict=True))
            return "", [ParsedToolCall(id=s[0], name=s[1], arguments=_exact(s[2], calls[i].arguments) if same else s[2])
                        for i, s in enumerate(streamed)]
        if not calls:
            return held, []
        return "", calls


_DECODER = json.JSONDecoder()


def _exact(raw: str, parsed: str) -> str:
    """The arguments as streamed when they are the parsed value (they are, but for a model that
    wrote them as a JSON string), else the parsed text."""
    try:
        return raw if json.loads(raw) == json.loads(parsed) else parsed
    except json.JSONDecodeError:
        return parsed


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


class CallStreamer:
    """Reads call objects out of captured output as it grows: one ``{"name": ..., <args key>:
    {...}}`` per call (inside a list for list formats), markers and separators between them. Emits a
    call's head once its name is known and its arguments' raw text as it arrives."""

    def __init__(self, fmt: ToolFormat) -> None:
        self._args_key = fmt.args_key
        self._markers = sorted({fmt.open, fmt.close, OPEN, CLOSE} - {""}, key=len, reverse=True)
        self._level = 2 if fmt.list_body else 1
        self._depth = 0
        self._in_string = self._escape = False
        self._string: list[str] | None = None
        self._key: str | None = None
        self._expect_key = False
        self._name: str | None = None
        self._args: list[str] | None = None
        self._args_open = False
        self._pending = ""
        self.calls: list[list[str]] = []
        """Per emitted call: [id, name, arguments so far]."""
        self.complete = 0
        self._at = 0

    def scan(self, text: str, end: int) -> list[CallDelta]:
        """Scan ``text`` (the whole capture) up to ``end``; the deltas found."""
        out: list[CallDelta] = []
        while self._at < end:
            if not self._in_string:
                marker = next((m for m in self._markers if text.startswith(m, self._at)), None)
                if marker is not None:
                    self._at += len(marker)
                    continue
            c = text[self._at]
            self._at += 1
            self._char(c, out)
        merged: list[CallDelta] = []
        for delta in out:  # one arguments piece per call per scan
            last = merged[-1] if merged else None
            same_call = last is not None and delta.id is None and last.index == delta.index
            if last is not None and same_call and (last.id is None or not last.arguments):
                merged[-1] = CallDelta(last.index, last.id, last.name, last.arguments + delta.arguments)
            else:
                merged.append(delta)
        return merged

    def _char(self, c: str, out: list[CallDelta]) -> None:
        if self._args_open:
            self._args_text(c, out)
        if self._in_string:
            if self._string is not None:
                self._string.append(c)
            if self._escape:
                self._escape = False
            elif c == "\\":
                self._escape = True
            elif c == '"':
                self._in_string = False
                self._string_done()
            return
        if c == '"':
            self._in_string = True
            if self._depth == self._level and not self._args_open:
                self._string = [c]
        elif c in "{[":
            self._depth += 1
            if self._depth == self._level and c == "{":
                self._name, self._key, self._args, self._expect_key = None, None, None, True
            elif self._depth == self._level + 1 and self._key == self._args_key and self._args is None:
                self._args, self._args_open = [], True
                self._args_text(c, out)
        elif c in "}]":
            self._depth -= 1
            if self._depth == self._level and self._args_open:
                self._args_open = False
            elif self._depth == self._level - 1 and c == "}":
                self._call_done(out)
        elif self._depth == self._level and not self._args_open:
            if c == ":":
                self._expect_key = False
            elif c == ",":
                self._expect_key, self._key = True, None

    def _string_done(self) -> None:
        raw, self._string = self._string, None
        if raw is None:
            return
        try:
            value = json.loads("".join(raw))
        except json.JSONDecodeError:
            return
        if self._expect_key:
            self._key = value
        elif self._key == "name" and isinstance(value, str):
            self._name = value

    def _args_text(self, c: str, out: list[CallDelta]) -> None:
        assert self._args is not None
        self._args.append(c)
        if self._name is None:
            return
        if len(self.calls) <= self.complete:
            self.calls.append([f"call_{uuid.uuid4().hex[:24]}", self._name, ""])
            out.append(CallDelta(len(self.calls) - 1, self.calls[-1][0], self._name, ""))
        sent = self.calls[-1][2]
        text = "".join(self._args)
        if len(text) > len(sent):
            self.calls[-1][2] = text
            out.append(CallDelta(len(self.calls) - 1, None, None, text[len(sent):]))

    def _call_done(self, out: list[CallDelta]) -> None:
        if self._name is not None and len(self.calls) <= self.complete:
            # name came after the arguments, or no arguments: the whole call at once
            args = "".join(self._args) if self._args is not None else "{}"
            self.calls.append([f"call_{uuid.uuid4().hex[:24]}", self._name, args])
            out.append(CallDelta(len(self.calls) - 1, self.calls[-1][0], self._name, ""))
            out.append(CallDelta(len(self.calls) - 1, None, None, args))
        self.complete = len(self.calls)
