"""Pieces of a decoder layer some families add to Llama's: an RMSNorm emitted in plain ops, and what
comes between the q/k/v projection and the attention (Qwen2's biases, Qwen3's per-head q/k norms)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.convert.attention import ProjectedQKV
from agent.convert.graph_builder import GraphBuilder
from agent.convert.llama_shape import LlamaShape
from agent.convert.weight_forms import Weight, as_float


def rms_norm(g: GraphBuilder, x: str, weight: Weight, name: str, eps: float) -> str:
    """RMSNorm in plain opset-17 ops, in the exact pattern onnxruntime fuses into one
    SimplifiedLayerNormalization kernel (that op itself is not valid ONNX for the checker)."""
    p = f"/{name}"
    w = g.initializer(f"{name}.weight", as_float(weight))
    sq = g.op("Pow", [x, g.const(2.0, np.float32)], name=f"{p}/Pow")
    mean = g.op("ReduceMean", [sq], name=f"{p}/ReduceMean", axes=[-1], keepdims=1)
    shifted = g.op("Add", [mean, g.const(float(eps), np.float32)], name=f"{p}/Add")
    normed = g.op("Div", [x, g.op("Sqrt", [shifted], name=f"{p}/Sqrt")], name=f"{p}/Div")
    return str(g.op("Mul", [normed, w], name=f"{p}/Mul"))


def qkv_extras(
    g: GraphBuilder, shape: LlamaShape, qkv: str | list[str], i: int, weights: Mapping[str, Weight]
) -> ProjectedQKV:
    """The projected q/k/v with what some families add to Llama's: biases (Qwen2) and a per-head
    RMSNorm of q and k before the rotary embedding (Qwen3), both found among the weights."""
    s, p = shape, f"model.layers.{i}.self_attn"
    found = [weights.get(f"{p}.{n}_proj.bias") for n in "qkv"]
    norms = [weights.get(f"{p}.{n}_norm.weight") for n in "qk"]
    if all(b is None for b in found + norms):
        return ProjectedQKV(fused=qkv) if isinstance(qkv, str) else ProjectedQKV(None, *qkv)
    sizes = [s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.num_kv_heads * s.head_dim]
    biases: list[np.ndarray | None] = [None, None, None]
    if any(b is not None for b in found):
        biases = [
            np.zeros(n, np.float32) if b is None else as_float(b).reshape(-1) for b, n in zip(found, sizes, strict=True)
        ]
    if isinstance(qkv, str) and biases[0] is not None:
        init = g.initializer(f"{p}.qkv_proj.bias", np.concatenate([b for b in biases if b is not None]))
        qkv = str(g.op("Add", [qkv, init], name=f"/{p}/qkv_proj/Add"))
        biases = [None, None, None]
    if isinstance(qkv, str) and all(n is None for n in norms):
        return ProjectedQKV(fused=qkv)
    if isinstance(qkv, str):
        parts = list(g.op("Split", [qkv, g.const(sizes)], name=f"/{p}/Split", outputs=3, axis=-1))
    else:
        parts = list(qkv)
    for j, (name, b) in enumerate(zip("qkv", biases, strict=True)):
        if b is not None:
            init = g.initializer(f"{p}.{name}_proj.bias", b)
            parts[j] = str(g.op("Add", [parts[j], init], name=f"/{p}/{name}_proj/Add"))
    for j, (name, norm) in enumerate(zip("qk", norms, strict=True)):
        if norm is not None:
            heads = s.num_heads if name == "q" else s.num_kv_heads
            x = g.op("Reshape", [parts[j], g.const([0, 0, heads, s.head_dim])], name=f"/{p}/{name}_norm/Reshape")
            x = rms_norm(g, x, norm, f"{p}.{name}_norm", s.rms_norm_eps)
            flat = g.const([0, 0, heads * s.head_dim])
            parts[j] = str(g.op("Reshape", [x, flat], name=f"/{p}/{name}_norm/Reshape"))
    return ProjectedQKV(None, *parts)
