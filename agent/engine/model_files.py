"""Reading a model folder in the onnx-community / Transformers.js layout.

::

    config.json  generation_config.json  tokenizer.json  tokenizer_config.json
    [chat_template.jinja | chat_template.json]  [special_tokens_map.json]
    onnx/model.onnx | onnx/model_fp16.onnx | onnx/model_quantized.onnx | onnx/model_q4.onnx
    (+ external-data files such as onnx/model.onnx_data beside the graph)

Everything that can be wrong with the files is reported as ``ModelLoadError`` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.engine.types import ModelLoadError

#: Transformers.js file name for each quantization this project knows.
ONNX_FILES = {
    "fp32": "model.onnx",
    "fp16": "model_fp16.onnx",
    "q8": "model_quantized.onnx",
    "q4": "model_q4.onnx",
}
ONNX_ALTERNATES = {"q8": ("model_int8.onnx", "model_uint8.onnx"), "q4": ("model_q4f16.onnx",)}
"""Taken when the main name is absent: Transformers.js names the two halves of its q8 export so, and
the Hub listing (``agent.variant_files.ONNX_NAMES``) offers q8 for a repo that has only one of them."""

DEFAULT_CONTEXT = 2048
"""Used only when neither config.json nor tokenizer_config.json states a context length."""

MAX_CONTEXT = 1 << 20
"""The most positions the engine prepares for (1 Mi tokens, the longest context of a model one can
run locally: Qwen2.5-1M), whatever config.json says: the attention mask and position ids are
allocated for the whole context at load (16 bytes a position), and the fast path's rope tables have
a row per position, so a ``max_position_embeddings`` of 3e8 would cost 4.8 GB before the first
token. Real models' full KV caches hit the memory bound of ``usable_context`` long before this."""
KV_MEMORY_SHARE = 0.5
"""The KV cache of a full context may take at most this share of the machine's RAM."""
PER_POSITION_BYTES = 16
"""The attention mask and position ids kept for every position (int64 each)."""
_PLAUSIBLE = {"num_hidden_layers": 10_000, "num_attention_heads": 100_000, "num_key_value_heads": 100_000,
              "head_dim": 100_000, "hidden_size": 10_000_000, "vocab_size": 100_000_000}
"""Bounds on config.json's sizes: a value past them is no model's; the number is refused, not used."""


def read_json(path: Path, *, required: bool) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` if it is absent and not ``required``."""
    if not path.is_file():
        if required:
            raise ModelLoadError(f"missing {path.name} in {path.parent}")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} is not a JSON object")
    return data


def onnx_path(folder: Path, quantization: str) -> Path:
    """The graph file for ``quantization``: ``onnx/<file>``, or ``<file>`` at the top of the folder."""
    try:
        name = ONNX_FILES[quantization]
    except KeyError:
        raise ModelLoadError(
            f"unknown quantization {quantization!r}: use one of {', '.join(ONNX_FILES)}"
        ) from None
    for where in (folder / "onnx", folder):  # the order agent.hub picks files in
        for candidate_name in (name, *ONNX_ALTERNATES.get(quantization, ())):
            if (where / candidate_name).is_file():
                return where / candidate_name
    raise ModelLoadError(f"missing onnx/{name} (the {quantization} variant) in {folder}")


def _int_list(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


@dataclass(frozen=True, slots=True)
class GenerationDefaults:
    """The sampling defaults of generation_config.json, as Hugging Face reads them.

    ``do_sample`` is False when the file does not say (Hugging Face's default), so a model whose
    generation_config is silent decodes greedily unless the request sets a temperature.
    ``top_k`` is only what the file states (no implicit 50).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What the engine needs from config.json and generation_config.json."""

    context_length: int
    num_layers: int | None
    num_kv_heads: int | None
    head_dim: int | None
    vocab_size: int | None
    eos_token_ids: frozenset[int]
    bos_token_id: int | None
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal configs (Gemma 3, Llava...) nest the decoder's settings under ``text_config``."""
    nested = config.get("text_config")
    if isinstance(nested, dict):
        return {**config, **nested}
    return config


def _check_plausible(config: dict[str, Any]) -> None:
    for key, most in _PLAUSIBLE.items():
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and not 0 < value <= most:
            raise ModelLoadError(f"config.json: {key} = {value} is not a plausible value (1..{most})")


def usable_context(stated: int, kv_bytes_per_token: int, memory_bytes: int) -> tuple[int, str | None]:
    """The context the engine prepares for: ``stated`` (config.json), cut to ``MAX_CONTEXT`` and to
    what the machine can hold (a full KV cache in ``KV_MEMORY_SHARE`` of ``memory_bytes``); with the
    reason when cut. Decided before anything is allocated. A model of which not even a few tokens
    fit is refused (``ModelLoadError``): its stated sizes cannot be right for this machine."""
    per_token = kv_bytes_per_token + PER_POSITION_BYTES
    fits = int(memory_bytes * KV_MEMORY_SHARE) // per_token
    if fits < 16:
        raise ModelLoadError(
            f"one token's KV cache takes {kv_bytes_per_token} bytes (from the graph and config.json): "
            f"not even 16 tokens fit in this machine's {memory_bytes >> 20} MiB"
        )
    bound = min(MAX_CONTEXT, fits)
    if stated <= bound:
        return stated, None
    why = (f"the model states a context of {stated} tokens; using {bound}, "
           + ("the most hflocal prepares for" if bound == MAX_CONTEXT else "what this machine's memory holds"))
    return bound, why


def read_model_config(folder: Path, tokenizer_config: dict[str, Any]) -> ModelConfig:
    config = text_config(read_json(folder / "config.json", required=True))
    _check_plausible(config)
    gen = read_json(folder / "generation_config.json", required=False)

    context = None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            context = value
            break
    if context is None:
        value = tokenizer_config.get("model_max_length")
        context = value if isinstance(value, int) and 0 < value < 10_000_000 else DEFAULT_CONTEXT
    context = min(context, MAX_CONTEXT)  # and usable_context cuts it to the machine at load

    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim")
    hidden = config.get("hidden_size")
    if not isinstance(head_dim, int) and isinstance(hidden, int) and isinstance(heads, int) and heads:
        head_dim = hidden // heads

    def number(key: str, default: float) -> float:
        value = gen.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    top_k = gen.get("top_k")
    defaults = GenerationDefaults(
        do_sample=bool(gen.get("do_sample", False)),
        temperature=number("temperature", 1.0),
        top_p=number("top_p", 1.0),
        top_k=top_k if isinstance(top_k, int) and top_k > 0 else 0,
        repetition_penalty=number("repetition_penalty", 1.0),
    )
    bos = _int_list(config.get("bos_token_id")) or _int_list(gen.get("bos_token_id"))
    return ModelConfig(
        context_length=context,
        num_layers=config.get("num_hidden_layers") if isinstance(config.get("num_hidden_layers"), int) else None,
        num_kv_heads=kv_heads if isinstance(kv_heads, int) else None,
        head_dim=head_dim if isinstance(head_dim, int) else None,
        vocab_size=config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None,
        eos_token_ids=frozenset(_int_list(gen.get("eos_token_id")) + _int_list(config.get("eos_token_id"))),
        bos_token_id=bos[0] if bos else None,
        generation=defaults,
    )
