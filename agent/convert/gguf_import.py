"""Import a llama-architecture GGUF file as an onnx-community style repo folder, without torch.

``import_gguf`` writes ``config.json``, ``generation_config.json``, ``tokenizer.json``,
``tokenizer_config.json`` (with the GGUF's chat template), ``special_tokens_map.json`` and one
``onnx/model*.onnx`` per requested quantization. For ``q4``, GGUF Q4_0/Q4_1/Q8_0 blocks go straight
into ``MatMulNBits`` (no re-rounding); for ``q8``, Q8_0 blocks do. Other tensors are dequantized and
quantized by the graph builder (weight-only, block 32). ``inspect_gguf`` reads the header only and
refuses, with :class:`UnsupportedModelError`, what the importer cannot convert.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, LlamaFileType

from agent.convert.gguf_tokenizer import UnsupportedTokenizerError, build_tokenizer
from agent.convert.gguf_weights import (
    IGNORED_TENSORS,
    PASSTHROUGH_TYPES,
    SUPPORTED_TYPES,
    UNPERMUTED_ARCHITECTURES,
    GGUFWeights,
    hf_name,
    tensor_shape,
)
from agent.convert.linear import AccuracyLevel
from agent.convert.llama_graph import write_llama_onnx
from agent.convert.llama_shape import LlamaShape, RopeScaling
from agent.convert.repo_files import write_model_configs, write_tokenizer_files
from agent.convert.weight_forms import QUANT_FILES, Quant

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
"""GGUF ``general.architecture`` values imported; Mistral's and SmolLM's GGUFs are ``llama``."""
FUSED_BY_DEFAULT = True
"""Imports write the fused graph layout (GroupQueryAttention, skip-norms, logits_to_keep): same tokens
as the unfused layout, ~1.5-2x faster decode and prefill (bench/run.py). The engine runs both.
Weights go to ``<file>_data`` beside the graph: onnxruntime then maps them instead of parsing them
into memory, which lowers peak RSS by ~25 MB on SmolLM2-135M q4 (355 vs 380 MB in bench/run.py)."""
Progress = Callable[[str, int, int], None]
_PASSTHROUGH: dict[str, frozenset[QT]] = {
    "fp32": frozenset(),
    "fp16": frozenset(),
    "q8": frozenset({QT.Q8_0}),
    "q4": PASSTHROUGH_TYPES,
}


class UnsupportedModelError(ValueError):
    """The GGUF is not something this importer converts; the message says what is supported."""


@dataclass(frozen=True)
class GGUFSummary:
    """What a GGUF header says, for listing and for deciding whether to import."""

    path: Path
    architecture: str
    name: str | None
    params: int
    file_type: str | None
    context_length: int
    tensor_types: dict[str, int]
    shape: LlamaShape


@dataclass(frozen=True)
class ImportResult:
    repo_dir: Path
    files: dict[str, Path]  # quantization -> onnx/model*.onnx
    sizes: dict[str, int]  # quantization -> bytes on disk (graph + external data)
    summary: GGUFSummary
    eos_token_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _fields(reader: GGUFReader, skip_arrays: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if skip_arrays and key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
            out[key] = None
            continue
        try:
            out[key] = f.contents()
        except (ValueError, IndexError, TypeError):
            out[key] = None
    return out


def _f32(value: Any) -> float:
    """A GGUF float32 as the decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def _shape(fields: dict[str, Any], reader: GGUFReader) -> LlamaShape:
    arch = fields.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if (fields.get("split.count") or 1) > 1:
        raise UnsupportedModelError("split GGUF files are not supported; merge them with llama-gguf-split first")

    def get(key: str, default: Any = None) -> Any:
        value = fields.get(f"{arch}.{key}")
        return default if value is None else value

    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise UnsupportedModelError("the GGUF has no token_embd.weight tensor")
    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", hidden // heads))
    if int(get("rope.dimension_count", head_dim)) != head_dim:
        raise UnsupportedModelError("partial rotary embeddings (rope.dimension_count != head_dim) are not supported")
    scaling_type = get("rope.scaling.type", "none")
    scaling = None
    if scaling_type == "linear":
        scaling = RopeScaling("linear", float(get("rope.scaling.factor", 1.0)))
    elif scaling_type not in ("none", None):
        raise UnsupportedModelError(f"rope scaling {scaling_type!r} is not supported; supported: linear, llama3")
    freq_factors = None
    if "rope_freqs.weight" in tensors:  # Llama 3.1+: llama3 scaling stored as per-frequency divisors
        freq_factors = tuple(float(x) for x in tensors["rope_freqs.weight"].data)
    return LlamaShape(
        vocab_size=tensor_shape(tensors["token_embd.weight"])[0],
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=_f32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=_f32(get("rope.freq_base", 10000.0)),
        max_position_embeddings=int(get("context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensors,
        rope_scaling=scaling,
        rope_freq_factors=freq_factors,
    )


def _check_tensors(reader: GGUFReader, shape: LlamaShape) -> Counter[str]:
    types: Counter[str] = Counter()
    supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
    for t in reader.tensors:
        qtype = QT(t.tensor_type)
        types[qtype.name] += 1
        if IGNORED_TENSORS.match(t.name):
            continue
        if hf_name(t.name) is None:
            raise UnsupportedModelError(f"tensor {t.name!r} is not part of a decoder the fused graph writes")
        if qtype not in SUPPORTED_TYPES:
            raise UnsupportedModelError(f"tensor {t.name!r} has type {qtype.name}; supported types: {supported}")
    names = {hf_name(t.name) for t in reader.tensors}
    needed = ["model.embed_tokens.weight", "model.norm.weight"]
    for i in range(shape.num_layers):
        p = f"model.layers.{i}"
        needed += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
        needed += [f"{p}.self_attn.{n}_proj.weight" for n in "qkvo"]
        needed += [f"{p}.mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
    missing = [n for n in needed if n not in names]
    if missing:
        raise UnsupportedModelError(f"the GGUF lacks {len(missing)} decoder tensors, e.g. {missing[0]}")
    return types


def _summary(path: Path, reader: GGUFReader, fields: dict[str, Any]) -> GGUFSummary:
    shape = _shape(fields, reader)
    types = _check_tensors(reader, shape)
    file_type = fields.get("general.file_type")
    try:
        file_type_name = LlamaFileType(int(file_type)).name if file_type is not None else None
    except ValueError:
        file_type_name = str(file_type)
    params = sum(int(t.n_elements) for t in reader.tensors)
    return GGUFSummary(
        path=path,
        architecture=str(fields["general.architecture"]),
        name=fields.get("general.name"),
        params=params,
        file_type=file_type_name,
        context_length=shape.max_position_embeddings,
        tensor_types=dict(types),
        shape=shape,
    )


def _open(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise UnsupportedModelError(f"{path.name} is not a readable GGUF file: {exc}") from exc


def _relay(report: Progress, stage: str, total: int) -> Progress:
    """The builder counts layers; report them under this import's stage name and total."""

    def relay(_stage: str, done: int, _total: int) -> None:
        report(stage, done, total)

    return relay


def inspect_gguf(path: Path | str) -> GGUFSummary:
    """Read the header; raise :class:`UnsupportedModelError` if the importer cannot convert it."""
    path = Path(path)
    reader = _open(path)
    return _summary(path, reader, _fields(reader, skip_arrays=True))


def import_gguf(
    gguf_path: Path | str,
    out_dir: Path | str,
    quants: Sequence[Quant] = ("q4",),
    progress: Progress | None = None,
    *,
    accuracy_level: AccuracyLevel = None,
    head_bits: int | None = None,
    fused: bool | None = None,
) -> ImportResult:
    """Convert ``gguf_path`` into the repo folder ``out_dir`` (created; existing files replaced).

    ``progress(stage, done, total)`` is called with stages ``"inspect"``, ``"tokenizer"`` and one
    ``"convert <quant>"`` per quantization (``done`` counts layers, the last unit is the file write).
    """
    start = time.perf_counter()
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    for q in quants:
        if q not in QUANT_FILES:
            raise ValueError(f"unknown quantization {q!r}: use one of {', '.join(QUANT_FILES)}")
    report = progress or (lambda stage, done, total: None)
    reader = _open(gguf_path)
    fields = _fields(reader)
    summary = _summary(gguf_path, reader, fields)
    shape = summary.shape
    report("inspect", 1, 1)

    try:
        tokenizer, spec, ids = build_tokenizer(fields, context_length=shape.max_position_embeddings)
    except UnsupportedTokenizerError as exc:
        raise UnsupportedModelError(str(exc)) from exc
    if tokenizer.get_vocab_size() > shape.vocab_size:
        raise UnsupportedModelError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the embedding only {shape.vocab_size}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(out_dir, tokenizer, spec)
    eos_ids = [i for i in dict.fromkeys([ids["eos"], ids["eot"]]) if i is not None]
    write_model_configs(
        out_dir,
        shape,
        bos_token_id=ids["bos"],
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        pad_token_id=ids["pad"],
    )
    report("tokenizer", 1, 1)

    files: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    for quant in quants:
        stage = f"convert {quant}"
        total = shape.num_layers + 1
        report(stage, 0, total)
        permuted = summary.architecture not in UNPERMUTED_ARCHITECTURES
        weights = GGUFWeights(reader, shape, _PASSTHROUGH[quant], permuted=permuted)
        path = write_llama_onnx(
            shape,
            weights,
            out_dir,
            quant,
            accuracy_level=accuracy_level,
            head_bits=head_bits,
            fused=FUSED_BY_DEFAULT if fused is None else fused,
            external_data=True,
            progress=_relay(report, stage, total),
        )
        files[quant] = path
        data = path.with_name(path.name + "_data")
        sizes[quant] = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
        report(stage, total, total)
    return ImportResult(out_dir, files, sizes, summary, eos_ids, time.perf_counter() - start)
