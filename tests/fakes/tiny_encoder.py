"""A tiny BERT-style encoder as a Transformers.js / sentence-transformers repo folder, built in a blink.

``write_encoder_onnx`` writes the graph with ``onnx.helper`` from Hugging Face ``BertModel``-named
weights (so it serves the tiny random weights and a real checkpoint alike): word + position +
token-type embeddings, LayerNorm, bidirectional multi-head attention with a padding mask (or causal
attention, with ``position_ids`` and empty ``past_key_values.*`` inputs, as a Qwen3-Embedding-style
decoder export has), GELU (erf) MLP, post-LayerNorm residuals; output ``last_hidden_state``.
``tests.fakes.encoder_reference`` computes the same function in numpy.

``build_encoder_repo`` adds ``config.json``, a trained ``tokenizer.json`` (WordPiece with
``[CLS] … [SEP]``; byte-level BPE ending in ``<|endoftext|>`` for the decoder), tokenizer_config,
and, in the sentence-transformers layout, ``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json`` (and ``config_sentence_transformers.json`` with a prompt), optionally
a ``2_Normalize`` module; ``onnx/model_quantized.onnx`` (dynamic int8, what Transformers.js ships
as q8) on request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from agent.convert.graph_builder import GraphBuilder
from tests.fakes.tiny_model import CORPUS, train_tokenizer

WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
POOLING_KEYS = {
    "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens", "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


@dataclass(frozen=True)
class EncoderShape:
    vocab_size: int
    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 64
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    causal: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class TinyEncoder:
    """A built repo folder and what a test needs to check it."""

    path: Path
    shape: EncoderShape
    weights: dict[str, np.ndarray]
    tokenizer: Tokenizer
    pooling: tuple[str, ...]
    normalize: bool
    prompt: str = ""
    include_prompt: bool = True
    files: list[str] = field(default_factory=list)

    def encode(self, text: str) -> list[int]:
        """Token ids as the engine feeds them (special tokens added, prompt prepended)."""
        return list(self.tokenizer.encode(self.prompt + text).ids)


def train_wordpiece(vocab_size: int = 300) -> Tokenizer:
    """A lower-casing BERT WordPiece tokenizer over the tiny corpus, ``[CLS] $A [SEP]``."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(WORDPIECE_SPECIALS),
                                        show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def decoder_tokenizer() -> Tokenizer:
    """The tiny byte-level BPE with ``<|endoftext|>`` appended to every input (Qwen3-Embedding style)."""
    tok = train_tokenizer()
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A $B <|endoftext|>", special_tokens=[("<|endoftext|>", eos)])
    return tok


def random_encoder_weights(shape: EncoderShape, seed: int = 0, std: float = 0.2) -> dict[str, np.ndarray]:
    """``BertModel``-named float32 weights (linear weights are ``(out, in)``)."""
    rng = np.random.default_rng(seed)
    h, i = shape.hidden_size, shape.intermediate_size

    def normal(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * std).astype(np.float32)

    def norm() -> tuple[np.ndarray, np.ndarray]:
        return (1.0 + 0.1 * rng.standard_normal(h)).astype(np.float32), normal(h)

    w: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": normal(shape.vocab_size, h) * 5,
        "embeddings.position_embeddings.weight": normal(shape.max_positions, h),
        "embeddings.token_type_embeddings.weight": normal(shape.type_vocab_size, h),
    }
    w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"] = norm()
    for n in range(shape.num_layers):
        p = f"encoder.layer.{n}"
        for part in ("query", "key", "value"):
            w[f"{p}.attention.self.{part}.weight"], w[f"{p}.attention.self.{part}.bias"] = normal(h, h), normal(h)
        w[f"{p}.attention.output.dense.weight"], w[f"{p}.attention.output.dense.bias"] = normal(h, h), normal(h)
        w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"] = norm()
        w[f"{p}.intermediate.dense.weight"], w[f"{p}.intermediate.dense.bias"] = normal(i, h), normal(i)
        w[f"{p}.output.dense.weight"], w[f"{p}.output.dense.bias"] = normal(h, i), normal(h)
        w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"] = norm()
    return w


