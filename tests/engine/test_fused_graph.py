"""The engine on the converter's fused graph (GroupQueryAttention, logits_to_keep): no engine change
is needed, and every path (prefill in chunks, prefix reuse, single-token steps) gives the same greedy
tokens as the unfused graph of the same weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from agent.convert.llama_graph import LOGITS_TO_KEEP, write_llama_onnx
from agent.engine import session as session_module
from agent.engine.model import OnnxChatModel, load_model
from agent.engine.session import CachedRunner, KVBufferRunner
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


def test_fused_graphs_decode_into_a_preallocated_cache(fused_model: OnnxChatModel, tiny_model: OnnxChatModel) -> None:
    """The converter marks GroupQueryAttention graphs; the engine then binds one buffer per layer as
    both past and present, and onnxruntime writes each step's keys and values into it in place."""
    runner = fused_model._runner
    assert isinstance(runner, KVBufferRunner)
    assert isinstance(tiny_model._runner, CachedRunner)  # the unfused graph concatenates
    runner.reset()
    prompt = chat_prompt(tiny_model, "Hello world")
    run(fused_model, prompt, max_tokens=4, temperature=0.0)
    length = runner.past_length
    assert length >= len(prompt)
    keys = runner._buffers[0]
    assert np.abs(keys[:, :, :length]).sum() > 0  # written by onnxruntime into our own memory
    assert not keys[:, :, length:].any()


def test_the_preallocated_cache_grows_and_cuts_back(
    fused_model: OnnxChatModel, tiny_model: OnnxChatModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Growth (here every 8 positions) keeps what was cached, and a later prompt that shares only a
    prefix reuses it: every path gives the unfused graph's greedy tokens."""
    monkeypatch.setattr(session_module, "KV_BUFFER_STEP", 8)
    runner = fused_model._runner
    assert isinstance(runner, KVBufferRunner)
    runner.reset()
    assert runner.capacity == 0
    saved = runner.max_chunk
    runner.max_chunk = 5
    try:
        prompt = chat_prompt(tiny_model, "The quick brown fox jumps over the lazy dog. " * 2)
        expected = token_ids(run(tiny_model, prompt, max_tokens=20, temperature=0.0))
        assert token_ids(run(fused_model, prompt, max_tokens=20, temperature=0.0)) == expected
        grown = runner.capacity
        assert runner.past_length <= grown < 2 * (runner.past_length + 8) and grown % 8 == 0  # doubling
        other = prompt[:6] + chat_prompt(tiny_model, "Something else entirely")
        cold = token_ids(run(tiny_model, [other[0] + 1], max_tokens=1)) and token_ids(
            run(tiny_model, other, max_tokens=12, temperature=0.0)
        )
        assert token_ids(run(fused_model, other, max_tokens=12, temperature=0.0)) == cold
        assert fused_model.last_stats.reused_tokens == 6
    finally:
        runner.max_chunk = saved


def test_a_failed_step_forgets_the_preallocated_cache(fused_model: OnnxChatModel) -> None:
    runner = fused_model._runner
    assert isinstance(runner, KVBufferRunner)
    runner.begin([1, 2, 3])
    runner.forward([1, 2])
    with pytest.raises(RuntimeError, match="exceeds the context"):
        runner.forward(list(range(fused_model.info.context_length)))
    assert runner.past_length == 0 and runner.capacity == 0
