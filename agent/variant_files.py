"""Which files of a model repo make each variant: pure functions over file names, no Hub access.

Naming follows Transformers.js (onnx-community repos), with optimum's root-level exports accepted;
``agent.hub`` applies them to a listing, ``agent.cache_files`` and ``agent.imports`` to folders on disk.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

from agent.model_kinds import is_module_config
from agent.variants import QUANTIZATIONS, normalize_quantization

ONNX_NAMES: dict[str, tuple[str, ...]] = {
    "q4": ("model_q4.onnx", "model_q4f16.onnx"),
    "q8": ("model_quantized.onnx", "model_int8.onnx", "model_uint8.onnx"),
    "fp16": ("model_fp16.onnx",),
    "fp32": ("model.onnx",),
}
"""ONNX file names per quantization, preferred first. ``model_int8``/``model_uint8`` are the names
Transformers.js gives the two halves of its q8 export; a repo that has only one of them still offers q8.
``model_q4f16`` (4-bit blocks with fp16 scales and activations, the only file of some ``-web`` repos)
is q4 when there is no ``model_q4``: the fast path rewrites it into the same float32-activation q4
graph (its fp16 scales convert exactly)."""

SUPPORT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "added_tokens.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
"""Files at the repo root the engine reads, taken when present (with any quantization); the last
three, and every sentence-transformers module's ``N_Name/config.json`` (``1_Pooling/config.json``),
say how an embedding model pools and normalises."""
FALLBACK_TOKENIZER_FILES = ("vocab.json", "merges.txt")
"""Taken only when the repo has no ``tokenizer.json``."""


def _onnx_path(filenames: Collection[str], quantization: str) -> str | None:
    """The ONNX file of ``quantization``: ``onnx/<name>`` preferred, else ``<name>`` at the root."""
    for folder in ("onnx/", ""):
        for name in ONNX_NAMES[quantization]:
            if folder + name in filenames:
                return folder + name
    return None


def external_data_files(filenames: Iterable[str], onnx_file: str) -> list[str]:
    """External-data files beside ``onnx_file``: ``<file>_data``, ``<file>_data_N``, ``<file>.data``,
    ``<file>.data_N`` (sorted: the plain one first, then by N)."""
    pattern = re.compile(rf"^{re.escape(onnx_file)}(?:_data|\.data)(?:_(\d+))?$")
    found = [(m, f) for f in filenames if (m := pattern.match(f))]
    return [f for m, f in sorted(found, key=lambda mf: (int(mf[0].group(1) or -1), mf[1]))]


def select_files(filenames: Collection[str], quantization: str) -> list[str]:
    """Every file a variant needs, or ``[]`` if the repo does not offer ``quantization``.

    Naming follows Transformers.js (onnx-community repos): q4 → ``onnx/model_q4.onnx``, q8 →
    ``onnx/model_quantized.onnx`` (else ``model_int8.onnx``, else ``model_uint8.onnx``), fp16 →
    ``onnx/model_fp16.onnx``, fp32 → ``onnx/model.onnx``; the same names at the repo root are
    accepted when ``onnx/`` lacks them (optimum exports). The result is the ONNX file, its external
    data, then the present ``SUPPORT_FILES`` and module configs (and ``vocab.json``/``merges.txt``
    when there is no ``tokenizer.json``); paths are repo-relative with ``/``, in that order, without duplicates.
    """
    quantization = normalize_quantization(quantization)
    names = set(filenames)
    onnx = _onnx_path(names, quantization)
    if onnx is None:
        return []
    chosen = [onnx, *external_data_files(names, onnx)]
    chosen += [f for f in SUPPORT_FILES if f in names]
    chosen += sorted(f for f in names if is_module_config(f))
    if "tokenizer.json" not in names:
        chosen += [f for f in FALLBACK_TOKENIZER_FILES if f in names]
    return list(dict.fromkeys(chosen))


def offered_quantizations(filenames: Collection[str]) -> list[str]:
    """The quantizations ``filenames`` offer, in ``QUANTIZATIONS`` order."""
    names = set(filenames)
    if any(n.rsplit("/", 1)[-1] == "genai_config.json" for n in names):
        return []  # its model.onnx is an onnxruntime-genai graph (own config, preallocated cache): not runnable
    return [q for q in QUANTIZATIONS if _onnx_path(names, q) is not None]


def layout_problem(filenames: Collection[str]) -> str:
    """What a repo that offers no quantization has instead, in words (``""`` if nothing recognisable):
    said when it is pulled, never at its first request."""
    names = set(filenames)
    bases = {n.rsplit("/", 1)[-1] for n in names}
    if "genai_config.json" in bases:
        return "it is an onnxruntime-genai layout (genai_config.json), which hflocal does not run yet"
    merged = sorted(n for n in names if n.rsplit("/", 1)[-1].startswith("decoder_model_merged") and n.endswith(".onnx"))
    if merged:
        return (f"it has a merged decoder ({merged[0]}: two graphs behind use_cache_branch), "
                "which hflocal does not run yet")
    if any(b.endswith("_bnb4.onnx") for b in bases):
        return "its only 4-bit file is bitsandbytes 4-bit (model_bnb4.onnx), which hflocal does not run"
    others = sorted(n for n in names if n.endswith(".onnx"))
    if others:
        return f"its ONNX files ({', '.join(others[:3])}) are not decoder files hflocal knows"
    if any(b.endswith(".gguf") for b in bases):
        return "it has GGUF files: download one and run `hflocal import FILE.gguf`"
    if any(b.endswith(".safetensors") for b in bases):
        return "it has only a safetensors checkpoint: `hflocal import` a local copy converts it (the convert extra)"
    return ""


def quantization_of(onnx_file: str) -> str | None:
    """``onnx/model_q4.onnx`` → ``q4``; None for ONNX files that are no known quantization."""
    base = onnx_file.rsplit("/", 1)[-1]
    return next((q for q, names in ONNX_NAMES.items() if base in names), None)


__all__ = [
    "FALLBACK_TOKENIZER_FILES", "ONNX_NAMES", "SUPPORT_FILES", "external_data_files", "layout_problem",
    "offered_quantizations", "quantization_of", "select_files",
]
