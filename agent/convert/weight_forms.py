"""How each weight is stored in each quantization: the policy shared by the graph builder, the GGUF
importer and the tests (which compare a quantized graph exactly with a float reference).

- ``fp32`` / ``fp16``: every weight is float (blocks are dequantized).
- ``q8`` / ``q4``: layer weights are ``MatMulNBits`` blocks; given blocks pass through unchanged,
  float weights are quantized here (8-bit symmetric, 4-bit asymmetric with uint8 zero points).
- The lm_head (and the embedding) take ``head_bits``: 4 or 8 for blocks (symmetric, so a tied
  embedding can share the codes), 16 or 32 for a float table (fp16 storage or fp32).
  Defaults (:data:`DEFAULT_HEAD_BITS`), measured on SmolLM2-135M Q4_1 (top-1 agreement with the
  dequantized fp32 model, teacher-forced): q4 and q8 use an 8-bit head. For a GGUF whose embedding is
  Q8_0 (llama.cpp's usual choice) those blocks pass through unchanged, so the only error is the int8
  activations that make it fast: 98.4 % over 256 positions (99.2 % over 355), while llama.cpp itself
  agrees 97.3 % on the same text. An fp16-stored head agrees 100 % but onnxruntime folds it to an
  fp32 Gemm that reads 113 MB per token (slower decode, +100 MB RSS); a 4-bit head 86 %.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeAlias

import numpy as np

from agent.convert.llama_shape import LlamaShape
from agent.convert.quantize import BlockQuantized, quantize_asymmetric, quantize_symmetric

Quant: TypeAlias = Literal["fp32", "fp16", "q8", "q4"]
Weight: TypeAlias = np.ndarray | BlockQuantized

QUANT_FILES: dict[str, str] = {
    "fp32": "model.onnx",
    "fp16": "model_fp16.onnx",
    "q8": "model_quantized.onnx",
    "q4": "model_q4.onnx",
}
HEAD_BITS = (4, 8, 16, 32)
DEFAULT_HEAD_BITS: dict[str, int] = {"fp32": 32, "fp16": 16, "q8": 8, "q4": 8}
_BYTES_PER_PARAM = {4: 0.6, 8: 1.13, 16: 2.0, 32: 4.0}


def head_bits_for(quant: Quant, head_bits: int | None) -> int:
    """The head form actually used: fp32/fp16 files always keep a float head of their own width."""
    if quant in ("fp32", "fp16"):
        return DEFAULT_HEAD_BITS[quant]
    bits = DEFAULT_HEAD_BITS[quant] if head_bits is None else head_bits
    if bits not in HEAD_BITS:
        raise ValueError(f"head_bits must be one of {HEAD_BITS}, not {bits}")
    return bits


def prepare_weight(w: Weight, quant: Quant) -> Weight:
    """A layer weight in its ``quant`` form."""
    if quant in ("fp32", "fp16"):
        return as_float(w)
    if isinstance(w, BlockQuantized):
        return w
    return quantize_symmetric(w, 8) if quant == "q8" else quantize_asymmetric(w, 4)


def prepare_head(w: Weight, bits: int) -> Weight:
    """The lm_head/embedding table in form ``bits`` (see :data:`HEAD_BITS`); blocks of that width
    pass through, anything else is dequantized first."""
    if bits in (16, 32):
        return as_float(w)
    if isinstance(w, BlockQuantized) and w.bits == bits:
        return w
    return quantize_symmetric(as_float(w), bits)


def embedding_blocks(embed: Weight, head: Weight, bits: int) -> BlockQuantized:
    """Blocks for a quantized embedding that cannot share the head's codes. GatherBlockQuantized
    takes no float zero points, so such blocks (GGUF Q4_1) are re-quantized symmetrically."""
    if isinstance(embed, BlockQuantized) and embed.zero_point_kind != "float":
        return embed
    return quantize_symmetric(as_float(embed), bits)


def shares_head_codes(shape: LlamaShape, head: Weight) -> bool:
    """A tied quantized embedding gathers from the lm_head's own codes (needs default zero points)."""
    return shape.tie_word_embeddings and isinstance(head, BlockQuantized) and head.zero_points is None


def as_float(w: Weight) -> np.ndarray:
    return w.dequantize() if isinstance(w, BlockQuantized) else np.asarray(w, np.float32)


def effective_weights(
    shape: LlamaShape, weights: Mapping[str, Weight], quant: Quant, *, head_bits: int | None = None
) -> dict[str, np.ndarray]:
    """The float32 weights a ``quant`` model built from ``weights`` computes with (fp16 rounding
    included), so a quantized graph can be checked exactly against a float reference. The result
    always has ``lm_head.weight``: a tied head and its embedding may be stored differently."""
    bits = head_bits_for(quant, head_bits)

    def rounded(w: Weight, f16: bool) -> np.ndarray:
        x = as_float(w)
        return x.astype(np.float16).astype(np.float32) if f16 and not isinstance(w, BlockQuantized) else x

    out: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if name.endswith("norm.weight"):
            out[name] = np.asarray(w, np.float32)
        elif name == "model.embed_tokens.weight":
            head = prepare_head(w, bits)
            if shape.tie_word_embeddings:
                out["lm_head.weight"] = rounded(head, bits == 16)
            if bits in (16, 32):
                out[name] = rounded(head if shape.tie_word_embeddings else as_float(w), bits == 16)
            elif shares_head_codes(shape, head):
                out[name] = as_float(head)
            else:
                out[name] = as_float(embedding_blocks(w, head, bits))
        elif name == "lm_head.weight":
            out[name] = rounded(prepare_head(w, bits), bits == 16)
        else:
            out[name] = rounded(prepare_weight(w, quant), quant == "fp16")
    return out


def estimate_size(shape: LlamaShape, quant: Quant, head_bits: int | None = None) -> int:
    """Rough bytes of the written model, to decide on external data before writing."""
    layer_bits = {"fp32": 32, "fp16": 16, "q8": 8, "q4": 4}[quant]
    head = _BYTES_PER_PARAM[head_bits_for(quant, head_bits)]
    embed = shape.vocab_size * shape.hidden_size
    tables = 1 if shape.tie_word_embeddings else 2
    layers = shape.param_count() - embed * tables
    return int(layers * _BYTES_PER_PARAM[layer_bits] + embed * head * tables)
