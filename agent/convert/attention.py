"""Attention layouts for the Llama decoder graph.

A layout owns everything attention-specific: the per-graph tensors it derives from the inputs
(rotary tables, the additive mask) and the per-layer subgraph from projected q/k/v to the attention
output and the layer's ``present`` cache. :class:`OptimumAttention` produces the plain graph with the
optimum / Transformers.js cache contract; a fused layout (``GroupQueryAttention``) can be added beside
it without touching the rest of the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper

from agent.convert.graph_builder import MS_DOMAIN, GraphBuilder
from agent.convert.llama_shape import LlamaShape, rope_inv_freq


@dataclass(frozen=True)
class DecoderInputs:
    """Names of the graph inputs a layout may read."""

    input_ids: str = "input_ids"
    attention_mask: str = "attention_mask"
    position_ids: str = "position_ids"


@dataclass(frozen=True)
class ProjectedQKV:
    """Either one fused ``[B, S, (heads + 2*kv_heads) * head_dim]`` tensor, or q, k, v separately."""

    fused: str | None = None
    q: str | None = None
    k: str | None = None
    v: str | None = None


class AttentionLayout(Protocol):
    def prepare(self, g: GraphBuilder, shape: LlamaShape, inputs: DecoderInputs) -> None:
        """Add the graph-level tensors this layout needs (called once, before the first layer)."""

    def layer(self, g: GraphBuilder, shape: LlamaShape, index: int, qkv: ProjectedQKV, past: tuple[str, str]) -> str:
        """Return the attention output ``[B, S, heads*head_dim]`` (before o_proj); the layer's
        cache outputs must be named ``present.{index}.key`` / ``.value``."""


class OptimumAttention:
    """Unfused attention: RoPE from ``position_ids``, cache Concat, grouped-query attention without
    repeating K/V (queries of one KV group are stacked along the sequence axis instead), causal mask
    combined with ``attention_mask`` (a 0 there masks that key position for every query)."""

    def __init__(self) -> None:
        self._cos = self._sin = self._bias = ""

    def prepare(self, g: GraphBuilder, shape: LlamaShape, inputs: DecoderInputs) -> None:
        hd = shape.head_dim
        longrope = shape.rope_scaling is not None and shape.rope_scaling.rope_type == "longrope"
        if shape.rotary_dim not in (None, hd) or longrope or shape.no_rope_layers or shape.attn_softcap:
            raise ValueError(
                "partial rotary, longrope, layers without rotary embedding and soft-capping need the fused graph"
            )
        # Rotary tables [B, S, 1, hd]; rotate_half(x) * sin == x[..., perm] * (sign * sin).
        pos = g.op("Cast", [inputs.position_ids], name="/rope/Cast", to=TensorProto.FLOAT)
        pos = g.op("Unsqueeze", [pos, g.const([-1])], name="/rope/Unsqueeze")
        freqs = g.op("Mul", [pos, g.const(rope_inv_freq(shape), np.float32)], name="/rope/Mul")
        emb = g.op("Concat", [freqs, freqs], name="/rope/Concat", axis=-1)
        emb = g.op("Unsqueeze", [emb, g.const([2])], name="/rope/Unsqueeze")
        self._cos = g.op("Cos", [emb], name="/rope/Cos")
        sign = np.concatenate([-np.ones(hd // 2), np.ones(hd // 2)]).astype(np.float32)
        self._sin = g.op("Mul", [g.op("Sin", [emb], name="/rope/Sin"), g.const(sign, np.float32)], name="/rope/Mul")

        # Additive mask [B, 1, groups*S, T]: key t is visible to query s iff t <= past + s and mask[t] != 0.
        total = g.op("Shape", [inputs.attention_mask], name="/mask/Shape", start=1, end=2)
        seq = g.op("Shape", [inputs.input_ids], name="/mask/Shape", start=1, end=2)
        total = g.op("Squeeze", [total, g.const([0])], name="/mask/Squeeze")
        seq = g.op("Squeeze", [seq, g.const([0])], name="/mask/Squeeze")
        past = g.op("Sub", [total, seq], name="/mask/Sub")
        key_pos = g.op("Range", [g.const(0), total, g.const(1)], name="/mask/Range")
        query_pos = g.op("Range", [past, total, g.const(1)], name="/mask/Range")
        key_pos = g.op("Unsqueeze", [key_pos, g.const([0])], name="/mask/Unsqueeze")
        query_pos = g.op("Unsqueeze", [query_pos, g.const([1])], name="/mask/Unsqueeze")
        causal = g.op("LessOrEqual", [key_pos, query_pos], name="/mask/LessOrEqual")
        keep = g.op("Cast", [inputs.attention_mask], name="/mask/Cast", to=TensorProto.BOOL)
        keep = g.op("Unsqueeze", [keep, g.const([1, 2])], name="/mask/Unsqueeze")
        allowed = g.op("And", [causal, keep], name="/mask/And")
        neg = g.const(np.finfo(np.float32).min, np.float32)
        bias = g.op("Where", [allowed, g.const(0.0, np.float32), neg], name="/mask/Where")
        if shape.kv_groups > 1:
            bias = g.op("Tile", [bias, g.const([1, 1, shape.kv_groups, 1])], name="/mask/Tile")
        self._bias = bias

    def layer(self, g: GraphBuilder, shape: LlamaShape, index: int, qkv: ProjectedQKV, past: tuple[str, str]) -> str:
        if shape.sliding_window is not None and shape.sliding_window < shape.max_position_embeddings:
            raise ValueError("a sliding attention window needs the fused graph")
        p = f"/model/layers.{index}/attn"
        nh, kv, hd = shape.num_heads, shape.num_kv_heads, shape.head_dim
        if qkv.fused is not None:
            qk, v = g.op(
                "Split", [qkv.fused, g.const([(nh + kv) * hd, kv * hd])], name=f"{p}/Split", outputs=2, axis=-1
            )
        else:
            assert qkv.q and qkv.k and qkv.v
            qk = g.op("Concat", [qkv.q, qkv.k], name=f"{p}/Concat", axis=-1)
            v = qkv.v
        # RoPE on q and k together: [B, S, nh+kv, hd].
        qk = g.op("Reshape", [qk, g.const([0, 0, nh + kv, hd])], name=f"{p}/Reshape")
        rotated = g.op("Gather", [qk, g.const(np.r_[hd // 2 : hd, 0 : hd // 2])], name=f"{p}/rope/Gather", axis=-1)
        qk = g.op(
            "Add",
            [
                g.op("Mul", [qk, self._cos], name=f"{p}/rope/Mul"),
                g.op("Mul", [rotated, self._sin], name=f"{p}/rope/Mul"),
            ],
            name=f"{p}/rope/Add",
        )
        qk = g.op("Transpose", [qk], name=f"{p}/Transpose", perm=[0, 2, 1, 3])
        q, k = g.op("Split", [qk, g.const([nh, kv])], name=f"{p}/Split", outputs=2, axis=1)
        v = g.op("Reshape", [v, g.const([0, 0, kv, hd])], name=f"{p}/Reshape")
        v = g.op("Transpose", [v], name=f"{p}/Transpose", perm=[0, 2, 1, 3])
        key = g.op("Concat", [past[0], k], name=f"{p}/Concat", outputs=[f"present.{index}.key"], axis=2)
        value = g.op("Concat", [past[1], v], name=f"{p}/Concat", outputs=[f"present.{index}.value"], axis=2)

        # [B, nh, S, hd] -> [B, kv, groups*S, hd]: each KV head serves its group's queries at once.
        q = g.op("Reshape", [q, g.const([0, kv, -1, hd])], name=f"{p}/Reshape")
        scores = g.op(
            "FusedMatMul", [q, key], name=f"{p}/FusedMatMul", domain=MS_DOMAIN, transB=1, alpha=float(hd**-0.5)
        )
        scores = g.op("Add", [scores, self._bias], name=f"{p}/Add")
        probs = g.op("Softmax", [scores], name=f"{p}/Softmax", axis=-1)
        out = g.op("MatMul", [probs, value], name=f"{p}/MatMul")
        out = g.op("Reshape", [out, g.const([0, nh, -1, hd])], name=f"{p}/Reshape")
        out = g.op("Transpose", [out], name=f"{p}/Transpose", perm=[0, 2, 1, 3])
        return str(g.op("Reshape", [out, g.const([0, 0, nh * hd])], name=f"{p}/Reshape"))


def _rope_caches(g: GraphBuilder, shape: LlamaShape, kind: str) -> tuple[str, str]:
    """Initializers ``rope.{kind}cos_cache`` / ``sin_cache`` (``kind`` "long_": longrope's long factors),
    scaled by longrope's attention factor (cos and sin both: the rotation's output scales with them)."""
    positions = np.arange(shape.max_position_embeddings, dtype=np.float64)[:, None]
    freqs = positions * rope_inv_freq(shape, long=kind == "long_").astype(np.float64)[None, :]
    scaling = shape.rope_scaling
    factor = scaling.attention_factor if scaling is not None and scaling.rope_type == "longrope" else 1.0
    cos = g.initializer(f"rope.{kind}cos_cache", (np.cos(freqs) * factor).astype(np.float32))
    sin = g.initializer(f"rope.{kind}sin_cache", (np.sin(freqs) * factor).astype(np.float32))
    return cos, sin


def _pick(name: str, cos: str, sin: str) -> onnx.GraphProto:
    """An ``If`` branch passing on two of the outer graph's caches."""
    outs = [f"/rope/{name}/cos", f"/rope/{name}/sin"]
    return helper.make_graph(
        [helper.make_node("Identity", [src], [out]) for src, out in zip((cos, sin), outs, strict=True)],
        f"rope_{name}", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None) for out in outs],
    )


