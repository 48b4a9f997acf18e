"""GGUF tensors as Hugging Face-named weights for the Llama graph builder (numpy only).

- Names: ``token_embd`` -> ``model.embed_tokens``, ``blk.N.attn_q`` -> ``model.layers.N.self_attn.q_proj``, ...
- llama.cpp's converter permutes the rows of q_proj/k_proj (pairs of rotary dimensions interleaved,
  for its RoPE kernel); :func:`unpermute_index` undoes that so the graph's rotate_half RoPE is right.
  It is a reordering of output rows, so it applies to quantized blocks unchanged.
- Q4_0, Q4_1 and Q8_0 blocks are 32 values along K, exactly MatMulNBits' block: they become
  :class:`BlockQuantized` without rounding anything (Q4_0: zero point 8; Q4_1 ``d*q + m`` becomes
  ``(q - (-m/d)) * d`` with a float zero point; Q8_0: codes shifted by 128, zero point 128).
  Everything else is dequantized with ``gguf.quants`` and left to the builder to quantize.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, ReaderTensor, quants

from agent.convert.llama_shape import LlamaShape
from agent.convert.quantize import BlockQuantized, pack_codes
from agent.convert.weight_forms import Weight

PASSTHROUGH_TYPES = frozenset({QT.Q4_0, QT.Q4_1, QT.Q8_0})
DIRECT_TYPES = frozenset({QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q8_0})
DEQUANTIZED_TYPES = frozenset({QT.Q5_0, QT.Q5_1, QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K})
SUPPORTED_TYPES = DIRECT_TYPES | DEQUANTIZED_TYPES

_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.q_norm",  # Qwen3
    "attn_k_norm": "self_attn.k_norm",
}
UNPERMUTED_ARCHITECTURES = frozenset({"qwen2", "qwen3"})
"""llama.cpp's converter permutes q/k rows for its interleaved rotary only in llama-architecture files;
Qwen's use the NEOX layout, Hugging Face's own."""
IGNORED_TENSORS = re.compile(r"^(rope_freqs\.weight|blk\.\d+\.attn_rot_embd(\.weight)?)$")


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a decoder GGUF tensor, or None if it is not a decoder weight the fused
    graph writes (q/k/v biases are: Qwen2's)."""
    base, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    if base in _GLOBAL and suffix == "weight":
        return f"{_GLOBAL[base]}.weight"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m.group(2) in _LAYER and (suffix == "weight" or m.group(2) in ("attn_q", "attn_k", "attn_v")):
        return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}.{suffix}"
    return None


def unpermute_index(rows: int, n_head: int) -> np.ndarray:
    """Row order that turns llama.cpp's permuted q/k weight back into Hugging Face's layout."""
    head_dim = rows // n_head
    return np.arange(rows).reshape(n_head, head_dim // 2, 2).transpose(0, 2, 1).reshape(-1)


def tensor_shape(t: ReaderTensor) -> tuple[int, ...]:
    """numpy order (``[N, K]`` for a matrix): GGUF lists dimensions innermost first."""
    return tuple(int(d) for d in reversed(t.shape))


def gguf_blocks(raw: np.ndarray, qtype: QT, k: int) -> BlockQuantized:
    """Q4_0 / Q4_1 / Q8_0 rows (uint8 ``[N, bytes]``) as MatMulNBits blocks, bit-exact."""
    n = raw.shape[0]
    nb = k // 32
    if qtype == QT.Q8_0:
        b = np.asarray(raw, np.uint8).reshape(n, nb, 34)
        scales = b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        codes = b[..., 2:] ^ np.uint8(0x80)  # int8 q -> uint8 q + 128
        return BlockQuantized(8, 32, k, np.ascontiguousarray(codes), scales)
    if qtype not in (QT.Q4_0, QT.Q4_1):
        raise ValueError(f"{qtype.name} blocks cannot be passed through")
    head = 2 if qtype == QT.Q4_0 else 4
    b = np.asarray(raw, np.uint8).reshape(n, nb, head + 16)
    d = b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., head:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # GGUF: element j low nibble, j+16 high
    if qtype == QT.Q4_0:
        return BlockQuantized(4, 32, k, pack_codes(codes, 4), d)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    flat = d == 0  # a constant block (value m): code 0 with zero point -1 and scale m
    codes[flat] = 0
    safe = np.where(flat, 1.0, d)
    zero_points = np.where(flat, -1.0, -m / safe).astype(np.float32)
    scales = np.where(flat, m, d).astype(np.float32)
    return BlockQuantized(4, 32, k, pack_codes(codes, 4), scales, zero_points)


def load_tensor(t: ReaderTensor, passthrough: frozenset[QT] = frozenset()) -> Weight:
    """One tensor as float32 (numpy order) or, for a pass-through block type, as blocks."""
    shape = tensor_shape(t)
    qtype = QT(t.tensor_type)
    if qtype in passthrough and len(shape) == 2 and shape[1] % 32 == 0:
        return gguf_blocks(np.asarray(t.data), qtype, shape[1])
    return np.asarray(quants.dequantize(np.asarray(t.data), qtype), np.float32).reshape(shape)


class GGUFWeights(Mapping[str, Weight]):
    """Lazy Hugging Face-named view of a llama GGUF: each access reads and converts one tensor."""

    def __init__(
        self, reader: GGUFReader, shape: LlamaShape, passthrough: frozenset[QT] = frozenset(), *, permuted: bool = True
    ) -> None:
        self.shape = shape
        self.permuted = permuted
        self.passthrough = passthrough
        self._tensors: dict[str, ReaderTensor] = {}
        for t in reader.tensors:
            name = hf_name(t.name)
            if name is not None:
                self._tensors[name] = t

    def __getitem__(self, name: str) -> Weight:
        w = load_tensor(self._tensors[name], self.passthrough)
        for proj, heads in (("q_proj", self.shape.num_heads), ("k_proj", self.shape.num_kv_heads)):
            if self.permuted and name.endswith(f".self_attn.{proj}.weight"):
                index = unpermute_index(self.shape.head_dim * heads, heads)
                w = w.take_rows(index) if isinstance(w, BlockQuantized) else w[index]
        return w

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)
