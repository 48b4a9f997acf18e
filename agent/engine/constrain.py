"""Constrained decoding with llguidance: a grammar turns into a token mask at every step.

A request's ``SamplingParams.grammar`` is an llguidance grammar (what ``grammar_for`` builds from a
JSON schema, a Lark grammar or a regex; tool calls build Lark grammars with inline ``%json``). The
decode loop asks a ``Constraint`` for the tokens the grammar allows next, sets every other logit to
``-inf`` before penalties and sampling, and tells it which token was chosen. Where the grammar
leaves a single continuation (the rest of a key, ``": "``, a closing brace...) ``forced()`` returns
those tokens and the loop appends them without sampling.

llguidance sees the vocabulary through the model's own ``ModelTokenizer``: every token as the bytes
it adds to decoded text, with only the tokenizer's *special* added tokens marked special. An added
token that is not special (Qwen's ``<tool_call>``) is plain text to the grammar, as it is to the
chat template and to the tool-call parser. Special tokens are named in Lark as ``<[id]>``.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import llguidance
import llguidance.numpy as llnp
import numpy as np

from agent.engine.tokenizer import ModelTokenizer
from agent.engine.types import InvalidRequestError


class GrammarError(InvalidRequestError):
    """A grammar (JSON schema, Lark, regex) that llguidance cannot compile; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def grammar_for(kind: str, source: str | dict[str, Any], param: str) -> str:
    """The llguidance grammar of a JSON schema (``json_schema``), a Lark grammar (``lark``) or a
    regex (``regex``); raises ``GrammarError`` naming ``param`` when it does not compile."""
    if kind == "json_schema":
        if not isinstance(source, dict):
            raise GrammarError("a JSON schema must be an object", param)
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(json_options(source)))
        except (ValueError, TypeError) as exc:
            raise GrammarError(f"invalid JSON schema: {exc}", param) from None
    elif kind == "lark":
        grammar = llguidance.LLMatcher.grammar_from_lark(str(source))
    elif kind == "regex":
        grammar = llguidance.LLMatcher.grammar_from_regex(str(source))
    else:  # pragma: no cover - callers pass one of the three
        raise GrammarError(f"unknown grammar kind {kind!r}", param)
    check_grammar(grammar, param)
    return grammar


JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""How constrained JSON is written: ``{"a": 1, "b": [2, 3]}`` (Python's ``json.dumps`` style, the
most common in training data). No free whitespace: a model cannot pad its answer until it runs out
of tokens, and every schema ends as soon as its value closes."""


def json_options(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with llguidance's JSON options (``x-guidance``) set to ``JSON_STYLE`` unless the
    request chose its own (a documented extension)."""
    if "x-guidance" in schema:
        return schema
    return {**schema, "x-guidance": JSON_STYLE}


def check_grammar(grammar: str, param: str) -> None:
    """Raise ``GrammarError`` naming ``param`` if llguidance cannot compile ``grammar``."""
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error and not error.startswith("WARNING"):
        raise GrammarError(f"the grammar does not compile: {_first_line(error)}", param)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


class _Vocabulary:
    """What ``llguidance.TokenizerWrapper`` reads: token bytes, special ids, eos/bos, encode."""

    def __init__(self, tokenizer: ModelTokenizer, eos: int) -> None:
        self.eos_token_id = eos
        self.bos_token_id = tokenizer.bos_token_id
        self.special_token_ids = sorted(tokenizer.special_ids)
        self.tokens = [
            # llguidance marks special tokens itself; empty pieces (unused ids) stay empty
            tokenizer.token_bytes(i) if i not in tokenizer.special_ids else tokenizer.token_text(i).encode()
            for i in range(tokenizer.vocab_size)
        ]
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode_rendered(text)


_BYTE_PENALTY = np.where(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(bool), 0.0, -np.inf
).astype(np.float32)
"""Row ``b``: the logit offsets of the 8 tokens whose bits are byte ``b`` of a bitmask (bit 0 first)."""

_BIT = np.arange(32, dtype=np.intp)
_SPARSE_FRACTION = 8
"""``mask`` copies allowed tokens one by one when at most 1/8 of the bitmask words are non-zero."""

_lock = threading.Lock()


