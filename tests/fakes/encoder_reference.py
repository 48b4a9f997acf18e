"""The tiny encoder (``tests.fakes.tiny_encoder``) computed in float64 numpy, with
sentence-transformers' pooling written out again: the ground truth the engine is checked against.
Nothing here is shared with ``agent.engine.embedding``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tests.fakes.tiny_encoder import EncoderShape

ST_ORDER = ("cls", "max", "mean", "mean_sqrt_len", "weightedmean", "lasttoken")
"""The order sentence-transformers' Pooling concatenates its modes in, whatever order a config lists them."""


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(lambda v: erf(v / sqrt(2.0)))(x))


def token_states(shape: EncoderShape, weights: Mapping[str, np.ndarray], ids: Sequence[int]) -> np.ndarray:
    """``last_hidden_state`` ``(tokens, hidden)`` of one unpadded input (no batch, no mask)."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    t, h, nh, hd = len(ids), shape.hidden_size, shape.num_heads, shape.head_dim
    x = w["embeddings.word_embeddings.weight"][list(ids)] + w["embeddings.position_embeddings.weight"][:t]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], shape.layer_norm_eps)
    for n in range(shape.num_layers):
        p = f"encoder.layer.{n}"

        def lin(x: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return x @ w[f"{p}.{name}.weight"].T + w[f"{p}.{name}.bias"]

        q, k, v = (lin(x, f"attention.self.{part}").reshape(t, nh, hd).transpose(1, 0, 2)
                   for part in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        if shape.causal:
            scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(t, h)
        x = _layer_norm(x + lin(ctx, "attention.output.dense"), w[f"{p}.attention.output.LayerNorm.weight"],
                        w[f"{p}.attention.output.LayerNorm.bias"], shape.layer_norm_eps)
        mlp = lin(_gelu(lin(x, "intermediate.dense")), "output.dense")
        x = _layer_norm(x + mlp, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], shape.layer_norm_eps)
    return x


def sentence_vector(states: np.ndarray, modes: Sequence[str], *, normalize: bool, skip: int = 0) -> np.ndarray:
    """sentence-transformers' Pooling (+ Normalize) of one input's token states; ``skip`` leading
    tokens are left out of the averages (``include_prompt: false``). Unknown modes raise."""
    if set(modes) - set(ST_ORDER):
        raise ValueError(f"unknown pooling modes {modes}")
    kept = states[skip:]
    parts = []
    for mode in (m for m in ST_ORDER if m in modes):
        if mode == "cls":
            parts.append(states[0])
        elif mode == "mean":
            parts.append(kept.mean(0))
        elif mode == "max":
            parts.append(kept.max(0))
        elif mode == "mean_sqrt_len":
            parts.append(kept.sum(0) / np.sqrt(len(kept)))
        elif mode == "weightedmean":
            weights = np.arange(1, len(states) + 1, dtype=np.float64)[skip:]
            parts.append((kept * weights[:, None]).sum(0) / weights.sum())
        else:
            parts.append(states[-1])
    vector = np.concatenate(parts)
    return vector / np.linalg.norm(vector) if normalize else vector
