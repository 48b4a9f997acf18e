"""A Hugging Face ``tokenizer.json`` from a GGUF's ``tokenizer.ggml.*`` metadata (byte-level BPE).

GGUF keeps the vocabulary already in GPT-2's byte-to-unicode form, the merges as ``"a b"`` strings,
a type per token (3 = control, 4 = user-defined) and a pre-tokenizer name (``tokenizer.ggml.pre``)
that stands for the regex llama.cpp splits text with; :data:`PRE_TOKENIZERS` maps each supported
name to the same splitting in ``tokenizers``. Control tokens become special added tokens, so
``<|im_end|>`` in a chat template encodes to one id. BOS is prepended only when the GGUF says
``add_bos_token`` (SmolLM2 says no; transformers' own GGUF loader gets this wrong).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from agent.convert.repo_files import TokenizerSpec

TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class UnsupportedTokenizerError(ValueError):
    """The GGUF's tokenizer cannot be rebuilt faithfully; the message says what is supported."""


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
"""Qwen2/2.5/3's split: Llama 3's, but digits one at a time."""


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )


def _llama3() -> pre_tokenizers.PreTokenizer:
    return _split_then_bytes(LLAMA3_PATTERN)


def _qwen2() -> pre_tokenizers.PreTokenizer:
    return _split_then_bytes(QWEN2_PATTERN)


# tokenizer.ggml.pre -> (pre-tokenizer, ignore_merges), following llama.cpp's llama-vocab.cpp.
PRE_TOKENIZERS: dict[str, tuple[Callable[[], pre_tokenizers.PreTokenizer], bool]] = {
    "default": (_gpt2, False),
    "gpt2": (_gpt2, False),
    "gpt-2": (_gpt2, False),
    "smollm": (_digits_then_gpt2, False),
    "starcoder": (_digits_then_gpt2, False),
    "refact": (_digits_then_gpt2, False),
    "codeshell": (_digits_then_gpt2, False),
    "llama-bpe": (_llama3, True),
    "llama3": (_llama3, True),
    "qwen2": (_qwen2, False),
}


def _field(fields: dict[str, Any], key: str, default: Any = None) -> Any:
    value = fields.get(key)
    return default if value is None else value


def build_tokenizer(
    fields: dict[str, Any], *, context_length: int
) -> tuple[Tokenizer, TokenizerSpec, dict[str, int | None]]:
    """Return (tokenizer, tokenizer_config spec, special ids ``bos/eos/pad/unk/eot``).

    ``fields`` maps GGUF keys to plain Python values (``ReaderField.contents()``).
    """
    kind = _field(fields, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedTokenizerError(
            f"tokenizer model {kind!r} is not supported; supported: 'gpt2' (byte-level BPE)"
        )
    pre = _field(fields, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedTokenizerError(
            f"pre-tokenizer {pre!r} is not supported; supported: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    tokens: list[str] = list(fields["tokenizer.ggml.tokens"])
    types: list[int] = list(_field(fields, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(fields, "tokenizer.ggml.merges", [])]
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a duplicated piece keeps its first id, as llama.cpp's lookup does
    make_pre, ignore_merges = PRE_TOKENIZERS[pre]
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = make_pre()
    tok.decoder = decoders.ByteLevel()

    tok.add_tokens(
        [
            AddedToken(tokens[i], special=types[i] == TOKEN_CONTROL, normalized=False)
            for i in range(len(tokens))
            if types[i] in (TOKEN_CONTROL, TOKEN_USER_DEFINED)
        ]
    )

    def token_id(key: str) -> int | None:
        value = _field(fields, f"tokenizer.ggml.{key}_token_id")
        return int(value) if value is not None and 0 <= int(value) < len(tokens) else None

    ids = {k: token_id(k) for k in ("bos", "eos", "padding", "unknown", "eot")}
    ids["pad"] = ids.pop("padding")
    ids["unk"] = ids.pop("unknown")
    if ids["eos"] is None:
        raise UnsupportedTokenizerError("the GGUF names no eos token (tokenizer.ggml.eos_token_id)")
    add_bos = bool(_field(fields, "tokenizer.ggml.add_bos_token", False)) and ids["bos"] is not None
    if add_bos:
        bos = tokens[ids["bos"]]  # type: ignore[index]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids["bos"])]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

    def name(i: int | None) -> str | None:
        return tokens[i] if i is not None else None

    spec = TokenizerSpec(
        eos_token=tokens[ids["eos"]],
        bos_token=name(ids["bos"]),
        pad_token=name(ids["pad"]),
        unk_token=name(ids["unk"]),
        add_bos_token=add_bos,
        add_eos_token=bool(_field(fields, "tokenizer.ggml.add_eos_token", False)),
        chat_template=_field(fields, "tokenizer.chat_template"),
        model_max_length=context_length,
        tokenizer_class="PreTrainedTokenizerFast" if add_bos else "GPT2Tokenizer",
    )
    return tok, spec, ids
