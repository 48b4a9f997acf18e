"""The model's tokenizer: ``tokenizer.json`` through the ``tokenizers`` library, plus the parts of
``tokenizer_config.json`` / ``special_tokens_map.json`` that Hugging Face applies on top.

What a caller may rely on:

* ``encode_prompt`` tokenizes a raw prompt the way ``AutoTokenizer(text)`` does: when
  tokenizer_config.json states ``add_bos_token``/``add_eos_token`` those flags decide (and BOS is
  never doubled); when it states neither, tokenizer.json's own post-processor decides.
* ``encode_rendered`` tokenizes text produced by a chat template: no special tokens are added (the
  template writes them), as ``apply_chat_template(tokenize=True)`` does.
* ``token_bytes(id)`` is the exact UTF-8 bytes a token contributes to the text (byte-level BPE and
  SentencePiece byte-fallback tokens can be part of a character); ``token_text`` is those bytes
  decoded with U+FFFD for incomplete characters.
* ``eos_token_ids`` is the union of the tokenizer's eos and the ids the model files call eos.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from agent.engine.model_files import ModelConfig, read_json
from agent.engine.types import ModelLoadError

SPECIAL_TOKEN_KEYS = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte ↔ printable-character table, inverted: character → byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return {char: b for b, char in table.items()}


_BYTE_OF_CHAR = _bytes_to_unicode()


def _token_content(value: Any) -> str | None:
    """A special-token entry is either a string or an AddedToken dict with ``content``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _decoder_kinds(spec: Any) -> set[str]:
    """The decoder types named in tokenizer.json (flattening ``Sequence``); ``Replace ▁`` counts
    as ``Metaspace``."""
    kinds: set[str] = set()
    if not isinstance(spec, dict):
        return kinds
    kind = spec.get("type")
    if kind == "Sequence":
        for child in spec.get("decoders") or []:
            kinds |= _decoder_kinds(child)
    elif kind == "Replace":
        pattern = spec.get("pattern")
        if isinstance(pattern, dict) and pattern.get("String") == "▁":
            kinds.add("Metaspace")
    elif isinstance(kind, str):
        kinds.add(kind)
    return kinds


class ModelTokenizer:
    """Tokenizer, special tokens and eos ids of one model folder."""

    def __init__(self, folder: Path, config: ModelConfig, tokenizer_config: dict[str, Any]) -> None:
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"missing tokenizer.json in {folder}")
        try:
            self._tok = Tokenizer.from_file(str(path))
            decoder = json.loads(self._tok.decoder.__getstate__()) if self._tok.decoder is not None else None
        except Exception as exc:  # tokenizers raises plain Exception on a bad file
            raise ModelLoadError(f"cannot read tokenizer.json: {exc}") from exc
        self.config = tokenizer_config
        special_map = read_json(folder / "special_tokens_map.json", required=False)

        self.special_tokens: dict[str, str] = {}
        for key in SPECIAL_TOKEN_KEYS:
            content = _token_content(tokenizer_config.get(key))
            if content is None:
                content = _token_content(special_map.get(key))
            if content is not None:
                self.special_tokens[key] = content
        extra = tokenizer_config.get("additional_special_tokens", special_map.get("additional_special_tokens"))
        self.additional_special_tokens = [
            c for c in (_token_content(v) for v in (extra if isinstance(extra, list) else [])) if c is not None
        ]

        self.bos_token_id = self.token_to_id(self.special_tokens.get("bos_token"))
        if self.bos_token_id is None:
            self.bos_token_id = config.bos_token_id
        add_bos = tokenizer_config.get("add_bos_token")
        add_eos = tokenizer_config.get("add_eos_token")
        self._explicit_flags = isinstance(add_bos, bool) or isinstance(add_eos, bool)
        self.add_bos = add_bos is True
        self.add_eos = add_eos is True

        eos = set(config.eos_token_ids)
        eos_id = self.token_to_id(self.special_tokens.get("eos_token"))
        self.eos_token_id = eos_id
        if eos_id is not None:
            eos.add(eos_id)
        self.eos_token_ids: frozenset[int] = frozenset(eos)

        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        added = self._tok.get_added_tokens_decoder()
        self._added_content = {i: t.content for i, t in added.items()}
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        kinds = _decoder_kinds(decoder)
        self._byte_level = "ByteLevel" in kinds
        self._metaspace = "Metaspace" in kinds
        self._byte_fallback = "ByteFallback" in kinds
        self._bytes_cache: dict[int, bytes] = {}

    # -- encoding -----------------------------------------------------------------------------

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for (an upper bound): ``len(text) /
        max_token_chars`` is a lower bound on the token count, known without tokenizing."""
        longest = max((len(t) for t in self._tok.get_vocab(with_added_tokens=True)), default=1)
        return longest + 1  # + a pre-tokenizer's added space or prefix marker

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def encode_prompt(self, text: str) -> list[int]:
        """A raw prompt, with BOS/EOS as the tokenizer files say (see the module docstring)."""
        if not self._explicit_flags:
            return list(self._tok.encode(text, add_special_tokens=True).ids)
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        if self.add_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, self.bos_token_id)
        if self.add_eos and self.eos_token_id is not None:
            ids.append(self.eos_token_id)
        return ids

    def encode_rendered(self, text: str) -> list[int]:
        """Text rendered by a chat template: special tokens in it are recognised, none are added."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    # -- decoding -----------------------------------------------------------------------------

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes this token contributes to decoded text (cached)."""
        cached = self._bytes_cache.get(token_id)
        if cached is None:
            cached = self._bytes_cache[token_id] = self._compute_bytes(token_id)
        return cached

    def _compute_bytes(self, token_id: int) -> bytes:
        content = self._added_content.get(token_id)
        if content is not None:
            return content.encode("utf-8")
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return b""
        if self._byte_level:
            try:
                return bytes(_BYTE_OF_CHAR[c] for c in piece)
            except KeyError:
                return piece.encode("utf-8")
        if self._byte_fallback:
            match = _BYTE_TOKEN.match(piece)
            if match:
                return bytes([int(match.group(1), 16)])
        if self._metaspace:
            return piece.replace("▁", " ").encode("utf-8")
        return self._tok.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def token_text(self, token_id: int) -> str:
        """The token as text for logprobs: its bytes, incomplete characters shown as U+FFFD."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def template_variables(self) -> dict[str, Any]:
        """The special-token strings a chat template may use (``bos_token``, ``eos_token``...)."""
        variables: dict[str, Any] = dict(self.special_tokens)
        variables["additional_special_tokens"] = list(self.additional_special_tokens)
        return variables

    def has_token(self, token: str) -> bool:
        return self._tok.token_to_id(token) is not None
