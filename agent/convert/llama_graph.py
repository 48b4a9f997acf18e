"""Write a Llama-family decoder as ONNX with the optimum / Transformers.js I/O contract.

Inputs: ``input_ids`` int64 ``[batch, seq]``, ``attention_mask`` int64 ``[batch, past+seq]``,
``position_ids`` int64 ``[batch, seq]``, ``past_key_values.{i}.key|value`` float32
``[batch, kv_heads, past, head_dim]`` (past may be 0). Outputs: ``logits`` float32
``[batch, seq, vocab]`` and ``present.{i}.key|value`` ``[batch, kv_heads, past+seq, head_dim]``.
Every variant keeps float32 I/O, so one decode loop serves them all.

Weights come in Hugging Face names, as float arrays or as :class:`BlockQuantized` blocks (which pass
straight into ``MatMulNBits`` for ``q4``/``q8``; that is how GGUF 4/8-bit blocks avoid re-rounding).
The mapping is read once per name, in layer order, so a lazy mapping keeps memory to about one layer.

Quantizations (files named as Transformers.js names them, :data:`QUANT_FILES`):
``fp32``; ``fp16`` (fp16 initializers, Cast to float32 in the graph: half the download, float32
compute and I/O); ``q8`` and ``q4``: weight-only ``MatMulNBits`` with block 32 (8-bit symmetric /
4-bit asymmetric), activations stay float unless ``accuracy_level=4`` is asked for. The lm_head
and the embedding are quantized with ``head_bits`` (default 8) and share one code tensor when tied.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
import onnx
from onnx import TensorProto

from agent.convert.attention import AttentionLayout, DecoderInputs, OptimumAttention, ProjectedQKV
from agent.convert.graph_builder import MS_DOMAIN, GraphBuilder
from agent.convert.llama_shape import LlamaShape
from agent.convert.quantize import (
    BlockQuantized,
    can_concat_rows,
    concat_rows,
    quantize_asymmetric,
    quantize_symmetric,
)

Quant: TypeAlias = Literal["fp32", "fp16", "q8", "q4"]
Weight: TypeAlias = "np.ndarray | BlockQuantized"
Progress: TypeAlias = Callable[[str, int, int], None]

QUANT_FILES: dict[str, str] = {
    "fp32": "model.onnx",
    "fp16": "model_fp16.onnx",
    "q8": "model_quantized.onnx",
    "q4": "model_q4.onnx",
}
EXTERNAL_DATA_THRESHOLD = 1_500_000_000
_BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "q8": 1.13, "q4": 0.6}


def estimate_size(shape: LlamaShape, quant: Quant, head_bits: int = 8) -> int:
    """Rough bytes of the written model, used to decide on external data before writing."""
    per = _BYTES_PER_PARAM[quant]
    embed = shape.vocab_size * shape.hidden_size
    head_per = per if quant in ("fp32", "fp16") else head_bits / 8 + 0.13
    layers = shape.param_count() - embed * (1 if shape.tie_word_embeddings else 2)
    return int(layers * per + embed * head_per * (1 if shape.tie_word_embeddings else 2))


def build_llama_model(
    shape: LlamaShape,
    weights: Mapping[str, Weight],
    quant: Quant = "fp32",
    *,
    accuracy_level: int = 0,
    head_bits: int = 8,
    attention: AttentionLayout | None = None,
    external_data: Path | None = None,
    external_location: str | None = None,
    progress: Progress | None = None,
) -> onnx.ModelProto:
    """Build the decoder graph. ``external_data``: stream weights to this file (see GraphBuilder)."""
    if quant not in QUANT_FILES:
        raise ValueError(f"unknown quantization {quant!r}: use one of {', '.join(QUANT_FILES)}")
    g = GraphBuilder("llama_decoder", external_data, external_location)
    try:
        _Decoder(g, shape, quant, accuracy_level, head_bits, attention or OptimumAttention()).build(weights, progress)
    except BaseException:
        g.abort()
        raise
    return g.model()


def write_llama_onnx(
    shape: LlamaShape,
    weights: Mapping[str, Weight],
    repo_dir: Path,
    quant: Quant = "fp32",
    *,
    accuracy_level: int = 0,
    head_bits: int = 8,
    external_data: bool | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write ``repo_dir/onnx/<QUANT_FILES[quant]>`` (+ ``<file>_data`` when large); returns its path.

    ``external_data=None`` decides by :func:`estimate_size` (> ~1.5 GB). Files appear atomically:
    written under temporary names, then renamed, data file first.
    """
    onnx_dir = Path(repo_dir) / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    path = onnx_dir / QUANT_FILES[quant]
    data_path = path.with_name(path.name + "_data")
    if external_data is None:
        external_data = estimate_size(shape, quant, head_bits) > EXTERNAL_DATA_THRESHOLD
    tag = f".{os.getpid()}.incomplete"
    tmp_data = data_path.with_name(data_path.name + tag) if external_data else None
    model = build_llama_model(
        shape,
        weights,
        quant,
        accuracy_level=accuracy_level,
        head_bits=head_bits,
        external_data=tmp_data,
        external_location=data_path.name,
        progress=progress,
    )
    tmp = path.with_name(path.name + tag)
    try:
        onnx.save_model(model, tmp)
        if tmp_data is not None:
            os.replace(tmp_data, data_path)
        elif data_path.exists():
            data_path.unlink()
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp_data):
            if leftover is not None and leftover.exists():
                leftover.unlink()
    return path


