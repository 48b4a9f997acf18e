"""The hyper-parameters of a Llama-family decoder, and its rotary frequencies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RopeScaling:
    """Hugging Face ``rope_scaling``: ``linear``, Llama-3's ``llama3`` frequency smoothing, or Phi-3's
    ``longrope`` (per-frequency divisors: ``short_factor`` up to ``original_max_position_embeddings``
    tokens, ``long_factor`` beyond; cos and sin scaled by ``attention_factor``)."""

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.rope_type not in ("linear", "llama3", "longrope"):
            raise ValueError(
                f"unsupported rope_scaling type {self.rope_type!r}: use 'linear', 'llama3' or 'longrope'"
            )
        if self.rope_type == "longrope" and (not self.short_factor or len(self.short_factor) != len(self.long_factor)):
            raise ValueError("longrope needs short_factor and long_factor of the same length")

    def to_config(self) -> dict[str, Any]:
        if self.rope_type == "linear":
            return {"rope_type": "linear", "factor": self.factor}
        if self.rope_type == "longrope":
            return {
                "rope_type": "longrope",
                "short_factor": list(self.short_factor),
                "long_factor": list(self.long_factor),
                "attention_factor": self.attention_factor,
            }
        return {
            "rope_type": "llama3",
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }


@dataclass(frozen=True)
class LlamaShape:
    """Everything the graph needs besides the weights. Field names follow ``config.json`` loosely.

    ``rope_freq_factors`` are llama.cpp's per-frequency divisors (GGUF ``rope_freqs.weight``), an
    alternative to ``rope_scaling`` that GGUF files of Llama 3.1+ carry instead of the parameters.
    ``sliding_window`` (None: full attention) is only written by the fused graph.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    rope_scaling: RopeScaling | None = None
    rope_freq_factors: tuple[float, ...] | None = None
    sliding_window: int | None = None  # Mistral-style local attention: each query sees this many keys
    rotary_dim: int | None = None  # partial rotary (Phi-4-mini): only the first rotary_dim of head_dim rotate
    no_rope_layers: tuple[int, ...] = ()  # SmolLM3's NoPE layers: indices of layers without rotary embedding
    # Gemma 2: the window only on these layers (None: on every layer), the attention's own scale,
    # tanh soft-caps of attention scores and final logits, the embedding scale, norms after attention
    # and MLP as well as before, and the MLP's activation ("silu" or "gelu_tanh").
    sliding_layers: tuple[int, ...] | None = None
    attention_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    embedding_scale: float | None = None
    sandwich_norms: bool = False
    activation: str = "silu"
    local_rope_theta: float | None = None  # Gemma 3: the sliding layers' own rope base (no scaling)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, not {self.head_dim}")
        if self.rotary_dim is not None and (self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim):
            raise ValueError(f"rotary_dim must be even and at most head_dim {self.head_dim}, not {self.rotary_dim}")

    @property
    def rotated(self) -> int:
        """How many channels of each head the rotary embedding turns."""
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def param_count(self) -> int:
        h, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.num_layers * per_layer + self.vocab_size * h + head + h


def rope_inv_freq(shape: LlamaShape, long: bool = False) -> np.ndarray:
    """float32 ``[rotated/2]`` inverse frequencies, as transformers computes them (incl. scaling);
    ``long``: longrope's factors for a context past the original one."""
    hd = shape.rotated
    inv = 1.0 / (shape.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    s = shape.rope_scaling
    if s is not None and s.rope_type == "linear":
        inv = inv / s.factor
    elif s is not None and s.rope_type == "longrope":
        factors = s.long_factor if long else s.short_factor
        if len(factors) != hd // 2:
            raise ValueError(f"longrope has {len(factors)} factors for {hd // 2} rotary frequencies")
        inv = inv / np.asarray(factors, dtype=np.float64)
    elif s is not None:
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    if shape.rope_freq_factors is not None:
        inv = inv / np.asarray(shape.rope_freq_factors, dtype=np.float64)
    return inv.astype(np.float32)
