"""Write a Llama-family decoder as ONNX with the optimum / Transformers.js I/O contract.

Inputs: ``input_ids`` int64 ``[batch, seq]``, ``attention_mask`` int64 ``[batch, past+seq]``,
``position_ids`` int64 ``[batch, seq]``, ``past_key_values.{i}.key|value`` float32
``[batch, kv_heads, past, head_dim]`` (past may be 0). Outputs: ``logits`` float32
``[batch, seq, vocab]`` and ``present.{i}.key|value`` ``[batch, kv_heads, past+seq, head_dim]``.
Every variant keeps float32 I/O, so one decode loop serves them all.

Weights come in Hugging Face names, as float arrays or as :class:`BlockQuantized` blocks (which pass
straight into ``MatMulNBits`` for ``q4``/``q8``; that is how GGUF 4/8-bit blocks avoid re-rounding).
The mapping is read once per name, in layer order, so a lazy mapping keeps memory to about one layer.

Quantizations (files named as Transformers.js names them, :data:`QUANT_FILES`; storage policy in
:mod:`agent.convert.weight_forms`): ``fp32``; ``fp16`` (fp16 initializers cast to float32 in the
graph: half the download, float32 compute and I/O); ``q8`` / ``q4``: weight-only ``MatMulNBits``
with block 32. ``accuracy_level`` None picks per node (int8 activations but for q/k/v), ``"float"``
keeps float activations wherever a fast kernel allows (see :mod:`.linear`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeAlias

import numpy as np
import onnx
from onnx import TensorProto

from agent.convert.attention import AttentionLayout, DecoderInputs, FusedAttention, OptimumAttention
from agent.convert.graph_builder import MS_DOMAIN, GraphBuilder
from agent.convert.linear import AUTO_ACCURACY, EXACT_INPUT_ACCURACY, AccuracyLevel, LinearEmitter
from agent.convert.llama_shape import LlamaShape
from agent.convert.qkv_extras import qkv_extras, rms_norm
from agent.convert.quantize import BlockQuantized
from agent.convert.weight_forms import (
    QUANT_FILES,
    Quant,
    Weight,
    as_float,
    embedding_blocks,
    estimate_size,
    head_bits_for,
    prepare_head,
    prepare_weight,
    shares_head_codes,
)
from agent.engine.contract import KV_BUFFER_METADATA, KV_BUFFER_SHARED

__all__ = ["QUANT_FILES", "LlamaShape", "Quant", "Weight", "build_llama_model", "write_llama_onnx"]

Progress: TypeAlias = Callable[[str, int, int], None]
EXTERNAL_DATA_THRESHOLD = 1_500_000_000
LOGITS_TO_KEEP = "logits_to_keep"
RESCORE_TOP_K = 16


def build_llama_model(
    shape: LlamaShape,
    weights: Mapping[str, Weight],
    quant: Quant = "fp32",
    *,
    accuracy_level: AccuracyLevel = None,
    head_bits: int | None = None,
    attention: AttentionLayout | None = None,
    fused: bool = False,
    progress: Progress | None = None,
) -> onnx.ModelProto:
    """The decoder graph as one in-memory proto (for inspection; :func:`write_llama_onnx` writes
    files faster and streams large models). ``head_bits``: lm_head/embedding form (4, 8, 16, 32;
    default per quant in ``weight_forms.DEFAULT_HEAD_BITS``)."""
    return _build(
        GraphBuilder("llama_decoder"), shape, weights, quant, accuracy_level, head_bits, attention, fused, progress
    ).model()


def _build(
    g: GraphBuilder,
    shape: LlamaShape,
    weights: Mapping[str, Weight],
    quant: Quant,
    accuracy_level: AccuracyLevel,
    head_bits: int | None,
    attention: AttentionLayout | None,
    fused: bool,
    progress: Progress | None,
) -> GraphBuilder:
    if quant not in QUANT_FILES:
        raise ValueError(f"unknown quantization {quant!r}: use one of {', '.join(QUANT_FILES)}")
    try:
        head = head_bits_for(quant, head_bits)
        _Decoder(g, shape, quant, accuracy_level, head, attention, fused).build(weights, progress)
    except BaseException:
        g.abort()
        raise
    return g


def write_llama_onnx(
    shape: LlamaShape,
    weights: Mapping[str, Weight],
    repo_dir: Path,
    quant: Quant = "fp32",
    *,
    accuracy_level: AccuracyLevel = None,
    head_bits: int | None = None,
    attention: AttentionLayout | None = None,
    fused: bool = False,
    external_data: bool | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write ``repo_dir/onnx/<QUANT_FILES[quant]>`` (+ ``<file>_data`` when large); returns its path.

    ``external_data=None`` decides by ``estimate_size`` (> ~1.5 GB). Files appear atomically:
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
    tmp = path.with_name(path.name + tag)
    g = GraphBuilder("llama_decoder", tmp_data, data_path.name)
    try:
        _build(g, shape, weights, quant, accuracy_level, head_bits, attention, fused, progress).save(tmp)
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


class _Decoder:
    """One build: embedding, layers, final norm, lm_head."""

    def __init__(
        self,
        g: GraphBuilder,
        shape: LlamaShape,
        quant: Quant,
        accuracy_level: AccuracyLevel,
        head_bits: int,
        attention: AttentionLayout | None,
        fused: bool = False,
    ) -> None:
        self.g, self.shape, self.quant, self.head_bits = g, shape, quant, head_bits
        self.fused = fused
        self.attn = attention or (FusedAttention() if fused else OptimumAttention())
        level = None if accuracy_level == "float" else accuracy_level
        layers = EXACT_INPUT_ACCURACY if accuracy_level == "float" else AUTO_ACCURACY
        self.lin = LinearEmitter(g, fp16=quant == "fp16" or head_bits == 16, accuracy_level=level)
        self.layer_lin = LinearEmitter(g, fp16=quant == "fp16", accuracy_level=level, auto=layers)
        self.qkv_lin = LinearEmitter(g, fp16=quant == "fp16", accuracy_level=level, auto=EXACT_INPUT_ACCURACY)
        self._table = ""  # float embedding initializer (a tied float head reuses it)
        self._shared_codes = ""  # lm_head code initializer the quantized embedding also gathers from
        self._row_scales = ""  # its scales as [V, blocks, 1], the layout GatherBlockQuantized takes
        self._logits = "/lm_head/logits" if shape.final_softcap else "logits"  # before the soft-cap
        if not fused and (shape.final_softcap or shape.embedding_scale or shape.sandwich_norms):
            raise ValueError("Gemma's soft-caps, embedding scale and norms need the fused graph")

    def _norm(self, x: str, weight: Weight, name: str) -> str:
        return rms_norm(self.g, x, weight, name, self.shape.rms_norm_eps)

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
        head = prepare_head(embed if s.tie_word_embeddings else weights["lm_head.weight"], self.head_bits)
        x = self._embedding(inputs.input_ids, embed, head)
        del embed
        if s.embedding_scale is not None:  # Gemma: sqrt(hidden), in float32 as transformers rounds it
            x = str(g.op("Mul", [x, g.const(s.embedding_scale, np.float32)], name="/model/embed_tokens/Mul"))
        self.attn.prepare(g, s, inputs)
        if isinstance(self.attn, FusedAttention):
            # GroupQueryAttention may write the cache in place: the engine then preallocates it.
            g.metadata[KV_BUFFER_METADATA] = KV_BUFFER_SHARED
        residual, delta = x, ""  # the stream is residual + delta; the next norm adds them
        for i in range(s.num_layers):
            residual, delta = self._layer(residual, delta, i, weights)
            if progress is not None:
                progress("build", i + 1, s.num_layers)
        x, _ = self._add_norm(residual, delta, weights["model.norm.weight"], "model.norm")
        self._lm_head(self._keep_last(x), head)
        if s.final_softcap:  # Gemma 2: cap * tanh(logits / cap), after the exact rescoring (it keeps order)
            cap = g.const(float(s.final_softcap), np.float32)
            t = g.op("Tanh", [g.op("Div", [self._logits, cap], name="/lm_head/cap/Div")], name="/lm_head/cap/Tanh")
            g.op("Mul", [t, cap], name="/lm_head/cap/Mul", outputs=["logits"])

    def _add_norm(self, residual: str, delta: str, weight: Weight, name: str) -> tuple[str, str]:
        """``(RMSNorm(residual + delta), residual + delta)``; ``delta`` "" means nothing to add. The
        fused graph writes onnxruntime's ``SkipSimplifiedLayerNormalization`` (one kernel for both)."""
        g = self.g
        if not delta:
            return self._norm(residual, weight, name), residual
        if not self.fused:
            total = g.op("Add", [residual, delta], name=f"/{name}/residual/Add")
            return self._norm(total, weight, name), str(total)
        w = g.initializer(f"{name}.weight", as_float(weight))
        normed, _, _, total = g.op(
            "SkipSimplifiedLayerNormalization",
            [delta, residual, w],
            name=f"/{name}/SkipSimplifiedLayerNormalization",
            outputs=[f"/{name}/output", "", "", f"/{name}/residual"],
            domain=MS_DOMAIN,
            epsilon=float(self.shape.rms_norm_eps),
        )
        return str(normed), str(total)

    def _keep_last(self, x: str) -> str:
        """Only the last ``logits_to_keep`` positions reach the lm_head (transformers' input; 0, the
        default when it is not fed, keeps all). It is an initializer-backed input, so callers that do
        not know it (optimum-style loops, tests) run the graph unchanged."""
        if not self.fused:
            return x
        g = self.g
        g.add_input(LOGITS_TO_KEEP, TensorProto.INT64, [1])
        g.initializer(LOGITS_TO_KEEP, np.zeros(1, np.int64))
        start = g.op("Neg", [LOGITS_TO_KEEP], name="/keep/Neg")
        return str(
            g.op("Slice", [x, start, g.const([np.iinfo(np.int64).max]), g.const([1])], name="/keep/Slice")
        )

    def _embedding(self, ids: str, embed: Weight, head: Weight) -> str:
        g, s = self.g, self.shape
        name = "model.embed_tokens"
        if not isinstance(head, BlockQuantized):
            # Float table; a tied head is the same initializer (Gemm transB below reads it as stored).
            table = head if s.tie_word_embeddings else as_float(embed)
            fp16 = self.lin.fp16
            init = g.initializer(f"{name}.weight", table.astype(np.float16 if fp16 else np.float32))
            out = g.op("Gather", [init, ids], name=f"/{name}/Gather")
            self._table = init
            return out if not fp16 else str(g.op("Cast", [out], name=f"/{name}/Cast", to=TensorProto.FLOAT))
        if s.hidden_size % 32:
            raise ValueError(f"quantized embeddings need hidden_size divisible by 32, not {s.hidden_size}")
        if shares_head_codes(s, head):
            # Gather rows of the lm_head codes [V, blocks, blob], quantized along axis 2.
            self._shared_codes = g.initializer("lm_head.qweight", head.data)
            self._row_scales = g.initializer(f"{name}.scales", head.scales[..., None])
            out = g.op(
                "GatherBlockQuantized",
                [self._shared_codes, ids, self._row_scales],
                name=f"/{name}/GatherBlockQuantized",
                domain=MS_DOMAIN,
                gather_axis=0,
                quantize_axis=2,
                block_size=head.block_size,
                bits=head.bits,
            )
            return str(g.op("Reshape", [out, g.const([0, 0, s.hidden_size])], name=f"/{name}/Reshape"))
        q = embedding_blocks(embed, head, head.bits)
        inputs = [
            g.initializer(f"{name}.qweight", q.data.reshape(q.n, -1)),
            ids,
            g.initializer(f"{name}.scales", q.scales),
        ]
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

    def _lm_head(self, x: str, head: Weight) -> None:
        g, s = self.g, self.shape
        if isinstance(head, BlockQuantized):
            rescore = head.zero_points is None
            logits = self.lin.matmul_nbits(
                x, head, "lm_head", qweight=self._shared_codes or None, output=None if rescore else self._logits
            )
            if rescore:
                self._rescore(x, head, logits)
            return
        if s.tie_word_embeddings:
            table = self._table
            if self.lin.fp16:
                table = g.op("Cast", [table], name="/lm_head/Cast", to=TensorProto.FLOAT)
        else:
            table = self.lin.float_table("lm_head.weight", head)
        flat = g.op("Reshape", [x, g.const([-1, s.hidden_size])], name="/lm_head/Reshape")
        y = g.op("Gemm", [flat, table], name="/lm_head/Gemm", transB=1)
        out_shape = g.op(
            "Concat",
            [g.op("Shape", [x], name="/lm_head/Shape", end=2), g.const([s.vocab_size])],
            name="/lm_head/Concat",
            axis=0,
        )
        g.op("Reshape", [y, out_shape], name="/lm_head/Reshape", outputs=[self._logits])

    def _rescore(self, x: str, head: BlockQuantized, approx: str) -> None:
        """Two-stage lm_head: the fast MatMulNBits (int8 activations) ranks the vocabulary, then the
        ``RESCORE_TOP_K`` best rows are gathered from the same codes, dequantized exactly, and their
        logits recomputed in float32. The greedy token is then the float model's own whenever it is
        among the int8 top k (int8 error is ~0.1 logit, the k-th candidate is typically several
        logits behind); the other logits keep the int8 value. Costs a TopK and k dot products."""
        g, s = self.g, self.shape
        codes = self._shared_codes or "lm_head.qweight"
        scales = self._row_scales or g.initializer("lm_head.row_scales", head.scales[..., None])
        _, top = g.op("TopK", [approx, g.const([RESCORE_TOP_K])], name="/lm_head/TopK", outputs=2, axis=-1)
        rows = g.op(
            "GatherBlockQuantized",
            [codes, top, scales],
            name="/lm_head/GatherBlockQuantized",
            domain=MS_DOMAIN,
            gather_axis=0,
            quantize_axis=2,
            block_size=head.block_size,
            bits=head.bits,
        )  # [B, S, k, blocks, block] codes of the k rows, dequantized
        rows = g.op("Reshape", [rows, g.const([0, 0, 0, head.blocks * head.block_size])], name="/lm_head/Reshape")
        if head.blocks * head.block_size != s.hidden_size:
            rows = g.op("Slice", [rows, g.const([0]), g.const([s.hidden_size]), g.const([-1])], name="/lm_head/Slice")
        h = g.op("Unsqueeze", [x, g.const([2])], name="/lm_head/Unsqueeze")
        exact = g.op(
            "ReduceSum", [g.op("Mul", [rows, h], name="/lm_head/Mul"), g.const([-1])], name="/lm_head/ReduceSum",
            keepdims=0,
        )
        g.op("ScatterElements", [approx, top, exact], name="/lm_head/ScatterElements", outputs=[self._logits], axis=-1)

    def _layer(self, residual: str, delta: str, i: int, weights: Mapping[str, Weight]) -> tuple[str, str]:
        g, s, lin = self.g, self.shape, self.layer_lin
        p = f"model.layers.{i}"

        def w(name: str) -> Weight:
            return prepare_weight(weights[f"{p}.{name}.weight"], self.quant)

        h, residual = self._add_norm(residual, delta, weights[f"{p}.input_layernorm.weight"], f"{p}.input_layernorm")
        qkv = self.qkv_lin.fused(h, [w(f"self_attn.{n}_proj") for n in "qkv"], f"{p}.self_attn.qkv_proj")
        projected = qkv_extras(g, s, qkv, i, weights)
        past = (f"past_key_values.{i}.key", f"past_key_values.{i}.value")
        attn = self.attn.layer(g, s, i, projected, past)
        o = lin.linear(attn, w("self_attn.o_proj"), f"{p}.self_attn.o_proj")
        post = f"{p}.post_attention_layernorm"
        if s.sandwich_norms:  # Gemma: the attention's output is normed before the residual add
            o = self._norm(o, weights[f"{post}.weight"], post)
            post = f"{p}.pre_feedforward_layernorm"
        h, residual = self._add_norm(residual, o, weights[f"{post}.weight"], post)
        out = lin.fused(h, [w("mlp.gate_proj"), w("mlp.up_proj")], f"{p}.mlp.gate_up_proj")
        if isinstance(out, str):
            gate, up = g.op(
                "Split", [out, g.const([s.intermediate_size] * 2)], name=f"/{p}/mlp/Split", outputs=2, axis=-1
            )
        else:
            gate, up = out
        if s.activation == "gelu_tanh":
            act = g.op("FastGelu", [gate], name=f"/{p}/mlp/FastGelu", domain=MS_DOMAIN)
        else:
            act = g.op("Mul", [gate, g.op("Sigmoid", [gate], name=f"/{p}/mlp/Sigmoid")], name=f"/{p}/mlp/Mul")
        act = g.op("Mul", [act, up], name=f"/{p}/mlp/Mul")
        down = lin.linear(act, w("mlp.down_proj"), f"{p}.mlp.down_proj")
        if s.sandwich_norms:
            post = f"{p}.post_feedforward_layernorm"
            down = self._norm(down, weights[f"{post}.weight"], post)
        return residual, down
