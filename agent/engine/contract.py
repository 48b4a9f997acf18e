"""The I/O contract of a decoder graph, discovered from its inputs and outputs.

Supported: the optimum / Transformers.js contract of onnx-community repos::

    inputs   input_ids [b, s]  attention_mask [b, past+s]  position_ids [b, s] (optional)
             past_key_values.{i}.key / .value  [b, kv_heads, past, head_dim]   (optional, all or none)
    outputs  logits [b, s, vocab]  present.{i}.key / .value

An optional ``logits_to_keep`` (or ``num_logits_to_keep``) int64 input, transformers' convention, is
fed 1: only the last position's logits are needed, which spares the lm_head work on every prompt
token during prefill. A graph without past inputs is accepted too (no KV cache: every step re-runs the whole sequence,
slow but correct). Any other input is refused with a ``ModelLoadError`` that names it, because
feeding a guess would give silently wrong text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.engine.model_files import ModelConfig
from agent.engine.types import ModelLoadError

KV_BUFFER_METADATA = "hflocal.kv_buffer"
"""Model metadata key the converter writes on graphs whose ``present.*`` may be the very buffer
given as ``past_key_values.*`` (onnxruntime's GroupQueryAttention writes the new keys and values in
place when both are bound to one tensor at least as long as the sequence)."""
KV_BUFFER_SHARED = "shared"

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
LOGITS_TO_KEEP_NAMES = ("logits_to_keep", "num_logits_to_keep")
_KNOWN = ("input_ids", "attention_mask", "position_ids", *LOGITS_TO_KEEP_NAMES)
_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


@dataclass(frozen=True, slots=True)
class KVSpec:
    """Shape and dtype of one layer's past key or value (batch and length are dynamic)."""

    input_name: str
    output_name: str
    num_heads: int
    head_dim: int
    dtype: Any


@dataclass(frozen=True, slots=True)
class GraphContract:
    input_ids_dtype: Any
    attention_mask_dtype: Any | None
    position_ids_dtype: Any | None
    logits_name: str
    kv: tuple[KVSpec, ...]
    """Past/present pairs in layer order (key, value, key, value...); empty when the graph has no cache."""
    logits_to_keep: tuple[str, tuple[int, ...]] | None = None
    """``(input name, shape)`` of a ``logits_to_keep`` input (shape ``()`` or ``(1,)``), if any."""

    @property
    def has_cache(self) -> bool:
        return bool(self.kv)

    @property
    def kv_dtype(self) -> Any | None:
        return self.kv[0].dtype if self.kv else None


def _dtype(node: Any, allowed: tuple[Any, ...]) -> Any:
    dtype = _ORT_DTYPES.get(node.type)
    if dtype not in allowed:
        raise ModelLoadError(f"graph input {node.name!r} has unsupported type {node.type}")
    return dtype


def _dim(value: Any, fallback: int | None, what: str, name: str) -> int:
    if isinstance(value, int) and value > 0:
        return value
    if fallback is None:
        raise ModelLoadError(f"cannot tell the {what} of {name!r}: not in the graph nor in config.json")
    return fallback


def discover_contract(
    inputs: Sequence[Any], outputs: Sequence[Any], config: ModelConfig, overridable: Sequence[Any] = ()
) -> GraphContract:
    """Build the contract from ``session.get_inputs()`` / ``get_outputs()`` (ORT NodeArg lists).
    ``overridable`` (``session.get_overridable_initializers()``) may hold a ``logits_to_keep`` input
    with a default (hflocal's fused graphs): it is fed like a plain one; others are left alone."""
    by_name = {node.name: node for node in inputs}
    for node in overridable:
        if node.name in LOGITS_TO_KEEP_NAMES and node.name not in by_name:
            by_name[node.name] = node
    out_names = {node.name for node in outputs}
    unknown = [
        name for name in by_name
        if name not in _KNOWN and not _PAST.match(name)
    ]
    if unknown:
        raise ModelLoadError(
            "unsupported decoder graph: unknown inputs " + ", ".join(sorted(unknown))
            + " (expected input_ids, attention_mask, position_ids, past_key_values.N.key/value)"
        )
    if "input_ids" not in by_name:
        raise ModelLoadError("unsupported decoder graph: it has no input_ids input")
    if "logits" not in out_names:
        raise ModelLoadError("unsupported decoder graph: it has no logits output")

    ints = (np.int64, np.int32)
    ids_dtype = _dtype(by_name["input_ids"], ints)
    mask_dtype = _dtype(by_name["attention_mask"], ints) if "attention_mask" in by_name else None
    pos_dtype = _dtype(by_name["position_ids"], ints) if "position_ids" in by_name else None

    layers: dict[int, dict[str, Any]] = {}
    for name, node in by_name.items():
        match = _PAST.match(name)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = node
    if layers and sorted(layers) != list(range(len(layers))):
        raise ModelLoadError(f"past_key_values layers are not numbered 0..{len(layers) - 1}")
    kv: list[KVSpec] = []
    for layer in range(len(layers)):
        for kind in ("key", "value"):
            node = layers[layer].get(kind)
            if node is None:
                raise ModelLoadError(f"graph has no past_key_values.{layer}.{kind} input")
            present = f"present.{layer}.{kind}"
            if present not in out_names:
                raise ModelLoadError(f"graph has past_key_values.{layer}.{kind} but no {present} output")
            shape = list(node.shape)
            if len(shape) != 4:
                raise ModelLoadError(f"{node.name!r} has rank {len(shape)}, expected 4 (batch, heads, length, dim)")
            kv.append(
                KVSpec(
                    input_name=node.name,
                    output_name=present,
                    num_heads=_dim(shape[1], config.num_kv_heads, "number of KV heads", node.name),
                    head_dim=_dim(shape[3], config.head_dim, "head dimension", node.name),
                    dtype=_dtype(node, (np.float32, np.float16)),
                )
            )
    keep: tuple[str, tuple[int, ...]] | None = None
    for name in LOGITS_TO_KEEP_NAMES:
        if name in by_name:
            node = by_name[name]
            _dtype(node, (np.int64,))
            if len(node.shape) > 1:
                raise ModelLoadError(f"graph input {name!r} has shape {node.shape}, expected a scalar")
            keep = (name, (1,) * len(node.shape))
    if kv and mask_dtype is None:
        raise ModelLoadError("graph has a KV cache but no attention_mask input")
    return GraphContract(
        input_ids_dtype=ids_dtype,
        attention_mask_dtype=mask_dtype,
        position_ids_dtype=pos_dtype,
        logits_name="logits",
        logits_to_keep=keep,
        kv=tuple(kv),
    )
