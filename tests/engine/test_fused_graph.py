"""The engine on the converter's fused graph (GroupQueryAttention, logits_to_keep): no engine change
is needed, and every path (prefill in chunks, prefix reuse, single-token steps) gives the same greedy
tokens as the unfused graph of the same weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.convert.llama_graph import LOGITS_TO_KEEP, write_llama_onnx
from agent.engine.model import OnnxChatModel, load_model
from tests.engine.helpers import chat_prompt, run, token_ids
from tests.fakes.tiny_model import TinyModel


@pytest.fixture(scope="module")
def fused_model(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> OnnxChatModel:
    repo = tmp_path_factory.mktemp("fused") / "repo"
    shutil.copytree(tiny.path, repo, ignore=shutil.ignore_patterns("*.onnx"))
    write_llama_onnx(tiny.shape, tiny.weights, repo, "fp32", fused=True)
    return load_model(repo, quantization="fp32", device="cpu", threads=1)


def test_contract_feeds_logits_to_keep(fused_model: OnnxChatModel, tiny_model: OnnxChatModel) -> None:
    assert fused_model.contract.logits_to_keep == (LOGITS_TO_KEEP, (1,))
    assert fused_model.contract.has_cache
    assert tiny_model.contract.logits_to_keep is None


@pytest.mark.parametrize("content", ["Hello world", "What is the capital of France? " * 6])
def test_same_greedy_tokens_as_unfused(fused_model: OnnxChatModel, tiny_model: OnnxChatModel, content: str) -> None:
    prompt = chat_prompt(tiny_model, content)
    expected = token_ids(run(tiny_model, prompt, max_tokens=24, temperature=0.0))
    assert token_ids(run(fused_model, prompt, max_tokens=24, temperature=0.0)) == expected


def test_chunked_prefill_and_prefix_reuse(fused_model: OnnxChatModel, tiny_model: OnnxChatModel, tiny: TinyModel) -> None:
    """Prefill in 5-token chunks, then a second turn that reuses the first turn's cache."""
    prompt = chat_prompt(tiny_model, "The quick brown fox jumps over the lazy dog. " * 3)
    expected = token_ids(run(tiny_model, prompt, max_tokens=16, temperature=0.0))
    runner = fused_model._runner
    assert runner is not None
    saved = runner.max_chunk
    runner.max_chunk = 5
    try:
        run(fused_model, [prompt[0] + 1], max_tokens=1)  # nothing of the prompt is cached
        assert token_ids(run(fused_model, prompt, max_tokens=16, temperature=0.0)) == expected
    finally:
        runner.max_chunk = saved
    follow_up = prompt + expected + chat_prompt(tiny_model, "And then?")
    run(tiny_model, [follow_up[0] + 1], max_tokens=1)  # the unfused model runs it cold
    cold = token_ids(run(tiny_model, follow_up, max_tokens=12, temperature=0.0))
    warm = token_ids(run(fused_model, follow_up, max_tokens=12, temperature=0.0))
    assert fused_model.last_stats.reused_tokens > len(prompt)
    assert warm == cold
