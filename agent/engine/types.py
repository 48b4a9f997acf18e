"""The engine's public surface: what the serving layer (pool, HTTP, chat) may rely on.

Everything here is plain data or a Protocol; the implementation lives beside it. The engine is
synchronous and thread-confined: one ``generate`` runs at a time per ``LoadedModel`` (the pool
guarantees that) and it runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class EngineError(Exception):
    """Base of the engine's errors; ``code`` is the OpenAI/ZeroMQ error code to report."""

    code = "internal"


class ModelLoadError(EngineError):
    """The files could not be loaded (missing, corrupt, unsupported graph); the message says which."""

    code = "load_failed"


class ContextLengthExceeded(EngineError, ValueError):
    """Prompt (plus room for at least one new token) is longer than the model's context."""

    code = "context_length_exceeded"


class InvalidRequestError(EngineError, ValueError):
    """The request cannot be served as given (empty prompt, token id outside the vocabulary,
    ``max_tokens`` < 1, a closed model)."""

    code = "invalid_request"


class EmbeddingRequestError(InvalidRequestError):
    """An embedding request the model cannot serve as given (an input too long, ``dimensions`` it
    was not trained for...); ``param`` names the request field, ``code`` the error code."""

    def __init__(self, message: str, param: str = "input", code: str = "invalid_request") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class TemplateError(EngineError, ValueError):
    """The chat template could not render these messages (the template raised, or there is none)."""

    code = "invalid_request"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Validated sampling options. ``None`` means "the model's generation_config default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    repetition_penalty: float | None = None
    """Hugging Face's multiplicative penalty over prompt and generated tokens (not an OpenAI
    parameter); ``None`` = generation_config.json's ``repetition_penalty`` (1.0 = off)."""
    grammar: str | None = None
    """An llguidance grammar (``agent.engine.constrain.grammar_for``): only text it allows is
    generated, and the answer ends when it is complete."""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True, slots=True)
class TokenChoice:
    """One generated token with its logprob and, if asked, the most likely alternatives."""

    token_id: int
    token: str
    logprob: float
    bytes: list[int]
    top: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Step:
    """A piece of output. ``text`` may be empty while bytes of a character or a possible stop string
    are held back; the concatenation of all ``text`` is the exact completion. The last step has a
    ``finish_reason`` (``stop`` | ``length`` | ``cancelled``)."""

    text: str
    tokens: list[TokenChoice]
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ToolFormat:
    """How a model writes tool calls (``agent.engine.tool_format``)."""


    name: str
    native: bool
    open: str
    """The text that opens a call (``""``: none, the call is the bare JSON object)."""
    close: str = ""
    """The text that closes a call or a list of calls (``""``: none)."""
    args_key: str = "arguments"
    list_body: bool = False
    """The calls are one JSON array (mistral, phi4) rather than one object per block."""
    separator: str = ""
    """Between calls written one after another (llama3: ``;``)."""
    open_id: int | None = None
    """``open`` as one special token, when it is one."""
    close_id: int | None = None

    @property
    def markers(self) -> dict[int, str]:
        """Special-token markers by id (their text is not in decoded output)."""
        out: dict[int, str] = {}
        if self.open_id is not None:
            out[self.open_id] = self.open
        if self.close_id is not None:
            out[self.close_id] = self.close
        return out


@dataclass(frozen=True, slots=True)
class ModelInfo:
    path: Path
    context_length: int
    provider: str
    """The execution provider actually used, e.g. ``CPUExecutionProvider``."""
    requested_device: str
    fallback_reason: str | None
    """Set when the requested device could not be used and the CPU was used instead."""
    load_s: float
    quantization: str = ""
    onnx_file: Path | None = None
    """The model's own graph file (what the store holds)."""
    graph: str = "original"
    """``fused``: hflocal's fused graph runs (an import, or the fast path's rewrite of ``onnx_file``);
    ``original``: ``onnx_file`` itself runs, ``graph_note`` says why."""
    graph_note: str = ""
    kv_cache: bool = True
    """False for graphs without past_key_values inputs: each step re-runs the whole sequence."""
    chat_template: str = "model"
    """``model`` (the model's own), ``chatml-fallback`` (no template shipped, vocabulary has
    ``<|im_start|>``) or ``none`` (``encode_chat`` raises ``TemplateError``)."""
    vocab_size: int = 0
    eos_token_ids: tuple[int, ...] = ()
    tool_format: ToolFormat | None = None
    """How this model writes tool calls; ``None`` for models that do not chat (embeddings)."""


class LoadedModel(Protocol):
    info: ModelInfo

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Render the model's chat template and tokenize it (raises ``TemplateError``)."""

    def encode_text(self, text: str) -> list[int]:
        """Tokenize a raw prompt the way the model expects (BOS added if the tokenizer says so)."""

    def generate(
        self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[Step]:
        """Decode until eos, a stop string, ``max_tokens`` or the context end, or until ``cancel``
        is set (checked every step). Raises ``ContextLengthExceeded`` before any work if the prompt
        does not fit."""

    def close(self) -> None:
        """Release the session and its memory."""


class ModelLoader(Protocol):
    def __call__(
        self, path: Path, *, quantization: str, device: str, threads: int = 0, kind: str = "chat"
    ) -> LoadedModel:
        """Load the variant in ``path``; ``kind`` (``chat`` | ``embed``) picks the engine."""
        ...