class FusedAttention:
    """onnxruntime's ``GroupQueryAttention`` (com.microsoft), rotary embedding included, with the same
    ``past_key_values`` → ``present`` contract as :class:`OptimumAttention` (BNSH cache, growing by
    concatenation), so the engine runs either graph unchanged.

    One kernel per layer replaces ~25 nodes (RoPE, cache Concat, scores, mask, softmax, transposes).
    Positions come from ``position_ids`` (so chunked prefill and cache reuse work). Limitation:
    GroupQueryAttention masks by sequence length, not by an arbitrary ``attention_mask``: the mask must
    be all ones (what a batch-1 decode loop feeds); left padding or holes are not supported.
    """

    def __init__(self) -> None:
        self._cos = self._sin = self._seqlens = self._total = self._positions = ""
        self._local = ("", "")

    def prepare(self, g: GraphBuilder, shape: LlamaShape, inputs: DecoderInputs) -> None:
        # cos/sin caches [positions, rotated/2]: narrower than head_dim/2 for a partial rotary (the
        # kernel then turns only the first channels of each head).
        self._cos, self._sin = _rope_caches(g, shape, "")
        self._local = ("", "")
        if shape.local_rope_theta is not None:  # Gemma 3's sliding layers
            local = replace(shape, rope_theta=shape.local_rope_theta, rope_scaling=None, rope_freq_factors=None)
            self._local = _rope_caches(g, local, "local_")
        # seqlens_k = tokens in the cache after this step, minus one; total = mask length (both int32).
        mask = g.op("Cast", [inputs.attention_mask], name="/gqa/Cast", to=TensorProto.INT32)
        count = g.op("ReduceSum", [mask, g.const([1])], name="/gqa/ReduceSum", keepdims=0)
        self._seqlens = g.op("Sub", [count, g.const([1], np.int32)], name="/gqa/Sub")
        total = g.op("Shape", [inputs.attention_mask], name="/gqa/Shape", start=1, end=2)
        total = g.op("Squeeze", [total, g.const([0])], name="/gqa/Squeeze")
        self._total = g.op("Cast", [total], name="/gqa/Cast", to=TensorProto.INT32)
        self._positions = inputs.position_ids
        scaling = shape.rope_scaling
        if scaling is not None and scaling.rope_type == "longrope":
            # transformers turns to the long factors once the sequence (cache + this step) is longer
            # than the original context, so the caches are chosen per step by that length.
            long = g.op("Greater", [total, g.const(scaling.original_max_position_embeddings)], name="/rope/Greater")
            cos_long, sin_long = _rope_caches(g, shape, "long_")
            self._cos, self._sin = g.op(
                "If", [long], name="/rope/If", outputs=["/rope/cos", "/rope/sin"],
                then_branch=_pick("long", cos_long, sin_long), else_branch=_pick("short", self._cos, self._sin),
            )

    def layer(self, g: GraphBuilder, shape: LlamaShape, index: int, qkv: ProjectedQKV, past: tuple[str, str]) -> str:
        if qkv.fused is not None:
            qkv_inputs = [qkv.fused, "", ""]
        else:
            assert qkv.q and qkv.k and qkv.v
            qkv_inputs = [qkv.q, qkv.k, qkv.v]
        extra: dict[str, int | float] = {}
        if shape.sliding_window is not None and shape.sliding_window < shape.max_position_embeddings:
            if shape.sliding_layers is None or index in shape.sliding_layers:
                extra["local_window_size"] = shape.sliding_window
        if shape.attn_softcap:
            extra["softcap"] = float(shape.attn_softcap)
        rotary = index not in shape.no_rope_layers  # a NoPE layer (SmolLM3) attends without positions
        cos, sin = self._cos, self._sin
        if self._local[0] and index in (shape.sliding_layers or ()):
            cos, sin = self._local
        rope = [cos, sin, self._positions] if rotary else []
        out, _, _ = g.op(
            "GroupQueryAttention",
            [*qkv_inputs, past[0], past[1], self._seqlens, self._total, *rope],
            name=f"/model/layers.{index}/attn/GroupQueryAttention",
            outputs=[f"/model/layers.{index}/attn/output", f"present.{index}.key", f"present.{index}.value"],
            domain=MS_DOMAIN,
            num_heads=shape.num_heads,
            kv_num_heads=shape.num_kv_heads,
            scale=float(shape.attention_scale or shape.head_dim**-0.5),
            do_rotary=int(rotary),
            rotary_interleaved=0,
            **extra,
        )
        return str(out)
