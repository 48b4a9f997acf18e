"""How an embedding model turns token states into one vector: what its folder's files say.

Read from a Transformers.js / sentence-transformers folder::

    config.json  tokenizer.json  [tokenizer_config.json]
    [modules.json  1_Pooling/config.json  sentence_bert_config.json  config_sentence_transformers.json]
    onnx/model*.onnx

What a caller may rely on (``read_embedding_config``):

- Pooling follows sentence-transformers: ``modules.json`` names the modules in order; its
  ``Pooling`` module's ``config.json`` sets the modes (``cls``, ``max``, ``mean``,
  ``mean_sqrt_len``, ``weightedmean``, ``lasttoken``; several are concatenated in that order, as
  sentence-transformers does) and ``include_prompt``; a ``Normalize`` module makes the vectors unit
  length. Without ``modules.json`` (a Transformers.js repo) a ``1_Pooling/config.json`` still
  counts; with no pooling file at all hflocal assumes ``lasttoken`` for decoder architectures
  (``…ForCausalLM``, e.g. Qwen3-Embedding) and ``mean`` otherwise, and normalises (what those
  repos' model cards tell Transformers.js users to do); ``pooling_source`` says which it was.
- A module it cannot compute (``Dense``, ``LayerNorm``, anything but Transformer, Pooling and
  Normalize) is a ``ModelLoadError`` unless the graph already outputs ``sentence_embedding``
  (the modules are then inside the graph).
- ``max_length``: ``sentence_bert_config.json``'s ``max_seq_length``, else tokenizer_config's
  ``model_max_length``, else config.json's ``max_position_embeddings`` (less 2 for RoBERTa-style
  position ids), never more than the position table; 512 if nothing says.
- ``prompt``: ``config_sentence_transformers.json``'s prompt named by ``default_prompt_name``
  (prepended to text inputs, as sentence-transformers does), else empty.
- ``matryoshka``: ``True`` when config.json says ``"is_matryoshka": true``, the tuple of allowed
  sizes when it lists ``matryoshka_dimensions``, else ``False`` (the convention vLLM reads).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.engine.model_files import MAX_CONTEXT
from agent.engine.types import ModelLoadError

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "weightedmean", "lasttoken")
"""sentence-transformers' pooling modes, in the order it concatenates them."""
_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
_ROBERTA_STYLE = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "bart", "xlm-roberta-xl")
"""model_types whose position ids start after the padding index (``max_position_embeddings`` - 2 usable)."""
DEFAULT_MAX_LENGTH = 512


@dataclass(frozen=True, slots=True)
class EmbeddingConfig:
    """How to get one vector per input from the graph's token states (see the module docstring)."""

    pooling: tuple[str, ...]
    pooling_source: str
    """``1_Pooling/config.json`` (or the module's path), or ``assumed`` when no file said."""
    normalize: bool
    max_length: int
    prompt: str = ""
    include_prompt: bool = True
    lowercase: bool = False
    matryoshka: bool | tuple[int, ...] = False
    hidden_size: int | None = None
    unsupported_modules: tuple[str, ...] = ()
    """Module types after the transformer that hflocal cannot compute itself."""
    decoder: bool = False
    """The architecture is a decoder (causal attention; ``position_ids`` count from 0 per row)."""


def _read(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path.name} in {path.parent}: {exc}") from exc


def _object(path: Path) -> dict[str, Any]:
    data = _read(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} in {path.parent} is not a JSON object")
    return data


def _positive_int(value: Any, limit: int = 10_000_000) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < limit:
        return value
    return None


def _pooling_modes(config: dict[str, Any], where: str) -> tuple[str, ...]:
    modes = tuple(mode for mode in POOLING_MODES if config.get(_POOLING_KEYS[mode]) is True)
    if not modes:
        raise ModelLoadError(f"{where} turns on no pooling mode this engine knows ({', '.join(POOLING_MODES)})")
    return modes