def prepare_weight(w: Weight, quant: Quant, *, head: bool = False, head_bits: int = 8) -> Weight:
    """The form a weight takes in a ``quant`` file: float for fp32/fp16 (blocks are dequantized),
    blocks for q8/q4 (given blocks pass through unchanged; floats are quantized here)."""
    if quant in ("fp32", "fp16"):
        return w.dequantize() if isinstance(w, BlockQuantized) else np.asarray(w, np.float32)
    if isinstance(w, BlockQuantized):
        return w
    bits = head_bits if head else (4 if quant == "q4" else 8)
    if head or bits == 8:
        return quantize_symmetric(w, bits)
    return quantize_asymmetric(w, bits)


def effective_weights(
    shape: LlamaShape, weights: Mapping[str, Weight], quant: Quant, *, head_bits: int = 8
) -> dict[str, np.ndarray]:
    """The float32 weights a ``quant`` model built from ``weights`` computes with, for checking a
    quantized graph exactly against a float reference (fp16 rounding included). The result always
    has an ``lm_head.weight``: a tied head and its embedding may be stored differently."""
    out: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if name.endswith("norm.weight"):
            out[name] = np.asarray(w, np.float32)
            continue
        is_embed = name == "model.embed_tokens.weight"
        prepared = prepare_weight(w, quant, head=is_embed or name == "lm_head.weight", head_bits=head_bits)
        if is_embed and isinstance(prepared, BlockQuantized) and prepared.zero_point_kind == "float":
            prepared = quantize_symmetric(prepared.dequantize(), head_bits)  # as _Decoder._embedding
        if is_embed and shape.tie_word_embeddings:
            head = prepare_weight(w, quant, head=True, head_bits=head_bits)
            out["lm_head.weight"] = _as_float(head, quant)
        out[name] = _as_float(prepared, quant)
    return out


def _as_float(w: Weight, quant: Quant) -> np.ndarray:
    if isinstance(w, BlockQuantized):
        return w.dequantize()
    return w.astype(np.float16).astype(np.float32) if quant == "fp16" else np.asarray(w, np.float32)


