"""The embedding engine on tiny encoders the tests build, against a numpy computation of the same
weights (``tests.fakes.encoder_reference``): every pooling mode, normalised or not, batches of
different lengths, the decoder-style graph, q8, prompts, dimensions, lengths and bad input."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.engine.embedding import MAX_BATCH_SIZE, OnnxEmbeddingModel, load_embedding_model
from agent.engine.loader import load_variant
from agent.engine.types import EmbeddingRequestError, InvalidRequestError, ModelLoadError, SamplingParams
from tests.fakes.encoder_reference import sentence_vector, token_states
from tests.fakes.tiny_encoder import TinyEncoder, build_encoder_repo
from tests.fakes.tiny_model import CORPUS, build_tiny_repo

TEXTS = [
    "The capital of France is Paris.",
    "Hi",
    "Once upon a time there was a small model that could count to ten, and the quick brown fox jumps.",
    "Python, Rust and C are programming languages.",
]


def reference(enc: TinyEncoder, texts: list[str], *, skip: int = 0) -> np.ndarray:
    return np.stack([sentence_vector(token_states(enc.shape, enc.weights, enc.encode(t)), enc.pooling,
                                     normalize=enc.normalize, skip=skip) for t in texts])


def load(enc: TinyEncoder, quant: str = "fp32") -> OnnxEmbeddingModel:
    model = load_variant(enc.path, quantization=quant, device="cpu", threads=1, kind="embed")
    assert isinstance(model, OnnxEmbeddingModel)
    return model


POOLINGS = [("mean",), ("cls",), ("max",), ("lasttoken",), ("mean_sqrt_len",), ("weightedmean",), ("cls", "max", "mean")]


@pytest.mark.parametrize("normalize", [True, False], ids=["normalized", "raw"])
@pytest.mark.parametrize("pooling", POOLINGS, ids=["+".join(p) for p in POOLINGS])
def test_each_pooling_matches_the_reference_and_padding_changes_nothing(
        tmp_path: Path, pooling: tuple[str, ...], normalize: bool) -> None:
    enc = build_encoder_repo(tmp_path / "repo", pooling=pooling, normalize=normalize)
    model = load(enc)
    batch = model.embed(TEXTS)
    expected = reference(enc, TEXTS)
    assert batch.vectors.shape == (len(TEXTS), enc.shape.hidden_size * len(pooling)) == expected.shape
    np.testing.assert_allclose(batch.vectors, expected, rtol=1e-4, atol=2e-5)
    alone = np.stack([model.embed([t]).vectors[0] for t in TEXTS])
    np.testing.assert_allclose(batch.vectors, alone, rtol=1e-5, atol=1e-6)  # padding to the longest changes nothing
    norms = np.linalg.norm(batch.vectors, axis=1)
    if normalize:
        np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    else:
        assert not np.allclose(norms, 1.0, rtol=1e-3)
    assert batch.prompt_tokens == sum(len(enc.encode(t)) for t in TEXTS)
    cos = batch.vectors @ batch.vectors.T / np.outer(norms, norms)
    assert cos[~np.eye(len(TEXTS), dtype=bool)].max() < 0.999  # different texts, different vectors


def test_a_transformers_js_repo_gets_mean_pooling_normalised(tmp_path: Path) -> None:
    enc = build_encoder_repo(tmp_path / "repo", layout="transformers.js")
    assert not (enc.path / "modules.json").exists() and enc.pooling == ("mean",)
    model = load(enc)
    assert (model.config.pooling, model.config.normalize, model.config.pooling_source) == (("mean",), True, "assumed")
    np.testing.assert_allclose(model.embed(TEXTS).vectors, reference(enc, TEXTS), rtol=1e-4, atol=2e-5)


def test_a_decoder_style_graph_with_position_ids_and_an_empty_cache(tmp_path: Path) -> None:
    """Qwen3-Embedding style: causal attention, position_ids and past_key_values.* inputs, an eos
    appended by the tokenizer, last-token pooling assumed from the architecture."""
    enc = build_encoder_repo(tmp_path / "repo", layout="transformers.js", causal=True)
    model = load(enc)
    assert model.config.pooling == ("lasttoken",) and model.config.decoder
    assert {i.role for i in model._inputs} == {"input_ids", "attention_mask", "position_ids", "past"}
    batch = model.embed(TEXTS).vectors
    np.testing.assert_allclose(batch, reference(enc, TEXTS), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(batch, np.stack([model.embed([t]).vectors[0] for t in TEXTS]), rtol=1e-5, atol=1e-6)


def test_q8_is_its_own_file_and_close_to_fp32(tmp_path: Path) -> None:
    enc = build_encoder_repo(tmp_path / "repo", quants=("fp32", "q8"))
    fp32, q8 = load(enc), load(enc, "q8")
    assert q8.info.onnx_file is not None and q8.info.onnx_file.name == "model_quantized.onnx"
    a, b = fp32.embed(TEXTS).vectors, q8.embed(TEXTS).vectors
    assert not np.allclose(a, b, atol=1e-6)  # really another graph
    cosine = (a * b).sum(1)  # both normalised
    assert cosine.min() > 0.98, cosine


def test_batches_longer_than_one_run_keep_their_order(tmp_path: Path) -> None:
    enc = build_encoder_repo(tmp_path / "repo")
    model = load(enc)
    texts = [CORPUS[i % len(CORPUS)][: 5 + 7 * i % 60] or "x" for i in range(MAX_BATCH_SIZE * 2 + 5)]
    vectors = model.embed(texts).vectors
    for i in (0, 1, MAX_BATCH_SIZE, len(texts) - 1):
        np.testing.assert_allclose(vectors[i], model.embed([texts[i]]).vectors[0], rtol=1e-5, atol=1e-6)


def test_token_ids_are_fed_as_given(tmp_path: Path) -> None:
    enc = build_encoder_repo(tmp_path / "repo")
    model = load(enc)
    ids = [enc.encode(t) for t in TEXTS]
    np.testing.assert_allclose(model.embed(ids).vectors, model.embed(TEXTS).vectors, rtol=1e-6, atol=1e-7)
    assert model.embed(ids).prompt_tokens == sum(map(len, ids))
    with pytest.raises(EmbeddingRequestError, match=r"input\[1\] has token ids outside the vocabulary"):
        model.embed([ids[0], [1, enc.shape.vocab_size]])
    with pytest.raises(EmbeddingRequestError, match=r"input\[0\] is an empty list"):
        model.embed([[]])


def test_a_default_prompt_is_prepended_and_left_out_of_the_mean(tmp_path: Path) -> None:
    enc = build_encoder_repo(tmp_path / "repo", prompt="query: ", include_prompt=False)
    model = load(enc)
    assert model.config.prompt == "query: "
    skip = len(enc.tokenizer.encode("query: ").ids) - 1  # sentence-transformers: [CLS] + the prompt's tokens
    np.testing.assert_allclose(model.embed(TEXTS).vectors, reference(enc, TEXTS, skip=skip), rtol=1e-4, atol=2e-5)
    assert model.tokenize(["Hi"])[0] == enc.encode("Hi")


def test_dimensions_only_for_matryoshka_models(tmp_path: Path) -> None:
    plain = load(build_encoder_repo(tmp_path / "plain"))
    assert plain.dimensions == 32
    assert plain.embed(TEXTS, dimensions=32).vectors.shape == (4, 32)
    with pytest.raises(EmbeddingRequestError, match="does not declare Matryoshka") as err:
        plain.embed(TEXTS, dimensions=16)
    assert err.value.param == "dimensions"
    listed = load(build_encoder_repo(tmp_path / "listed", config_extra={"matryoshka_dimensions": [8, 16, 32]}))
    full = listed.embed(TEXTS).vectors
    short = listed.embed(TEXTS, dimensions=16).vectors
    assert short.shape == (4, 16)
    np.testing.assert_allclose(short, full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True), rtol=1e-5)
    with pytest.raises(EmbeddingRequestError, match="trained for dimensions 8, 16, 32"):
        listed.embed(TEXTS, dimensions=12)
    anything = load(build_encoder_repo(tmp_path / "any", config_extra={"is_matryoshka": True}))
    assert anything.embed(TEXTS, dimensions=5).vectors.shape == (4, 5)
    with pytest.raises(EmbeddingRequestError, match="between 1 and 32"):
        anything.embed(TEXTS, dimensions=33)


def test_inputs_longer_than_the_model_takes_are_refused_or_truncated(tmp_path: Path) -> None:
    enc = build_encoder_repo(tmp_path / "repo", max_seq_length=12)
    model = load(enc)
    assert model.info.context_length == 12
    long = TEXTS[2]
    assert len(enc.encode(long)) > 12
    with pytest.raises(EmbeddingRequestError, match=r"input\[1\] has \d+ tokens; this model embeds at most 12") as err:
        model.embed(["Hi", long])
    assert err.value.code == "context_length_exceeded"
    cut = enc.encode(long)[:11] + [enc.tokenizer.token_to_id("[SEP]")]  # the tokenizer's truncation keeps [SEP]
    np.testing.assert_allclose(model.embed([long], truncate=True).vectors, model.embed([cut]).vectors, rtol=1e-6)
    assert model.embed([enc.encode(long)], truncate=True).prompt_tokens == 12


def test_bad_requests_are_refused_before_any_work(tmp_path: Path) -> None:
    model = load(build_encoder_repo(tmp_path / "repo"))
    with pytest.raises(EmbeddingRequestError, match=r"input\[1\] is an empty string"):
        model.embed(["a", ""])
    with pytest.raises(EmbeddingRequestError, match="input is empty"):
        model.embed([])
    with pytest.raises(EmbeddingRequestError, match="at most 2048"):
        model.embed(["a"] * 2049)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InvalidRequestError, match="cancelled"):
        model.embed(TEXTS, cancel=cancel)
    with pytest.raises(InvalidRequestError, match="embedding model: it cannot generate"):
        model.generate([1, 2], SamplingParams(), threading.Event())
    with pytest.raises(InvalidRequestError, match="cannot chat"):
        model.encode_chat([{"role": "user", "content": "hi"}])
    model.close()
    with pytest.raises(InvalidRequestError, match="closed"):
        model.embed(TEXTS)


def test_graphs_and_modules_it_cannot_use_fail_to_load_with_the_reason(tmp_path: Path) -> None:
    chat = build_tiny_repo(tmp_path / "chat")
    with pytest.raises(ModelLoadError, match="logits.*no feature-extraction export"):
        load_embedding_model(chat.path, quantization="fp32", device="cpu")
    enc = build_encoder_repo(tmp_path / "dense")
    modules = json.loads((enc.path / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (enc.path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="Dense after pooling"):
        load_embedding_model(enc.path, quantization="fp32", device="cpu")
    with pytest.raises(ModelLoadError, match="missing onnx/model_q4.onnx"):
        load_embedding_model(enc.path, quantization="q4", device="cpu")
    with pytest.raises(ModelLoadError, match="unknown model kind"):
        load_variant(enc.path, quantization="fp32", device="cpu", kind="rerank")


def test_graphs_without_token_type_ids_and_q8_named_int8(tmp_path: Path) -> None:
    enc = build_encoder_repo(tmp_path / "repo", token_type_ids=False, quants=("q8",))
    (enc.path / "onnx" / "model_quantized.onnx").rename(enc.path / "onnx" / "model_int8.onnx")
    model = load(enc, "q8")
    assert {i.role for i in model._inputs} == {"input_ids", "attention_mask"}
    assert model.info.onnx_file is not None and model.info.onnx_file.name == "model_int8.onnx"
    assert model.embed(TEXTS).vectors.shape == (4, 32)