def write_encoder_onnx(shape: EncoderShape, weights: Mapping[str, np.ndarray], path: Path, *,
                       token_type_ids: bool = True) -> Path:
    """The graph at ``path`` (see the module docstring); returns ``path``."""
    g = GraphBuilder("tiny-encoder")
    w = {k: g.initializer(k, np.asarray(v, np.float32)) for k, v in weights.items()}
    h, nh, hd = shape.hidden_size, shape.num_heads, shape.head_dim
    ids = g.add_input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    mask = g.add_input("attention_mask", TensorProto.INT64, ["batch_size", "sequence_length"])
    x = g.op("Gather", [w["embeddings.word_embeddings.weight"], ids], name="embed")
    if shape.causal:
        positions = g.add_input("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    else:
        ones = g.op("ConstantOfShape", [g.op("Shape", [ids], name="ids_shape")], name="ones_ids",
                    value=_tensor(np.ones(1, np.int64)))
        counted = g.op("CumSum", [ones, g.const(1)], name="count_ids")
        positions = g.op("Sub", [counted, g.const(1)], name="positions")
    x = g.op("Add", [x, g.op("Gather", [w["embeddings.position_embeddings.weight"], positions], name="pos")], name="add_pos")
    if token_type_ids:
        types = g.add_input("token_type_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
        type_rows = g.op("Gather", [w["embeddings.token_type_embeddings.weight"], types], name="types")
    else:
        type_rows = g.initializer("type0", np.asarray(weights["embeddings.token_type_embeddings.weight"][0], np.float32))
    x = g.op("Add", [x, type_rows], name="add_types")
    x = _layer_norm(g, x, w, "embeddings.LayerNorm", shape.layer_norm_eps)

    masked = g.op("Sub", [g.const(1.0, np.float32), g.op("Cast", [mask], name="mask_f", to=TensorProto.FLOAT)], name="inv")
    bias = g.op("Unsqueeze", [g.op("Mul", [masked, g.const(-1e9, np.float32)], name="mask_bias"), g.const([1, 2])],
                name="bias4")
    if shape.causal:
        length = g.op("Gather", [g.op("Shape", [ids], name="ids_shape2"), g.const([1])], name="len1", axis=0)
        square = g.op("Concat", [length, length], name="square", axis=0)
        ones = g.op("ConstantOfShape", [square], name="ones", value=_tensor(np.ones(1, np.float32)))
        future = g.op("Sub", [ones, g.op("Trilu", [ones], name="tril", upper=0)], name="future")
        bias = g.op("Add", [bias, g.op("Mul", [future, g.const(-1e9, np.float32)], name="causal_bias")], name="bias_all")

    scale = g.const(1.0 / np.sqrt(hd), np.float32)
    for n in range(shape.num_layers):
        p = f"encoder.layer.{n}"

        def heads(name: str, n: int = n, p: str = p, x: str = x) -> str:
            y = _linear(g, x, w, f"{p}.attention.self.{name}")
            y = g.op("Reshape", [y, g.const([0, 0, nh, hd])], name=f"l{n}_{name}_split")
            return str(g.op("Transpose", [y], name=f"l{n}_{name}_t", perm=[0, 2, 1, 3]))

        q, k, v = heads("query"), heads("key"), heads("value")
        if shape.causal:  # an empty cache in front, as decoder exports have it
            past_shape: list[int | str] = ["batch_size", nh, "past_sequence_length", hd]
            k = g.op("Concat", [g.add_input(f"past_key_values.{n}.key", TensorProto.FLOAT, past_shape), k],
                     name=f"l{n}_k_cat", axis=2)
            v = g.op("Concat", [g.add_input(f"past_key_values.{n}.value", TensorProto.FLOAT, past_shape), v],
                     name=f"l{n}_v_cat", axis=2)
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], name=f"l{n}_kt", perm=[0, 1, 3, 2])],
                                   name=f"l{n}_qk"), scale], name=f"l{n}_scaled")
        probs = g.op("Softmax", [g.op("Add", [scores, bias], name=f"l{n}_masked")], name=f"l{n}_probs", axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v], name=f"l{n}_ctx")], name=f"l{n}_ctx_t", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.const([0, 0, h])], name=f"l{n}_merge")
        attn = _linear(g, ctx, w, f"{p}.attention.output.dense")
        x = _layer_norm(g, g.op("Add", [x, attn], name=f"l{n}_res1"), w, f"{p}.attention.output.LayerNorm",
                        shape.layer_norm_eps)
        up = _linear(g, x, w, f"{p}.intermediate.dense")
        erf = g.op("Erf", [g.op("Div", [up, g.const(np.sqrt(2.0), np.float32)], name=f"l{n}_div")], name=f"l{n}_erf")
        gelu = g.op("Mul", [g.op("Mul", [up, g.const(0.5, np.float32)], name=f"l{n}_half"),
                            g.op("Add", [erf, g.const(1.0, np.float32)], name=f"l{n}_erf1")], name=f"l{n}_gelu")
        down = _linear(g, gelu, w, f"{p}.output.dense")
        x = _layer_norm(g, g.op("Add", [x, down], name=f"l{n}_res2"), w, f"{p}.output.LayerNorm", shape.layer_norm_eps)
    g.nodes.append(_identity(x, "last_hidden_state"))
    g.add_output("last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", h])
    path.parent.mkdir(parents=True, exist_ok=True)
    g.save(path)
    return path


