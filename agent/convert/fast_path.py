"""The fast path for decoders pulled from the Hub: rewrite an optimum export into hflocal's fused graph.

An onnx-community / Xenova repo ships the plain torch export (thousands of Shape/Gather nodes,
attention spelled out op by op, the whole-sequence lm_head); the same weights run 2-3x faster in the
graph :mod:`agent.convert.llama_graph` writes with ``fused=True`` (GroupQueryAttention, skip norms,
fused QKV and gate/up, a preallocated KV cache, last-position logits, the 8-bit head rescored exactly).
:func:`fast_graph` makes that rewrite once per downloaded file:

- the weights are read back from the export (:mod:`agent.convert.onnx_weights`); 4- and 8-bit
  ``MatMulNBits`` blocks pass through as stored (never quantized twice), float heads are quantized once;
- the architecture comes from ``config.json`` (:func:`shape_from_config`); families whose extras the
  fused graph writes: Llama (incl. Llama-3 rope scaling), Mistral (sliding window), Qwen2 (q/k/v
  biases), Qwen3 (q/k norms), Phi-3 / 3.5 / 4-mini (fused qkv and gate/up read apart, longrope,
  partial rotary), SmolLM3 (layers without rotary embedding), Gemma 2 (soft-caps, sliding layers,
  query scale, embedding scale, norms after attention and MLP), Gemma 3 (q/k norms, a local rope
  base); anything else keeps the original graph;
- the result is cached beside the download (``<repo>/.hflocal-fast/<commit>/`` for a Hub snapshot,
  ``<folder>/.hflocal-fast/`` otherwise) with a stamp naming the source file and the converter's own
  fingerprint (a hash of the converter's sources and onnx/onnxruntime versions), so a changed
  converter or a re-downloaded file rebuilds it; the original file is never touched and stays the
  fallback whenever the rewrite or its session fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx

from agent.convert.fast_cache import cache_dir_for
from agent.convert.linear import AccuracyLevel
from agent.convert.llama_shape import LlamaShape, RopeScaling
from agent.convert.onnx_weights import UnreadableGraph, read_export_weights
from agent.convert.quantize import BlockQuantized, split_rows
from agent.convert.weight_forms import QUANT_FILES, Quant, Weight
from agent.engine.contract import KV_BUFFER_METADATA
from agent.engine.model_files import MAX_CONTEXT, text_config

log = logging.getLogger(__name__)

STAMP = "stamp.json"
ALREADY_FUSED = "already a fused graph"
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "gemma2", "gemma3_text")
"""``model_type`` values whose decoder the fused graph writes exactly."""
_SOURCES = (
    "attention.py", "fast_path.py", "graph_builder.py", "linear.py", "llama_graph.py", "llama_shape.py",
    "onnx_weights.py", "qkv_extras.py", "quantize.py", "weight_forms.py",
)


class NotOnFastPath(ValueError):
    """Why a model keeps its original graph (an unknown family, a layout the rewrite cannot read)."""


@dataclass(frozen=True)
class FastGraph:
    """A rewritten graph ready to load, or why there is none (``path`` None)."""

    path: Path | None
    reason: str = ""


def shape_from_config(config: dict[str, Any]) -> LlamaShape:
    """The fused graph's shape for a ``config.json`` of a supported family; ``NotOnFastPath`` if not."""
    c = text_config(config)
    family = c.get("model_type")
    if family not in FAMILIES:
        raise NotOnFastPath(f"model_type {family!r} is not on the fast path (supported: {', '.join(FAMILIES)})")

    def integer(key: str, default: int | None = None) -> int:
        value = c.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise NotOnFastPath(f"config.json {key} = {value!r} is not a positive integer")
        return value

    heads = integer("num_attention_heads")
    hidden = integer("hidden_size")
    head_dim = int(c.get("head_dim") or hidden // heads)
    partial = c.get("partial_rotary_factor", 1.0)
    if not isinstance(partial, int | float) or not 0 < partial <= 1:
        raise NotOnFastPath(f"config.json partial_rotary_factor = {partial!r} is not in (0, 1]")
    rotary = int(head_dim * partial)  # as transformers rounds it
    if rotary != head_dim and rotary % 16:
        # GroupQueryAttention's cos/sin caches must be a multiple of 8 wide for a partial rotation.
        raise NotOnFastPath(f"a partial rotary dimension of {rotary} (not a multiple of 16) is not on the fast path")
    if c.get("mlp_bias") or (c.get("attention_bias") and family not in ("qwen2",)):
        raise NotOnFastPath("projection biases other than Qwen2's q/k/v are not on the fast path")
    scaling = None
    rope = c.get("rope_scaling")
    if isinstance(rope, dict):
        kind = rope.get("rope_type", rope.get("type"))
        if kind == "linear":
            scaling = RopeScaling("linear", float(rope["factor"]))
        elif kind == "llama3":
            scaling = RopeScaling(
                "llama3",
                float(rope["factor"]),
                float(rope.get("low_freq_factor", 1.0)),
                float(rope.get("high_freq_factor", 4.0)),
                int(rope.get("original_max_position_embeddings", 8192)),
            )
        elif kind in ("longrope", "su"):
            scaling = _longrope(c, rope, integer("max_position_embeddings", 2048))
        elif kind not in (None, "default"):
            raise NotOnFastPath(
                f"rope scaling {kind!r} is not on the fast path (supported: linear, llama3, longrope)"
            )
    window = c.get("sliding_window")
    if family in ("qwen2", "qwen3", "smollm3"):
        window = window if c.get("use_sliding_window") else None
    if window and family == "smollm3":
        raise NotOnFastPath("SmolLM3's sliding-window layers are not on the fast path")
    layers = integer("num_hidden_layers")
    gemma = _gemma(c, hidden, layers) if family in ("gemma2", "gemma3_text") else {}
    return LlamaShape(
        vocab_size=integer("vocab_size"),
        hidden_size=hidden,
        intermediate_size=integer("intermediate_size"),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=integer("num_key_value_heads", heads),
        head_dim=head_dim,
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        rope_theta=float(c.get("rope_theta", 10000.0)),
        # The rope tables have a row per position: never more than the engine prepares for.
        max_position_embeddings=min(integer("max_position_embeddings", 2048), MAX_CONTEXT),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        rope_scaling=scaling,
        sliding_window=window if isinstance(window, int) and window > 0 else None,
        rotary_dim=None if rotary == head_dim else rotary,
        no_rope_layers=_no_rope_layers(c, layers) if family == "smollm3" else (),
        **gemma,
    )


def _gemma(c: dict[str, Any], hidden: int, layers: int) -> dict[str, Any]:
    """Gemma 2's and 3's extras as :class:`LlamaShape` fields. Their exports store the norms' (1 + w)
    already folded into one initializer, which is what the reader takes."""
    if c.get("hidden_activation", c.get("hidden_act")) not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise NotOnFastPath(f"Gemma's activation {c.get('hidden_activation')!r} is not on the fast path")
    types = c.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers:
        raise NotOnFastPath(f"config.json layer_types is not a list of {layers}")
    scalar = c.get("query_pre_attn_scalar")

    def cap(key: str) -> float | None:
        value = c.get(key)
        return float(value) if isinstance(value, int | float) and value > 0 else None

    return {
        "sliding_layers": tuple(i for i, t in enumerate(types) if t == "sliding_attention"),
        "attention_scale": float(scalar) ** -0.5 if isinstance(scalar, int | float) and scalar > 0 else None,
        "attn_softcap": cap("attn_logit_softcapping"),
        "final_softcap": cap("final_logit_softcapping"),
        "embedding_scale": float(np.float32(hidden**0.5)),
        "sandwich_norms": True,
        "activation": "gelu_tanh",
        "local_rope_theta": float(local) if isinstance(local := c.get("rope_local_base_freq"), int | float) else None,
    }


def _no_rope_layers(c: dict[str, Any], layers: int) -> tuple[int, ...]:
    """SmolLM3's ``no_rope_layers`` (1: the layer has a rotary embedding, 0: it has none) as the
    indices without; absent, every ``no_rope_layer_interval``-th layer has none (transformers' rule)."""
    flags = c.get("no_rope_layers")
    if flags is None:
        interval = c.get("no_rope_layer_interval", 4)
        if not isinstance(interval, int) or interval <= 0:
            raise NotOnFastPath(f"config.json no_rope_layer_interval = {interval!r} is not a positive integer")
        flags = [int((i + 1) % interval != 0) for i in range(layers)]
    if not isinstance(flags, list) or len(flags) != layers or any(f not in (0, 1) for f in flags):
        raise NotOnFastPath(f"config.json no_rope_layers is not {layers} flags of 0 or 1")
    return tuple(i for i, f in enumerate(flags) if not f)


def _longrope(c: dict[str, Any], rope: dict[str, Any], max_positions: int) -> RopeScaling:
    """Phi-3's ``longrope`` (``su`` in older configs), with transformers' default attention factor:
    sqrt(1 + ln(s) / ln(original)) for the extension s = max / original positions."""
    original = c.get("original_max_position_embeddings")
    if isinstance(original, int) and original > 0:
        factor = max_positions / original
    else:
        original, factor = max_positions, float(rope.get("factor") or 1.0)
    attention = rope.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    try:
        return RopeScaling(
            "longrope", factor, original_max_position_embeddings=original, attention_factor=float(attention),
            short_factor=tuple(float(f) for f in rope["short_factor"]),
            long_factor=tuple(float(f) for f in rope["long_factor"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise NotOnFastPath(f"config.json longrope scaling is incomplete: {exc}") from exc


@cache
def converter_fingerprint() -> str:
    """Changes whenever the code that writes the fused graph (or the runtime it targets) changes."""
    import onnx
    import onnxruntime

    h = hashlib.sha256(f"onnx {onnx.__version__} onnxruntime {onnxruntime.__version__}".encode())
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update(name.encode())
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _source_stamp(graph: Path) -> dict[str, Any]:
    files = [graph, *sorted(graph.parent.glob(graph.name + "_data*")), *sorted(graph.parent.glob(graph.name + ".data"))]
    stats: dict[str, list[Any]] = {}
    for f in files:
        st = f.stat()  # follows the snapshot's symlink to its blob
        stats[f.name] = [st.st_size, st.st_mtime_ns, os.path.realpath(f)]
    return {"converter": converter_fingerprint(), "source": graph.name, "files": stats}


def is_fused(graph: Path) -> bool:
    """A graph hflocal wrote itself (an import, or an earlier rewrite): nothing to gain."""
    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception:
        return False
    return any(p.key == KV_BUFFER_METADATA for p in model.metadata_props)


def fast_graph(folder: Path, graph: Path, quantization: str) -> FastGraph:
    """The fused rewrite of ``graph`` (a file of model ``folder``), built now if it is missing or
    stale; ``FastGraph(None, reason)`` when the model keeps its original graph."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        shape = shape_from_config(config if isinstance(config, dict) else {})
        quant = _quant_of(quantization)
    except (OSError, ValueError) as exc:
        return FastGraph(None, str(exc))
    out_dir = cache_dir_for(folder) / quant
    out = out_dir / "onnx" / QUANT_FILES[quant]
    stamp_path = out_dir / STAMP
    try:
        wanted = _source_stamp(graph)
        known = _read_stamp(stamp_path)
        if isinstance(known, dict) and known.get("original") and known == {**wanted, "original": known["original"]}:
            return FastGraph(None, str(known["original"]))  # remembered: the next load does not parse again
        if out.is_file() and known == wanted:
            return FastGraph(out)
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        try:
            if is_fused(graph):
                raise NotOnFastPath(ALREADY_FUSED)
            rewrite(shape, graph, out_dir, quant)
        except (NotOnFastPath, UnreadableGraph) as exc:
            shutil.rmtree(out_dir / "onnx", ignore_errors=True)
            stamp_path.write_text(json.dumps({**wanted, "original": str(exc)}))
            return FastGraph(None, str(exc))
        stamp_path.write_text(json.dumps(wanted))
        return FastGraph(out)
    except (OSError, ValueError, KeyError, MemoryError) as exc:
        log.warning("fast path: rewriting %s failed, keeping the original graph: %s", graph, exc)
        shutil.rmtree(out_dir, ignore_errors=True)
        return FastGraph(None, f"rewrite failed: {exc}")


def _read_stamp(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _quant_of(quantization: str) -> Quant:
    if quantization not in QUANT_FILES:
        raise NotOnFastPath(f"quantization {quantization!r} is not on the fast path")
    return cast(Quant, quantization)


def rewrite(
    shape: LlamaShape, graph: Path, out_dir: Path, quant: Quant, *, accuracy_level: AccuracyLevel = None,
    head_bits: int | None = None,
) -> Path:
    """Write the fused form of export ``graph`` as ``out_dir/onnx/<QUANT_FILES[quant]>``.
    ``accuracy_level`` and ``head_bits`` as in :func:`~agent.convert.llama_graph.write_llama_onnx`
    (tests use them to compare exactly). The head takes the quantization's default form (8-bit,
    rescored): the embedding shares that form, so an untied 4-bit head's width would cost the float
    embedding its precision; its 4-bit values are widened to 8-bit blocks instead (an error far below
    the 4-bit step, measured: 97 % top-1 agreement with the original against 53 % kept 4-bit)."""
    from agent.convert.llama_graph import write_llama_onnx

    weights, info = read_export_weights(graph)
    weights = unfuse_projections(shape, weights)
    if info["tied_head"] and not shape.tie_word_embeddings:
        shape = LlamaShape(**{**shape.__dict__, "tie_word_embeddings": True})
    elif "lm_head.weight" in weights and shape.tie_word_embeddings:
        # A tied head the export kept as a matrix of its own (optimum does past 2 GB: every ~1B
        # export), quantized there apart from the float embedding. The model is tied: the head is
        # the embedding again, quantized once from its floats like any tied head (one table, not two).
        del weights["lm_head.weight"]
    _check(shape, weights)
    # Weights beside the graph, as the import writes them: onnxruntime maps them instead of copying
    # a protobuf of the whole model (a 1B rewrite held inline took 5.6 GB to load, 2.4 GB this way).
    return write_llama_onnx(
        shape, weights, out_dir, quant, fused=True, head_bits=head_bits, accuracy_level=accuracy_level,
        external_data=True,
    )


def unfuse_projections(shape: LlamaShape, weights: dict[str, Weight]) -> dict[str, Weight]:
    """Phi-3's ``qkv_proj`` and ``gate_up_proj`` as Llama's q/k/v and gate/up (rows [q; k; v] and
    [gate; up]); the fused graph stacks them again, so 4-bit blocks come out byte for byte."""
    out: dict[str, Weight] = {}
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    for name, w in weights.items():
        prefix, fused = _fused_projection(name)
        if fused == "qkv_proj":
            sizes, names = [q, kv, kv], ["q_proj", "k_proj", "v_proj"]
        elif fused == "gate_up_proj":
            sizes, names = [shape.intermediate_size] * 2, ["gate_proj", "up_proj"]
        else:
            out[name] = w
            continue
        rows = w.n if isinstance(w, BlockQuantized) else len(w)
        if rows != sum(sizes):
            raise UnreadableGraph(f"{name} has {rows} rows, config.json implies {sum(sizes)}")
        suffix = name.rsplit(".", 1)[-1]
        for part, piece in zip(names, split_rows(w, sizes), strict=True):
            out[f"{prefix}.{part}.{suffix}"] = piece
    return out


def _fused_projection(name: str) -> tuple[str, str]:
    module = name.rsplit(".", 1)[0]
    prefix, _, last = module.rpartition(".")
    return prefix, last


def _check(shape: LlamaShape, weights: dict[str, Any]) -> None:
    """Every weight the graph needs is there with its shape, and nothing is left unused."""
    h, kv, hd = shape.hidden_size, shape.num_kv_heads * shape.head_dim, shape.head_dim
    expected: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (shape.vocab_size, h), "model.norm.weight": (h,),
    }
    if not shape.tie_word_embeddings:
        expected["lm_head.weight"] = (shape.vocab_size, h)
    optional: dict[str, tuple[int, ...]] = {}
    for i in range(shape.num_layers):
        p = f"model.layers.{i}"
        expected.update({
            f"{p}.input_layernorm.weight": (h,),
            f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (shape.num_heads * hd, h),
            f"{p}.self_attn.k_proj.weight": (kv, h),
            f"{p}.self_attn.v_proj.weight": (kv, h),
            f"{p}.self_attn.o_proj.weight": (h, shape.num_heads * hd),
            f"{p}.mlp.gate_proj.weight": (shape.intermediate_size, h),
            f"{p}.mlp.up_proj.weight": (shape.intermediate_size, h),
            f"{p}.mlp.down_proj.weight": (h, shape.intermediate_size),
        })
        if shape.sandwich_norms:
            expected.update({f"{p}.{n}_feedforward_layernorm.weight": (h,) for n in ("pre", "post")})
        optional.update({
            f"{p}.self_attn.q_proj.bias": (shape.num_heads * hd,),
            f"{p}.self_attn.k_proj.bias": (kv,),
            f"{p}.self_attn.v_proj.bias": (kv,),
            f"{p}.self_attn.q_norm.weight": (hd,),
            f"{p}.self_attn.k_norm.weight": (hd,),
        })
    missing = [n for n in expected if n not in weights]
    if missing:
        raise UnreadableGraph(f"the graph has no {_names(missing)}")
    unused = [n for n in weights if n not in expected and n not in optional]
    if unused:
        raise UnreadableGraph(f"the fused graph would drop {_names(unused)}")
    for name, want in {**expected, **{n: s for n, s in optional.items() if n in weights}}.items():
        w = weights[name]
        got = (w.n, w.k) if hasattr(w, "bits") else tuple(w.shape)
        if tuple(got) != want:
            raise UnreadableGraph(f"{name} is {list(got)}, config.json implies {list(want)}")


def _names(names: list[str]) -> str:
    return names[0] + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")
