"""Write a tiny llama GGUF the way llama.cpp's converter would, from Hugging Face-named weights.

Faithful where it matters to the importer: q_proj/k_proj rows permuted for llama.cpp's RoPE, tensor
names and metadata keys of ``convert_hf_to_gguf.py``, a GPT-2 style tokenizer (tokens in byte-unicode
form, ``"a b"`` merges, control tokens typed 3), blocks made by ``gguf.quants`` (bit-exact with
ggml's reference quantizers). ``expected_weights`` gives the float weights the file stands for, in
Hugging Face layout, computed without the importer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter, quants
from tokenizers import Tokenizer

from agent.convert.llama_shape import LlamaShape

_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
}
UNPERMUTED = ("qwen2", "qwen3")
"""Architectures whose q/k rows llama.cpp's converter leaves in Hugging Face's order (NEOX rotary)."""


def gguf_name(hf: str) -> str:
    if hf in _GGUF_NAMES:
        return _GGUF_NAMES[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, _, suffix = rest.rpartition(".")
    return f"blk.{layer}.{_LAYER_NAMES[module]}.{suffix}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """``LlamaModel.permute`` from llama.cpp's convert_hf_to_gguf.py."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse, as transformers' GGUF loader writes it (``reverse_permute_weights``)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _stored(w: np.ndarray, qtype: QT) -> np.ndarray:
    if qtype == QT.F32:
        return np.asarray(w, np.float32)
    return quants.quantize(np.asarray(w, np.float32), qtype)


def expected_weights(weights: Mapping[str, np.ndarray], types: Mapping[str, QT]) -> dict[str, np.ndarray]:
    """What each tensor decodes to (row permutations commute with row-wise block quantization)."""
    out = {}
    for name, w in weights.items():
        qtype = types.get(name, QT.F32)
        out[name] = np.asarray(quants.dequantize(_stored(w, qtype), qtype), np.float32).reshape(w.shape)
    return out


def write_shape(w: GGUFWriter, shape: LlamaShape, *, name: str, context: int, file_type: int) -> None:
    """The model-shape metadata llama.cpp reads, from ``shape``."""
    w.add_name(name)
    w.add_context_length(context)
    w.add_embedding_length(shape.hidden_size)
    w.add_block_count(shape.num_layers)
    w.add_feed_forward_length(shape.intermediate_size)
    w.add_head_count(shape.num_heads)
    w.add_head_count_kv(shape.num_kv_heads)
    w.add_layer_norm_rms_eps(shape.rms_norm_eps)
    w.add_rope_freq_base(shape.rope_theta)
    w.add_rope_dimension_count(shape.head_dim)
    if shape.head_dim * shape.num_heads != shape.hidden_size:
        w.add_key_length(shape.head_dim)
        w.add_value_length(shape.head_dim)
    w.add_vocab_size(shape.vocab_size)
    w.add_file_type(file_type)


def write_tiny_gguf(
    path: Path,
    shape: LlamaShape,
    weights: Mapping[str, np.ndarray],
    tokenizer: Tokenizer,
    *,
    matrix_type: QT = QT.Q8_0,
    embedding_type: QT | None = None,
    chat_template: str | None = None,
    architecture: str = "llama",
    pre: str = "gpt2",
    extra_tensors: Mapping[str, tuple[np.ndarray, QT]] | None = None,
    configure: Callable[[GGUFWriter], None] | None = None,
) -> dict[str, QT]:
    """Write ``path``; returns the type each Hugging Face-named tensor was stored in.

    ``extra_tensors`` are written as given (raw blocks, no permutation); ``configure`` may add
    metadata (rope scaling, ...)."""
    w = GGUFWriter(str(path), architecture)
    write_shape(w, shape, name="Tiny Llama", context=shape.max_position_embeddings, file_type=1)

    model = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    tokens = [""] * len(vocab)
    for piece, i in vocab.items():
        tokens[i] = piece
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    if configure is not None:
        configure(w)

    types: dict[str, QT] = {}
    for name, value in weights.items():
        if value.ndim == 1:
            qtype = QT.F32
        elif name in ("model.embed_tokens.weight", "lm_head.weight") and embedding_type is not None:
            qtype = embedding_type
        else:
            qtype = matrix_type
        types[name] = qtype
        if architecture in UNPERMUTED:
            pass
        elif name.endswith("q_proj.weight"):
            value = llama_cpp_permute(value, shape.num_heads)
        elif name.endswith("k_proj.weight"):
            value = llama_cpp_permute(value, shape.num_kv_heads)
        data = _stored(value, qtype)
        w.add_tensor(gguf_name(name), data, raw_dtype=None if qtype in (QT.F32, QT.F16) else qtype)
    for name, (data, qtype) in (extra_tensors or {}).items():
        w.add_tensor(name, data, raw_dtype=None if qtype in (QT.F32, QT.F16) else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return types
