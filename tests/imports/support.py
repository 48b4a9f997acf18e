"""Shared by the import, chat and end-to-end tests: tiny GGUFs with a known answer, bounded waits,
and small HTTP helpers for the running agent."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any, TypeVar

from gguf import GGMLQuantizationType as QT

from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.fakes.tiny_model import (
    ASSISTANT_HEADER,
    CHAT_TEMPLATE,
    IM_END_ID,
    scripted_weights,
    tiny_shape,
    train_tokenizer,
)
from tests.support.worker import wait_until as wait_until  # re-exported for the tests here

T = TypeVar("T")


def write_scripted_gguf(path: Path, reply: str, *, matrix_type: QT = QT.Q8_0, seed: int = 0, **kwargs: Any) -> Path:
    """A llama GGUF whose greedy answer to any ChatML chat is ``reply`` (then ``<|im_end|>``).

    The scripted weights (``tests.fakes.tiny_model.scripted_weights``) have margins of ~10 logits,
    so the answer survives the GGUF's Q8_0 blocks and a 4-bit re-quantization alike."""
    tokenizer = train_tokenizer()
    shape = tiny_shape(tokenizer.get_vocab_size(), tie_word_embeddings=False)
    reply_ids = tokenizer.encode(reply, add_special_tokens=False).ids
    trigger = tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False).ids[-1]
    weights = scripted_weights(shape, [trigger, *reply_ids, IM_END_ID], seed)
    write_tiny_gguf(path, shape, weights, tokenizer, matrix_type=matrix_type, chat_template=CHAT_TEMPLATE, **kwargs)
    return path




def http_json(url: str, payload: dict[str, Any] | None = None, timeout: float = 60.0) -> tuple[int, Any]:
    """GET (or POST ``payload``) ``url`` on loopback; returns ``(status, decoded JSON)``."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def chat_answer(http_url: str, question: str, model: str | None = None, **extra: Any) -> str:
    payload: dict[str, Any] = {"messages": [{"role": "user", "content": question}], "temperature": 0, **extra}
    if model is not None:
        payload["model"] = model
    status, body = http_json(f"{http_url}/v1/chat/completions", payload)
    assert status == 200, body
    return str(body["choices"][0]["message"]["content"])