class _Decoder:
    """One build: embedding, layers, final norm, lm_head."""

    def __init__(
        self, g: GraphBuilder, shape: LlamaShape, quant: Quant, accuracy_level: int, head_bits: int, attn: AttentionLayout
    ) -> None:
        self.g, self.shape, self.quant, self.attn = g, shape, quant, attn
        self.accuracy_level, self.head_bits = accuracy_level, head_bits
        self._embed_init = ""  # float embedding initializer (a tied float head reuses it)
        self._shared_head = False  # the quantized embedding uses lm_head.qweight

    # --- weights -------------------------------------------------------------------------------
    def _prepare(self, w: Weight, *, head: bool = False) -> Weight:
        return prepare_weight(w, self.quant, head=head, head_bits=self.head_bits)

    def _float_init(self, name: str, w: np.ndarray) -> str:
        """A float weight initializer; in fp16 files stored as fp16 and cast back."""
        if self.quant != "fp16":
            return self.g.initializer(name, w.astype(np.float32))
        init = self.g.initializer(name, w.astype(np.float16))
        return str(self.g.op("Cast", [init], name=f"{name}/Cast", to=TensorProto.FLOAT))

    def _linear(self, x: str, w: Weight, name: str) -> str:
        g = self.g
        if isinstance(w, BlockQuantized):
            inputs = [x, g.initializer(f"{name}.qweight", w.data), g.initializer(f"{name}.scales", w.scales)]
            if w.zero_points is not None:
                inputs.append(g.initializer(f"{name}.qzeros", w.zero_points))
            return str(
                g.op(
                    "MatMulNBits",
                    inputs,
                    name=f"/{name}/MatMulNBits",
                    domain=MS_DOMAIN,
                    K=w.k,
                    N=w.n,
                    bits=w.bits,
                    block_size=w.block_size,
                    accuracy_level=self.accuracy_level,
                )
            )
        return str(g.op("MatMul", [x, self._float_init(f"{name}.weight_t", w.T)], name=f"/{name}/MatMul"))

    def _fused_linear(self, x: str, parts: list[Weight], name: str) -> list[str] | str:
        """One MatMul over row-stacked weights when their layouts allow it, else one per part."""
        if all(not isinstance(p, BlockQuantized) for p in parts):
            return self._linear(x, np.concatenate(parts), name)  # type: ignore[arg-type]
        blocks = [p for p in parts if isinstance(p, BlockQuantized)]
        if len(blocks) == len(parts) and can_concat_rows(blocks):
            return self._linear(x, concat_rows(blocks), name)
        return [self._linear(x, p, f"{name}.{i}") for i, p in enumerate(parts)]

    def _norm(self, x: str, weight: np.ndarray, name: str) -> str:
        """RMSNorm in plain opset-17 ops, in the exact pattern onnxruntime fuses into one
        SimplifiedLayerNormalization kernel (that op itself is not valid ONNX for the checker)."""
        g, p = self.g, f"/{name}"
        w = g.initializer(f"{name}.weight", np.asarray(weight, np.float32))
        sq = g.op("Pow", [x, g.const(2.0, np.float32)], name=f"{p}/Pow")
        mean = g.op("ReduceMean", [sq], name=f"{p}/ReduceMean", axes=[-1], keepdims=1)
        eps = g.op("Add", [mean, g.const(float(self.shape.rms_norm_eps), np.float32)], name=f"{p}/Add")
        normed = g.op("Div", [x, g.op("Sqrt", [eps], name=f"{p}/Sqrt")], name=f"{p}/Div")
        return str(g.op("Mul", [normed, w], name=f"{p}/Mul"))

    # --- graph ---------------------------------------------------------------------------------
    def build(self, weights: Mapping[str, Weight], progress: Progress | None) -> None:
        g, s = self.g, self.shape
        inputs = DecoderInputs()
        batch, seq, past, total = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"
        g.add_input(inputs.input_ids, TensorProto.INT64, [batch, seq])
        g.add_input(inputs.attention_mask, TensorProto.INT64, [batch, total])
        g.add_input(inputs.position_ids, TensorProto.INT64, [batch, seq])
        for i in range(s.num_layers):
            for kind in ("key", "value"):
                g.add_input(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, [batch, s.num_kv_heads, past, s.head_dim])
        g.add_output("logits", TensorProto.FLOAT, [batch, seq, s.vocab_size])
        for i in range(s.num_layers):
            for kind in ("key", "value"):
                g.add_output(f"present.{i}.{kind}", TensorProto.FLOAT, [batch, s.num_kv_heads, total, s.head_dim])

        embed = weights["model.embed_tokens.weight"]
        head = self._prepare(embed if s.tie_word_embeddings else weights["lm_head.weight"], head=True)
        x = self._embedding(inputs.input_ids, embed, head)
        if s.tie_word_embeddings:
            del embed
        self.attn.prepare(g, s, inputs)
        for i in range(s.num_layers):
            x = self._layer(x, i, weights)
            if progress is not None:
                progress("build", i + 1, s.num_layers)
        x = self._norm(x, weights["model.norm.weight"], "model.norm")
        self._lm_head(x, head, inputs.input_ids)

    def _embedding(self, ids: str, embed: Weight, head: Weight) -> str:
        g, s = self.g, self.shape
        name = "model.embed_tokens"
        if self.quant in ("fp32", "fp16"):
            table = embed.dequantize() if isinstance(embed, BlockQuantized) else np.asarray(embed)
            dtype = np.float16 if self.quant == "fp16" else np.float32
            self._embed_init = g.initializer(f"{name}.weight", table.astype(dtype))
            out = g.op("Gather", [self._embed_init, ids], name=f"/{name}/Gather")
            return out if self.quant == "fp32" else str(g.op("Cast", [out], name=f"/{name}/Cast", to=TensorProto.FLOAT))
        if s.hidden_size % 32:
            raise ValueError(f"quantized embeddings need hidden_size divisible by 32, not {s.hidden_size}")
        if s.tie_word_embeddings and isinstance(head, BlockQuantized) and head.zero_points is None:
            # Share the lm_head codes: [V, blocks, blob] gathered on axis 0, quantized along axis 2.
            data = g.initializer("lm_head.qweight", head.data)
            scales = g.initializer(f"{name}.scales", head.scales[..., None])
            out = g.op(
                "GatherBlockQuantized",
                [data, ids, scales],
                name=f"/{name}/GatherBlockQuantized",
                domain=MS_DOMAIN,
                gather_axis=0,
                quantize_axis=2,
                block_size=head.block_size,
                bits=head.bits,
            )
            self._shared_head = True
            return str(g.op("Reshape", [out, g.const([0, 0, s.hidden_size])], name=f"/{name}/Reshape"))
        q = embed if isinstance(embed, BlockQuantized) and embed.zero_point_kind != "float" else None
        if q is None:
            table = embed.dequantize() if isinstance(embed, BlockQuantized) else embed
            q = quantize_symmetric(table, self.head_bits)
        inputs = [g.initializer(f"{name}.qweight", q.data.reshape(q.n, -1)), ids, g.initializer(f"{name}.scales", q.scales)]
        if q.zero_points is not None:
            inputs.append(g.initializer(f"{name}.qzeros", q.zero_points))
        return str(
            g.op(
                "GatherBlockQuantized",
                inputs,
                name=f"/{name}/GatherBlockQuantized",
                domain=MS_DOMAIN,
                gather_axis=0,
                quantize_axis=1,
                block_size=q.block_size,
                bits=q.bits,
            )
        )

    def _lm_head(self, x: str, head: Weight, ids: str) -> None:
        g, s = self.g, self.shape
        if isinstance(head, BlockQuantized):
            inputs = [x, "lm_head.qweight" if self._shared_head else g.initializer("lm_head.qweight", head.data)]
            inputs.append(g.initializer("lm_head.scales", head.scales))
            if head.zero_points is not None:
                inputs.append(g.initializer("lm_head.qzeros", head.zero_points))
            g.op(
                "MatMulNBits",
                inputs,
                name="/lm_head/MatMulNBits",
                outputs=["logits"],
                domain=MS_DOMAIN,
                K=head.k,
                N=head.n,
                bits=head.bits,
                block_size=head.block_size,
                accuracy_level=self.accuracy_level,
            )
            return
        # Float head: Gemm with transB reads the [V, H] table as stored, so a tied head costs nothing.
        if s.tie_word_embeddings:
            table = self._embed_init
            if self.quant == "fp16":
                table = g.op("Cast", [table], name="/lm_head/Cast", to=TensorProto.FLOAT)
        else:
            table = self._float_init("lm_head.weight", head)  # type: ignore[arg-type]
        flat = g.op("Reshape", [x, g.const([-1, s.hidden_size])], name="/lm_head/Reshape")
        y = g.op("Gemm", [flat, table], name="/lm_head/Gemm", transB=1)
        out_shape = g.op(
            "Concat",
            [g.op("Shape", [ids], name="/lm_head/Shape"), g.const([s.vocab_size])],
            name="/lm_head/Concat",
            axis=0,
        )
        g.op("Reshape", [y, out_shape], name="/lm_head/Reshape", outputs=["logits"])

    def _layer(self, x: str, i: int, weights: Mapping[str, Weight]) -> str:
        g, s = self.g, self.shape
        p = f"model.layers.{i}"
        h = self._norm(x, weights[f"{p}.input_layernorm.weight"], f"{p}.input_layernorm")
        qkv_parts = [self._prepare(weights[f"{p}.self_attn.{n}_proj.weight"]) for n in ("q", "k", "v")]
        qkv = self._fused_linear(h, qkv_parts, f"{p}.self_attn.qkv_proj")
        del qkv_parts
        projected = ProjectedQKV(fused=qkv) if isinstance(qkv, str) else ProjectedQKV(None, *qkv)
        past = (f"past_key_values.{i}.key", f"past_key_values.{i}.value")
        attn = self.attn.layer(g, s, i, projected, past)
        o = self._linear(attn, self._prepare(weights[f"{p}.self_attn.o_proj.weight"]), f"{p}.self_attn.o_proj")
        x = g.op("Add", [x, o], name=f"/{p}/attn/residual/Add")

        h = self._norm(x, weights[f"{p}.post_attention_layernorm.weight"], f"{p}.post_attention_layernorm")
        gate_up = [self._prepare(weights[f"{p}.mlp.{n}_proj.weight"]) for n in ("gate", "up")]
        out = self._fused_linear(h, gate_up, f"{p}.mlp.gate_up_proj")
        del gate_up
        if isinstance(out, str):
            gate, up = g.op("Split", [out, g.const([s.intermediate_size] * 2)], name=f"/{p}/mlp/Split", outputs=2, axis=-1)
        else:
            gate, up = out
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], name=f"/{p}/mlp/Sigmoid")], name=f"/{p}/mlp/Mul")
        act = g.op("Mul", [act, up], name=f"/{p}/mlp/Mul")
        down = self._linear(act, self._prepare(weights[f"{p}.mlp.down_proj.weight"]), f"{p}.mlp.down_proj")
        return str(g.op("Add", [x, down], name=f"/{p}/mlp/residual/Add"))
