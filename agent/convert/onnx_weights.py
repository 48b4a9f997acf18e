"""Read the weights back out of an optimum / Transformers.js decoder graph, in Hugging Face names.

What onnx-community and Xenova repos ship (``onnx/model.onnx``, ``model_fp16.onnx``,
``model_quantized.onnx``, ``model_q4.onnx``, ``model_q4f16.onnx``) is torch's export of the
transformers module tree: node names keep the module path (``/model/layers.3/self_attn/q_proj/MatMul``,
``.../MatMul_Q4`` once ``MatMulNBitsQuantizer`` has replaced it), so every projection, norm and bias
is found by the module it belongs to, whatever its initializer is called (``onnx::MatMul_732``).

- ``MatMul`` weights are stored ``[K, N]`` (transposed) and come back as ``[N, K]`` float arrays.
- ``MatMulNBits`` weights come back as :class:`BlockQuantized` exactly as stored (codes, scales,
  packed or float zero points), so they pass into hflocal's fused graph without being re-rounded.
- ``Gather`` of ``embed_tokens``; ``Mul`` by a 1-D initializer inside a ``*norm`` module; ``Add`` of a
  1-D initializer inside a projection (its bias). A tied lm_head (``MatMul(x, Transpose(embed))``) is
  recognised and left to the embedding.

Anything the mapping cannot place is an :class:`UnreadableGraph` naming what was missing, so callers
keep the original graph.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from agent.convert.quantize import BlockQuantized
from agent.convert.weight_forms import Weight


class UnreadableGraph(ValueError):
    """The graph is not an export whose weights can be mapped back to module names."""


def _module(node_name: str) -> tuple[str, str] | None:
    """``/model/layers.0/self_attn/q_proj/MatMul_Q4`` -> (``model.layers.0.self_attn.q_proj``, ``MatMul``)."""
    head, _, last = node_name.rpartition("/")
    if not head.startswith(("/model", "/lm_head")) or not last:
        return None
    return head.strip("/").replace("/", "."), last


def _blocks(node: onnx.NodeProto, array: Callable[[str], np.ndarray]) -> BlockQuantized:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, block = int(attrs["K"]), int(attrs["N"]), int(attrs.get("bits", 4)), int(attrs["block_size"])
    if len(node.input) > 4 and node.input[4]:
        raise UnreadableGraph(f"{node.name}: MatMulNBits with g_idx (act-order) is not supported")
    data = array(node.input[1])
    blocks = -(-k // block)
    data = data.reshape(n, blocks, block * bits // 8)
    scales = array(node.input[2]).astype(np.float32).reshape(n, blocks)
    zero_points = None
    if len(node.input) > 3 and node.input[3]:
        zp = array(node.input[3])
        zero_points = zp.astype(np.float32).reshape(n, blocks) if zp.dtype.kind == "f" else zp.reshape(n, -1)
    return BlockQuantized(bits, block, k, np.ascontiguousarray(data), scales, zero_points)


def read_export_weights(path: Path) -> tuple[dict[str, Weight], dict[str, Any]]:
    """The weights of the decoder graph at ``path`` (external data read from beside it) by Hugging
    Face name, and what was learnt about the graph (``tied_head``, ``opsets``)."""
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValidationError...
        raise UnreadableGraph(f"cannot read {path.name}: {exc}") from exc
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    produced_by = {out: node for node in graph.node for out in node.output}
    weights: dict[str, Weight] = {}
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    info: dict[str, Any] = {"tied_head": False, "opsets": opsets}

    def put(name: str, value: Weight) -> None:
        if name in weights:
            raise UnreadableGraph(f"two weights map to {name}")
        weights[name] = value

    for node in graph.node:
        where = _module(node.name)
        if where is None:
            continue
        module, _ = where
        init_inputs = [x for x in node.input if x in inits]
        if node.op_type == "MatMulNBits":
            w = _blocks(node, array)
            put(f"{module}.weight", w)
            if len(node.input) > 5 and node.input[5] in inits:
                put(f"{module}.bias", array(node.input[5]).astype(np.float32))
        elif node.op_type == "MatMul":
            b = node.input[1]
            if b in inits:
                put(f"{module}.weight", np.ascontiguousarray(array(b).T))
            elif module == "lm_head" and b in produced_by and produced_by[b].op_type == "Transpose":
                info["tied_head"] = True
        elif node.op_type == "Gather" and module.endswith("embed_tokens") and node.input[0] in inits:
            put(f"{module}.weight", array(node.input[0]))
        elif node.op_type == "Mul" and module.rsplit(".", 1)[-1].endswith("norm"):
            ones = [x for x in init_inputs if array(x).ndim == 1 and array(x).size > 1]
            if ones:
                put(f"{module}.weight", array(ones[0]))
        elif node.op_type == "Add" and module.endswith("_proj"):
            vec = [x for x in init_inputs if array(x).ndim == 1 and array(x).size > 1]
            if vec:
                put(f"{module}.bias", array(vec[0]))
    return weights, info
