"""config.json's sizes are checked and bounded before the engine allocates anything sized by them."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import pytest

from agent.engine.model import load_model
from agent.engine.model_files import MAX_CONTEXT, PER_POSITION_BYTES, usable_context
from agent.engine.types import ModelLoadError
from tests.engine.helpers import chat_prompt, run
from tests.fakes.tiny_model import TinyModel

GIB = 1 << 30


@pytest.fixture
def repo(tiny: TinyModel, tmp_path: Path) -> Path:
    dest = tmp_path / "repo"
    shutil.copytree(tiny.path, dest, ignore=shutil.ignore_patterns("model_*.onnx"))
    return dest


def _set_config(repo: Path, **values: object) -> None:
    config = json.loads((repo / "config.json").read_text())
    config.update(values)
    (repo / "config.json").write_text(json.dumps(config))


def test_a_stated_context_is_kept_when_it_fits() -> None:
    assert usable_context(4096, 1024, 8 * GIB) == (4096, None)


def test_a_context_is_cut_to_what_memory_holds_and_to_the_engine_bound() -> None:
    kv = 128 * 1024  # Llama-3-8B in fp16: 128 KiB a token
    context, why = usable_context(131072, kv, 8 * GIB)
    assert context == 4 * GIB // (kv + PER_POSITION_BYTES) and why and "memory" in why and "131072" in why
    context, why = usable_context(300_000_000, 512, 64 * GIB)
    assert context == MAX_CONTEXT and why and "300000000" in why


def test_a_kv_cache_that_cannot_hold_a_few_tokens_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="not even 16 tokens fit"):
        usable_context(2048, GIB, 8 * GIB)


@pytest.mark.usefixtures("original_graphs")  # the rewrite's rope tables: the test below
def test_a_huge_max_position_embeddings_loads_a_bounded_model(repo: Path) -> None:
    _set_config(repo, max_position_embeddings=300_000_000)
    tracemalloc.start()
    try:
        model = load_model(repo, quantization="fp32", device="cpu", threads=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert model.info.context_length <= MAX_CONTEXT
    assert peak < MAX_CONTEXT * PER_POSITION_BYTES * 2, f"the load allocated {peak >> 20} MiB"
    assert run(model, chat_prompt(model, "Hi"), max_tokens=4)  # and it still generates


@pytest.mark.parametrize(("key", "value"), [("num_hidden_layers", 10**9), ("head_dim", 0), ("vocab_size", 10**12),
                                            ("num_key_value_heads", -3), ("hidden_size", 10**15)])
def test_implausible_sizes_are_refused_naming_the_key(repo: Path, key: str, value: int) -> None:
    _set_config(repo, **{key: value})
    with pytest.raises(ModelLoadError, match=f"config.json: {key} = {value} is not a plausible value"):
        load_model(repo, quantization="fp32", device="cpu", threads=1)


def test_the_fast_paths_rope_tables_are_bounded_too() -> None:
    from agent.convert.fast_path import shape_from_config

    config = {"model_type": "llama", "num_attention_heads": 4, "hidden_size": 64, "vocab_size": 400,
              "intermediate_size": 128, "num_hidden_layers": 2, "max_position_embeddings": 300_000_000}
    assert shape_from_config(config).max_position_embeddings == MAX_CONTEXT  # a row per position
    assert shape_from_config({**config, "max_position_embeddings": 4096}).max_position_embeddings == 4096


def test_an_encoder_stating_5e6_positions_is_bounded(tmp_path: Path) -> None:
    from agent.engine.embedding import OnnxEmbeddingModel
    from agent.engine.loader import load_variant
    from tests.fakes.tiny_encoder import build_encoder_repo

    enc = build_encoder_repo(tmp_path / "enc")
    for name, key in (("config.json", "max_position_embeddings"), ("sentence_bert_config.json", "max_seq_length"),
                      ("tokenizer_config.json", "model_max_length")):
        data = json.loads((enc.path / name).read_text())
        data[key] = 5_000_000  # under the readers own 10^7 limit
        (enc.path / name).write_text(json.dumps(data))
    model = load_variant(enc.path, quantization="fp32", device="cpu", threads=1, kind="embed")
    assert isinstance(model, OnnxEmbeddingModel)
    assert model.info.context_length == MAX_CONTEXT
    assert model.embed(["Hi"]).vectors.shape[0] == 1
