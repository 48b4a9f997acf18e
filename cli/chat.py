"""``hflocal chat [KEY]``: a streaming chat with the running agent, over its OpenAI-compatible HTTP API.

A plain client of ``/v1/chat/completions`` (stdlib ``urllib`` and a few lines of SSE parsing; no
extra dependency). What a user may rely on:

- The conversation is kept and sent with every question; ``/clear`` (or ``/reset``) forgets it,
  ``/exit`` (or ``/quit``) and Ctrl-D end the chat, ``/help`` lists these. Any other line that starts
  with ``/word`` is answered here ("unknown command /word; try /help") and never sent to the model.
- Ctrl-C while an answer streams stops that answer: the connection is closed, which stops the
  generation in the agent within a step, and the prompt comes back (the partial answer stays in the
  conversation). Ctrl-C at the prompt does not quit.
- With stdin not a terminal every input line is one question and only the answers are printed, one
  per question, so ``echo "What is the capital of Germany?" | hflocal chat`` works in scripts.
- ``--json``: no banner and no streaming; each answer is one JSON line on stdout,
  ``{"model", "question", "answer", "completed"}``, and each failure one ``{"error": {"code",
  "message"}}`` line on stderr.
- Failures are one line on stderr: no agent, no active model (it says ``hflocal use``), an unknown
  model, an error from the server. The exit status is 0, or 1 if a question failed or the agent
  could not be reached.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Generator
from pathlib import Path
from typing import Any

from ipc.connection import ConnectionInfo

READ_TIMEOUT_S = 600.0
"""Longest silence tolerated from the agent (a model load, a long queue) before giving up."""
HELP = "/exit or Ctrl-D quits, Ctrl-C stops an answer, /clear (or /reset) forgets the conversation, /help shows this"
QUIT = ("/exit", "/quit", "/bye")
CLEAR = ("/clear", "/reset")
HELP_WORDS = ("/help", "/?")
_COMMAND = re.compile(r"/[A-Za-z?][\w-]*")


class ChatError(Exception):
    """One line for the user; ``fatal`` when the agent itself cannot be reached."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


def _error_message(body: bytes, status: int) -> str:
    try:
        error = json.loads(body)["error"]
        return str(error.get("message") or error)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = body.decode("utf-8", "replace").strip()
        return f"HTTP {status}: {text[:200]}" if text else f"HTTP {status}"


class ChatClient:
    """The few HTTP calls the chat needs, with deadlines; never through a proxy (loopback)."""

    def __init__(self, http_url: str, api_key: str | None = None, timeout: float = READ_TIMEOUT_S) -> None:
        self.base = http_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _open(self, path: str, payload: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=self.headers,
                                         method="POST" if data is not None else "GET")
        try:
            return self._opener.open(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):
                raise ChatError(_error_message(exc.read(), exc.code)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ChatError(
                f"the agent at {self.base} is not answering ({reason}); start it with `hflocal serve`", fatal=True
            ) from None

    def get_json(self, path: str, timeout: float = 15.0) -> Any:
        with contextlib.closing(self._open(path, timeout=timeout)) as response:
            return json.loads(response.read())

    def stream(self, payload: dict[str, Any]) -> Generator[str, None, None]:
        """The answer's text pieces as they arrive. Closing the generator closes the connection."""
        response = self._open("/v1/chat/completions", {**payload, "stream": True})
        with contextlib.closing(response):
            for raw in response:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if "error" in event:
                    raise ChatError(_error_message(data.encode(), 200))
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content
        raise ChatError("the answer ended before it was complete (the agent may have stopped)")


def _api_key(info: ConnectionInfo) -> str | None:
    key = os.environ.get("HFLOCAL_API_KEY")
    if key:
        return key
    if not info.home:
        return None
    try:
        from agent.settings import load_settings

        return load_settings(Path(info.home) / "settings.toml").http.api_key
    except Exception:  # an unreadable settings file is the agent's problem to report
        return None


AMBIGUOUS = " has several variants, name one: "
"""In the agent's answer for a model id with several variants installed, none active (docs/protocol.md)."""


def _check_model(client: ChatClient, model: str | None) -> str:
    """The model the chat will use, or a ``ChatError`` saying how to get one."""
    if model is not None:
        try:
            found = client.get_json("/v1/models/" + urllib.parse.quote(model, safe="/:"))
        except ChatError as exc:
            if exc.fatal or AMBIGUOUS in str(exc):  # the agent's refusal names the variants to choose from
                raise
            raise ChatError(f"{model!r} is not installed; `hflocal ls` lists what is") from None
        return str(found.get("id") or model)
    health = client.get_json("/health")
    active = health.get("model")
    if not active:
        raise ChatError("no model is active; choose one with `hflocal use KEY` (`hflocal ls` lists the installed ones)")
    if health.get("model_state") == "failed":
        raise ChatError(f"the active model {active} could not be loaded: {health.get('error')}; see `hflocal status`")
    return str(active)


def _read(interactive: bool) -> str | None:
    """One line of input, without its newline; ``None`` at end of input."""
    if interactive:
        try:
            return input(">>> ")
        except EOFError:
            print()
            return None
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\r\n")


def local_command(text: str) -> str | None:
    """The chat command ``text`` starts with (``/clear``), or ``None`` when it is a question for the
    model. Only ``/word`` counts, so a question such as "/usr/bin holds what?" still goes to the model."""
    first = text.split(maxsplit=1)[0] if text else ""
    return first if _COMMAND.fullmatch(first) else None


def _fail(message: str, as_json: bool, code: str = "error") -> None:
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}), file=sys.stderr, flush=True)
    else:
        print(f"hflocal: {message}", file=sys.stderr, flush=True)


