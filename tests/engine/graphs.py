"""Variants of the tiny model's files for the engine's contract tests.

Real ONNX graphs, written with ``onnx.helper``: the tiny Llama graph with its KV cache retyped to
float16 or without the ``position_ids`` input (computed inside from the mask, as some exports do),
a cache-less "bigram" graph whose greedy chain is known, and a SentencePiece-style (metaspace +
byte-fallback) tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new


def with_fp16_kv(src: Path, dest: Path) -> None:
    """The same graph with ``past_key_values.*`` inputs and ``present.*`` outputs in float16."""
    model = onnx.load(str(src))
    graph = model.graph
    casts_in, casts_out = [], []
    for inp in graph.input:
        if inp.name.startswith("past_key_values."):
            _rename_uses(graph, inp.name, inp.name + "_f32")
            inp.type.tensor_type.elem_type = TensorProto.FLOAT16
            casts_in.append(helper.make_node("Cast", [inp.name], [inp.name + "_f32"], to=TensorProto.FLOAT))
    for out in graph.output:
        if out.name.startswith("present."):
            _rename_uses(graph, out.name, out.name + "_f32")
            out.type.tensor_type.elem_type = TensorProto.FLOAT16
            casts_out.append(helper.make_node("Cast", [out.name + "_f32"], [out.name], to=TensorProto.FLOAT16))
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dest))


def without_position_ids(src: Path, dest: Path) -> None:
    """The same graph computing ``position_ids = cumsum(mask) - 1`` (last ``seq`` entries) inside."""
    model = onnx.load(str(src))
    graph = model.graph
    kept = [i for i in graph.input if i.name != "position_ids"]
    del graph.input[:]
    graph.input.extend(kept)
    graph.initializer.extend([
        numpy_helper.from_array(np.array(1, np.int64), "pos_one"),
        numpy_helper.from_array(np.array([1], np.int64), "pos_axis"),
        numpy_helper.from_array(np.array([2], np.int64), "pos_two"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "pos_end"),
    ])
    compute = [
        helper.make_node("CumSum", ["attention_mask", "pos_one"], ["pos_cum"]),
        helper.make_node("Sub", ["pos_cum", "pos_one"], ["pos_all"]),
        helper.make_node("Shape", ["input_ids"], ["pos_shape"]),
        helper.make_node("Slice", ["pos_shape", "pos_axis", "pos_two"], ["pos_seq"]),
        helper.make_node("Neg", ["pos_seq"], ["pos_start"]),
        helper.make_node("Slice", ["pos_all", "pos_start", "pos_end", "pos_axis"], ["position_ids"]),
    ]
    nodes = compute + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dest))


def with_logits_to_keep(src: Path, dest: Path) -> None:
    """The same graph with transformers' scalar ``logits_to_keep`` input: only the last ``k``
    positions' logits are returned."""
    model = onnx.load(str(src))
    graph = model.graph
    _rename_uses(graph, "logits", "logits_all")
    graph.input.append(helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, []))
    graph.initializer.extend([
        numpy_helper.from_array(np.array([1], np.int64), "keep_axis"),
        numpy_helper.from_array(np.array([1], np.int64), "keep_shape"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "keep_end"),
    ])
    graph.node.extend([
        helper.make_node("Neg", ["logits_to_keep"], ["keep_neg"]),
        helper.make_node("Reshape", ["keep_neg", "keep_shape"], ["keep_start"]),
        helper.make_node("Slice", ["logits_all", "keep_start", "keep_end", "keep_axis"], ["logits"]),
    ])
    onnx.save(model, str(dest))


def bigram_chain(vocab: int, seed: int = 0) -> np.ndarray:
    """``next[a]``: the greedy successor of token ``a`` in :func:`write_bigram_graph`'s model."""
    return np.random.default_rng(seed).integers(3, vocab, size=vocab)


def write_bigram_graph(dest: Path, vocab: int, *, extra_inputs: tuple[str, ...] = (), seed: int = 0) -> np.ndarray:
    """A cache-less decoder: ``logits[t] = table[input_ids[t]]``; returns the greedy successor table."""
    succ = bigram_chain(vocab, seed)
    table = np.random.default_rng(seed + 1).standard_normal((vocab, vocab)).astype(np.float32)
    table[np.arange(vocab), succ] = 10.0
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ] + [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"]) for name in extra_inputs]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["logits"], axis=0)],
        "bigram",
        inputs,
        [output],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest))
    return succ


SP_CORPUS = (
    "The capital of France is Paris.",
    "Hello world, how are you today?",
    "Once upon a time there was a small model.",
)


def sentencepiece_style_tokenizer() -> Tokenizer:
    """BPE with a metaspace (``▁``) pre-tokenizer and byte fallback, decoded like Llama 2's:
    ``Replace(▁→space), ByteFallback, Fuse, Strip(1 leading space)``."""
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer_tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    trainer_tok.train_from_iterator(SP_CORPUS, trainer=trainer)
    spec = json.loads(trainer_tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    return tok
