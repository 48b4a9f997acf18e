"""GGUF files of the other families llama.cpp's Hub repos cover: Qwen2 (q/k/v biases) and Qwen3 (q/k
norms, head_dim apart from hidden/heads), written the way llama.cpp's converter writes them (no q/k
row permutation for these NEOX-rotary architectures, ``qwen2`` pre-tokenizer) from the same random
transformers checkpoints the fast-path tests export, imported by hflocal and run: the greedy tokens
are transformers' own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as QT

from agent.convert.fast_path import shape_from_config
from agent.convert.gguf_import import import_gguf, inspect_gguf
from tests.convert.hub_exports import NEW_TOKENS, PROMPT
from tests.fakes.decoder import Decoder
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.fakes.tiny_model import train_tokenizer


def _checkpoint_weights(folder: Path) -> dict:  # type: ignore[type-arg]
    from safetensors.numpy import load_file

    weights = load_file(str(folder / "model.safetensors"))
    return {k: v.astype("float32") for k, v in weights.items()}


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_gguf_of_the_family_imports_and_generates_what_transformers_generates(
    exports: Path, family: str, tmp_path: Path
) -> None:
    checkpoint = exports / family / "checkpoint"
    shape = shape_from_config(json.loads((checkpoint / "config.json").read_text()))
    weights = _checkpoint_weights(checkpoint)
    if shape.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    assert any(".bias" in n for n in weights) == (family == "qwen2")
    assert any("q_norm" in n for n in weights) == (family == "qwen3")
    gguf = tmp_path / f"{family}.gguf"
    write_tiny_gguf(gguf, shape, weights, train_tokenizer(), matrix_type=QT.F32, architecture=family, pre="qwen2")
    assert inspect_gguf(gguf).architecture == family

    result = import_gguf(gguf, tmp_path / "repo", ("fp32", "q8"))
    want = json.loads((exports / family / "transformers.json").read_text())
    assert Decoder(result.files["fp32"]).greedy(PROMPT, NEW_TOKENS) == want
    assert len(Decoder(result.files["q8"]).greedy(PROMPT, NEW_TOKENS)) == NEW_TOKENS
