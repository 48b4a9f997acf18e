"""A pure-numpy, uncached Llama forward pass: the ground truth the ONNX graphs are checked against.

Written the way transformers' ``LlamaForCausalLM`` computes (rotate_half RoPE, K/V repeated per
group, causal + padding mask, SwiGLU), in float64, from Hugging Face-named weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from agent.convert.llama_shape import LlamaShape, rope_inv_freq


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def forward(
    shape: LlamaShape,
    weights: Mapping[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    position_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Logits ``[batch, seq, vocab]`` (float64) for the whole sequence, no cache.

    The head is ``lm_head.weight`` when given (also for a tied shape), else the embedding."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    ids = np.asarray(input_ids)
    b, t = ids.shape
    mask = np.ones((b, t), np.int64) if attention_mask is None else np.asarray(attention_mask)
    pos = np.broadcast_to(np.arange(t), (b, t)) if position_ids is None else np.asarray(position_ids)
    nh, kv, hd = shape.num_heads, shape.num_kv_heads, shape.head_dim

    freqs = pos[..., None].astype(np.float64) * rope_inv_freq(shape).astype(np.float64)
    emb = np.concatenate([freqs, freqs], axis=-1)[:, None]  # [B, 1, T, hd]
    cos, sin = np.cos(emb), np.sin(emb)
    allowed = np.tril(np.ones((t, t), bool))[None, None] & (mask[:, None, None, :] != 0)
    bias = np.where(allowed, 0.0, -1e30)

    x = w["model.embed_tokens.weight"][ids]
    for i in range(shape.num_layers):
        p = f"model.layers.{i}"
        h = _rms_norm(x, w[f"{p}.input_layernorm.weight"], shape.rms_norm_eps)
        q = (h @ w[f"{p}.self_attn.q_proj.weight"].T).reshape(b, t, nh, hd).transpose(0, 2, 1, 3)
        k = (h @ w[f"{p}.self_attn.k_proj.weight"].T).reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
        v = (h @ w[f"{p}.self_attn.v_proj.weight"].T).reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = np.repeat(k, shape.kv_groups, axis=1)
        v = np.repeat(v, shape.kv_groups, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, nh * hd)
        x = x + attn @ w[f"{p}.self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[f"{p}.post_attention_layernorm.weight"], shape.rms_norm_eps)
        gate = h @ w[f"{p}.mlp.gate_proj.weight"].T
        up = h @ w[f"{p}.mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[f"{p}.mlp.down_proj.weight"].T
    x = _rms_norm(x, w["model.norm.weight"], shape.rms_norm_eps)
    head = w["lm_head.weight"] if "lm_head.weight" in w else w["model.embed_tokens.weight"]
    return x @ head.T


def greedy(shape: LlamaShape, weights: Mapping[str, np.ndarray], prompt: list[int], steps: int) -> list[int]:
    """Greedy continuation by re-running the full forward pass each step (slow, obviously right)."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(forward(shape, weights, np.array([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]