def _modules(folder: Path) -> list[dict[str, Any]]:
    data = _read(folder / "modules.json")
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
        raise ModelLoadError(f"modules.json in {folder} is not a list of modules")
    return sorted(data, key=lambda m: m.get("idx", 0) if isinstance(m.get("idx"), int) else 0)


def _max_length(config: dict[str, Any], tokenizer_config: dict[str, Any], st_config: dict[str, Any]) -> int:
    positions = _positive_int(config.get("max_position_embeddings"))
    if positions is not None and str(config.get("model_type", "")).lower() in _ROBERTA_STYLE:
        positions -= 2
    stated = (_positive_int(st_config.get("max_seq_length"))
              or _positive_int(tokenizer_config.get("model_max_length"), 1_000_000))
    length = stated or positions or DEFAULT_MAX_LENGTH
    length = min(length, positions) if positions else length
    return min(length, MAX_CONTEXT)  # a config.json of 3e8 positions is no encoder's


def _matryoshka(config: dict[str, Any]) -> bool | tuple[int, ...]:
    dims = config.get("matryoshka_dimensions")
    if isinstance(dims, list) and dims and all(_positive_int(d) for d in dims):
        return tuple(sorted(set(dims)))
    return config.get("is_matryoshka") is True


def read_embedding_config(folder: Path, *, graph_pools: bool) -> EmbeddingConfig:
    """The folder's pooling, normalisation, length and prompt (``graph_pools``: the graph outputs
    ``sentence_embedding`` itself). Raises ``ModelLoadError`` naming the file at fault."""
    config = _object(folder / "config.json")
    if not config:
        raise ModelLoadError(f"missing config.json in {folder}")
    tokenizer_config = _object(folder / "tokenizer_config.json")
    st_config = _object(folder / "sentence_bert_config.json")
    st_settings = _object(folder / "config_sentence_transformers.json")
    listed = config.get("architectures")
    architectures = listed if isinstance(listed, list) else []
    decoder = any(isinstance(a, str) and a.endswith("ForCausalLM") for a in architectures)

    pooling: tuple[str, ...] | None = None
    source = "assumed"
    include_prompt = True
    normalize = False
    unsupported: list[str] = []
    modules = _modules(folder)
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = str(module.get("path", ""))
        if kind == "Transformer":
            continue
        if kind == "Pooling":
            pooling_config = _object(folder / path / "config.json")
            if not pooling_config:
                raise ModelLoadError(f"modules.json names a Pooling module, but {path}/config.json is missing")
            pooling, source = _pooling_modes(pooling_config, f"{path}/config.json"), f"{path}/config.json"
            include_prompt = pooling_config.get("include_prompt", True) is not False
        elif kind == "Normalize":
            normalize = True
        else:
            unsupported.append(kind or path or "?")
    if not modules:
        pooling_config = _object(folder / "1_Pooling" / "config.json")
        if pooling_config:
            pooling, source = _pooling_modes(pooling_config, "1_Pooling/config.json"), "1_Pooling/config.json"
            include_prompt = pooling_config.get("include_prompt", True) is not False
        normalize = True  # Transformers.js repos: their cards say `normalize: true`
    if pooling is None:
        pooling = ("lasttoken",) if decoder else ("mean",)
    if unsupported and not graph_pools:
        raise ModelLoadError(
            f"modules.json lists {', '.join(unsupported)} after pooling, which hflocal does not compute, and the "
            "graph has no sentence_embedding output that would include it"
        )

    prompts = st_settings.get("prompts")
    default_name = st_settings.get("default_prompt_name")
    prompt = ""
    if isinstance(prompts, dict) and isinstance(default_name, str) and isinstance(prompts.get(default_name), str):
        prompt = prompts[default_name]
    return EmbeddingConfig(
        pooling=pooling,
        pooling_source=source,
        normalize=normalize,
        max_length=_max_length(config, tokenizer_config, st_config),
        prompt=prompt,
        include_prompt=include_prompt,
        lowercase=st_config.get("do_lower_case") is True,
        matryoshka=_matryoshka(config),
        hidden_size=_positive_int(config.get("hidden_size")),
        unsupported_modules=tuple(unsupported),
        decoder=decoder,
    )