def ll_tokenizer(tokenizer: ModelTokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of this model's vocabulary, built once per tokenizer (a 128k vocabulary
    takes a fraction of a second) and shared by its requests."""
    cached = getattr(tokenizer, "_llguidance", None)
    if cached is not None:
        return cached
    with _lock:
        cached = getattr(tokenizer, "_llguidance", None)
        if cached is None:
            eos = sorted(tokenizer.eos_token_ids)
            vocab = _Vocabulary(tokenizer, eos[0] if eos else 0)
            cached = llguidance.LLTokenizer(
                llguidance.TokenizerWrapper(vocab), n_vocab=tokenizer.vocab_size, eos_token=eos or None
            )
            tokenizer._llguidance = cached  # type: ignore[attr-defined]
    return cached


class Constraint:
    """One request's grammar state: masks logits, consumes chosen tokens, offers forced ones."""

    def __init__(self, tokenizer: ModelTokenizer, grammar: str, param: str = "grammar") -> None:
        self._tok = ll_tokenizer(tokenizer)
        self._matcher = llguidance.LLMatcher(self._tok, grammar, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(f"the grammar does not compile: {_first_line(self._matcher.get_error())}", param)
        self._vocab = self._tok.vocab_size
        self._bitmask = llnp.allocate_token_bitmask(1, self._vocab)
        self._bytes = self._bitmask[0].view(np.uint8)
        # the mask as 0 / -inf per token (one row of 8 per bitmask byte), rewritten at every step
        self._penalty = np.empty((self._bytes.size, 8), dtype=np.float32)
        self._out: np.ndarray | None = None
        self._written: np.ndarray | None = None  # rows of ``_out`` that are not -inf (None: maybe all)

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more (only the end of the answer)."""
        return self._matcher.is_stopped()

    @property
    def failed(self) -> bool:
        return self._matcher.is_error()

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` with every token the grammar forbids set to ``-inf``; rows past llguidance's
        vocabulary are forbidden. ``logits`` is left as it is: the result is this constraint's own
        buffer, overwritten by the next call.

        No vocabulary-sized array is allocated per step. When few tokens are allowed (most steps of
        a JSON schema), only they are copied into a buffer that is otherwise ``-inf``; otherwise the
        bitmask bytes index a 256 x 8 table of ``0`` / ``-inf`` into a preallocated penalty row that
        is added to the logits (a finite logit plus 0 is itself, exactly)."""
        llnp.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        n = logits.shape[0]
        out = self._out
        if out is None or out.shape[0] != n:
            out = self._out = np.full(n, -np.inf, dtype=np.float32)
            self._written = np.empty(0, dtype=np.intp)
        words = self._bitmask[0]
        live = np.flatnonzero(words)
        if live.size * _SPARSE_FRACTION <= words.size:
            if self._written is None:
                out.fill(-np.inf)
            else:
                out[self._written] = -np.inf
            bits = np.unpackbits(words[live].view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
            allowed = (live[:, None] * 32 + _BIT)[bits.view(bool)]
            allowed = allowed[allowed < min(n, self._vocab)]
            out[allowed] = logits[allowed]
            self._written = allowed
            return out
        np.take(_BYTE_PENALTY, self._bytes, axis=0, out=self._penalty)
        penalty = self._penalty.reshape(-1)
        penalty[self._vocab :] = -np.inf  # the bitmask's last word may have bits past the vocabulary
        m = min(n, penalty.size)
        np.add(logits[:m], penalty[:m], out=out[:m])  # rows past the bitmask stay -inf
        self._written = None
        return out

    def accept(self, token: int) -> bool:
        """Record the chosen token; False if the grammar did not allow it."""
        return bool(self._matcher.consume_token(token))

    def forced(self) -> list[int]:
        """Tokens the grammar leaves no choice about, to append without sampling (consumed here)."""
        tokens = list(self._matcher.compute_ff_tokens())
        if tokens and not self._matcher.consume_tokens(tokens):
            return []
        return tokens

    def allows(self, token: int) -> bool:
        """Whether ``token`` may come next (used for eos: the answer may end here)."""
        llnp.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        word = int(self._bitmask[0, token // 32])
        return bool((word >> (token % 32)) & 1)