def _tensor(array: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(array)


def _identity(source: str, name: str) -> Any:
    from onnx import helper

    return helper.make_node("Identity", [source], [name], name=f"{name}_out")


def _linear(g: GraphBuilder, x: str, w: Mapping[str, str], prefix: str) -> str:
    weight = w[f"{prefix}.weight"]
    t = g.op("Transpose", [weight], name=f"{prefix}.t", perm=[1, 0])
    return str(g.op("Add", [g.op("MatMul", [x, t], name=f"{prefix}.mm"), w[f"{prefix}.bias"]], name=f"{prefix}.add"))


def _layer_norm(g: GraphBuilder, x: str, w: Mapping[str, str], prefix: str, eps: float) -> str:
    return str(g.op("LayerNormalization", [x, w[f"{prefix}.weight"], w[f"{prefix}.bias"]], name=prefix,
                    axis=-1, epsilon=eps))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def quantize_q8(fp32: Path, dest: Path) -> Path:
    """``model_quantized.onnx``: dynamic int8 (weights per output channel, activations per tensor)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(dest), weight_type=QuantType.QInt8, per_channel=True)
    return dest


def build_encoder_repo(
    dest: Path,
    *,
    pooling: Sequence[str] = ("mean",),
    normalize: bool = True,
    layout: str = "sentence-transformers",
    quants: Sequence[str] = ("fp32",),
    causal: bool = False,
    seed: int = 0,
    max_seq_length: int | None = None,
    prompt: str = "",
    include_prompt: bool = True,
    config_extra: Mapping[str, Any] | None = None,
    token_type_ids: bool | None = None,
) -> TinyEncoder:
    """Write the repo at ``dest``. ``layout`` ``sentence-transformers`` writes the pooling files from
    ``pooling``/``normalize``/``prompt``; ``transformers.js`` writes none (those arguments are unused),
    and the returned ``TinyEncoder`` records what the engine then assumes (mean, or lasttoken for a
    causal model; normalised)."""
    dest = Path(dest)
    tokenizer = decoder_tokenizer() if causal else train_wordpiece()
    shape = EncoderShape(vocab_size=tokenizer.get_vocab_size(), causal=causal)
    weights = random_encoder_weights(shape, seed)
    dest.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "architectures": ["TinyDecoderForCausalLM"] if causal else ["BertModel"],
        "model_type": "tiny-decoder" if causal else "bert",
        "hidden_size": shape.hidden_size, "num_attention_heads": shape.num_heads,
        "num_hidden_layers": shape.num_layers, "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": shape.max_positions, "vocab_size": shape.vocab_size,
        "type_vocab_size": shape.type_vocab_size, "layer_norm_eps": shape.layer_norm_eps,
        "hidden_act": "gelu", "pad_token_id": 0, **(config_extra or {}),
    }
    _write_json(dest / "config.json", config)
    tokenizer.save(str(dest / "tokenizer.json"))
    specials = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"} if causal else {
        "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}
    _write_json(dest / "tokenizer_config.json", {
        **specials, "model_max_length": shape.max_positions, "do_lower_case": not causal,
        "tokenizer_class": "PreTrainedTokenizerFast" if causal else "BertTokenizer"})
    _write_json(dest / "special_tokens_map.json", specials)
    modes = tuple(pooling)
    if layout == "sentence-transformers":
        modules: list[dict[str, Any]] = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        _write_json(dest / "modules.json", modules)
        _write_json(dest / "1_Pooling" / "config.json", {
            "word_embedding_dimension": shape.hidden_size, **{key: m in modes for m, key in POOLING_KEYS.items()},
            "include_prompt": include_prompt})
        _write_json(dest / "sentence_bert_config.json", {"max_seq_length": max_seq_length or shape.max_positions,
                                                         "do_lower_case": False})
        if prompt:
            _write_json(dest / "config_sentence_transformers.json", {
                "prompts": {"query": prompt, "document": ""}, "default_prompt_name": "query",
                "similarity_fn_name": "cosine"})
    elif layout != "transformers.js":
        raise ValueError(f"unknown layout {layout!r}")
    with_types = not causal if token_type_ids is None else token_type_ids  # decoders have none
    fp32 = write_encoder_onnx(shape, weights, dest / "onnx" / "model.onnx", token_type_ids=with_types)
    if "q8" in quants:
        quantize_q8(fp32, dest / "onnx" / "model_quantized.onnx")
    if "fp32" not in quants:
        fp32.unlink()
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    if layout == "transformers.js":  # what the engine assumes without pooling files
        return TinyEncoder(dest, shape, weights, tokenizer, ("lasttoken",) if causal else ("mean",), True, files=files)
    return TinyEncoder(dest, shape, weights, tokenizer, modes, normalize, prompt, include_prompt, files)
