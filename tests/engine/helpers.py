"""Helpers shared by the engine tests."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from agent.engine.model import OnnxChatModel
from agent.engine.types import SamplingParams, Step

SCRIPTED_REPLY = "Hello world! café 日🙂"
"""The scripted model's greedy reply. Multi-byte characters span several tokens: é is one token of
2 bytes, 日 three 1-byte tokens, 🙂 four."""


def run(model: OnnxChatModel, prompt: list[int], cancel: threading.Event | None = None, **params: object) -> list[Step]:
    """All steps of one generation."""
    return list(model.generate(prompt, SamplingParams(**params), cancel or threading.Event()))  # type: ignore[arg-type]


def token_ids(steps: Iterable[Step]) -> list[int]:
    return [choice.token_id for step in steps for choice in step.tokens]


def text(steps: Iterable[Step]) -> str:
    return "".join(step.text for step in steps)


def chat_prompt(model: OnnxChatModel, content: str = "Hello world") -> list[int]:
    return model.encode_chat([{"role": "user", "content": content}])


def write_file(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path