def _answer(client: ChatClient, payload: dict[str, Any], echo: bool = True) -> tuple[str, bool]:
    """Stream one answer to stdout (``echo``) or only collect it; returns ``(text, completed)``.
    Ctrl-C stops it (not completed)."""
    pieces: list[str] = []
    stream = client.stream(payload)
    try:
        for piece in stream:
            pieces.append(piece)
            if echo:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()
        if echo:
            sys.stdout.write("\n[stopped]\n")
            sys.stdout.flush()
        return "".join(pieces), False
    except ChatError:
        if pieces and echo:
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    finally:
        stream.close()
    if echo:
        sys.stdout.write("\n")
        sys.stdout.flush()
    return "".join(pieces), True


def run_chat(
    info: ConnectionInfo,
    model: str | None = None,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    as_json: bool = False,
) -> int:
    """The chat loop; returns the exit status."""
    client = ChatClient(info.http_url, _api_key(info))
    interactive = sys.stdin.isatty()
    try:
        chosen = _check_model(client, model)
    except ChatError as exc:
        _fail(str(exc), as_json, "agent_not_running" if exc.fatal else "model")
        return 1
    if interactive and not as_json:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
        print(f"chatting with {chosen} ({HELP})")
    start: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    history = list(start)
    failed = False
    while True:
        try:
            line = _read(interactive)
        except KeyboardInterrupt:
            print(f"\n({HELP})")
            continue
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        command = local_command(text)
        if command in QUIT:
            break
        if command in CLEAR:
            history = list(start)
            if not as_json:
                print("(conversation cleared)")
            continue
        if command in HELP_WORDS:
            if not as_json:
                print(HELP)
            continue
        if command is not None:
            _fail(f"unknown command {command}; try /help", as_json, "unknown_command")
            continue
        history.append({"role": "user", "content": line})
        payload: dict[str, Any] = {"messages": history}
        if model is not None:
            payload["model"] = model
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        if temperature is not None:
            payload["temperature"] = temperature
        try:
            answer, completed = _answer(client, payload, echo=not as_json)
        except ChatError as exc:
            history.pop()
            _fail(str(exc), as_json, "agent_not_running" if exc.fatal else "error")
            if exc.fatal:
                return 1
            failed = True
            continue
        if as_json:
            print(json.dumps({"model": chosen, "question": line, "answer": answer, "completed": completed}), flush=True)
        if answer:
            history.append({"role": "assistant", "content": answer})
        else:
            history.pop()
    return 1 if failed else 0


__all__ = ["ChatClient", "ChatError", "run_chat"]
