"""The JSON files of an onnx-community style repo folder, as transformers would write them.

``config.json``, ``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json`` and
``special_tokens_map.json`` beside ``onnx/model*.onnx``: what the engine and Transformers.js read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from agent.convert.llama_shape import LlamaShape
from ipc.files import atomic_write

TRANSFORMERS_VERSION = "4.57.6"


@dataclass(frozen=True)
class TokenizerSpec:
    """What ``tokenizer_config.json`` says beyond the tokenizer itself."""

    eos_token: str
    bos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None
    add_bos_token: bool = False
    add_eos_token: bool = False
    chat_template: str | None = None
    model_max_length: int = 2048
    tokenizer_class: str = "GPT2Tokenizer"


def write_json(path: Path, data: Any) -> None:
    """Write atomically (ipc.files.atomic_write), UTF-8, sorted like transformers' output; readable
    by all like the Hub's own files (0644)."""
    atomic_write(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), mode=0o644)


def config_dict(
    shape: LlamaShape,
    *,
    bos_token_id: int | None,
    eos_token_id: int | list[int],
    pad_token_id: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": shape.num_heads,
        "num_hidden_layers": shape.num_layers,
        "num_key_value_heads": shape.num_kv_heads,
        "pad_token_id": pad_token_id,
        "pretraining_tp": 1,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_scaling": shape.rope_scaling.to_config() if shape.rope_scaling else None,
        "rope_theta": shape.rope_theta,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "torch_dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": shape.vocab_size,
    }
    config.update(extra or {})
    return config


def write_model_configs(
    repo: Path,
    shape: LlamaShape,
    *,
    bos_token_id: int | None,
    eos_token_id: int | list[int],
    pad_token_id: int | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """``config.json`` and ``generation_config.json``."""
    repo.mkdir(parents=True, exist_ok=True)
    ids: dict[str, Any] = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    config = config_dict(
        shape, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, extra=extra
    )
    write_json(repo / "config.json", config)
    generation = {k: v for k, v in ids.items() if v is not None}
    write_json(repo / "generation_config.json", {**generation, "transformers_version": TRANSFORMERS_VERSION})


def _token_entry(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def write_tokenizer_files(repo: Path, tokenizer: Tokenizer, spec: TokenizerSpec) -> None:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    repo.mkdir(parents=True, exist_ok=True)
    tmp = repo / f"tokenizer.json.{os.getpid()}.incomplete"
    tokenizer.save(str(tmp))
    os.replace(tmp, repo / "tokenizer.json")

    added = tokenizer.get_added_tokens_decoder()
    decoder = {
        str(i): {**_token_entry(t.content), "lstrip": t.lstrip, "rstrip": t.rstrip, "special": t.special}
        for i, t in sorted(added.items())
    }
    candidates = {
        "bos_token": spec.bos_token,
        "eos_token": spec.eos_token,
        "pad_token": spec.pad_token,
        "unk_token": spec.unk_token,
    }
    named = {k: v for k, v in candidates.items() if v is not None}
    extra_special = [t.content for _, t in sorted(added.items()) if t.special and t.content not in named.values()]
    config: dict[str, Any] = {
        "add_bos_token": spec.add_bos_token,
        "add_eos_token": spec.add_eos_token,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": extra_special,
        **named,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.model_max_length,
        "tokenizer_class": spec.tokenizer_class,
        "vocab_size": tokenizer.get_vocab_size(),
    }
    if spec.chat_template is not None:
        config["chat_template"] = spec.chat_template
    write_json(repo / "tokenizer_config.json", config)
    special_map: dict[str, Any] = {k: _token_entry(v) for k, v in named.items()}
    special_map["additional_special_tokens"] = extra_special
    write_json(repo / "special_tokens_map.json", special_map)
