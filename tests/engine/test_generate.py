"""End-to-end generation on the tiny models with real onnxruntime: the decode loop's promises."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agent.engine.model import OnnxChatModel
from agent.engine.sampling import log_softmax
from agent.engine.types import ContextLengthExceeded, InvalidRequestError, SamplingParams
from tests.engine.helpers import SCRIPTED_REPLY, chat_prompt, run, text, token_ids
from tests.fakes import reference
from tests.fakes.tiny_model import IM_END_ID, TinyModel


def expected_greedy(tiny: TinyModel, prompt: list[int], steps: int) -> list[int]:
    """The uncached reference's argmax tokens, cut after the first eos (which the engine drops)."""
    out = reference.greedy(tiny.shape, tiny.weights, prompt, steps)
    return out[: out.index(IM_END_ID)] if IM_END_ID in out else out


@pytest.mark.parametrize("content", ["Hello world", "The capital of France is", "café 🙂 日本"])
def test_greedy_matches_uncached_reference(tiny: TinyModel, tiny_model: OnnxChatModel, content: str) -> None:
    prompt = chat_prompt(tiny_model, content)
    steps = run(tiny_model, prompt, max_tokens=24)
    assert token_ids(steps) == expected_greedy(tiny, prompt, 24)


def test_chunked_prefill_gives_the_same_tokens(tiny: TinyModel, tiny_model: OnnxChatModel) -> None:
    prompt = tiny_model.encode_text("The quick brown fox jumps over the lazy dog. Once upon a time")
    whole = token_ids(run(tiny_model, prompt, max_tokens=12))
    runner = tiny_model._runner
    assert runner is not None
    saved = runner.max_chunk
    runner.max_chunk = 3
    try:
        chunked = token_ids(run(tiny_model, prompt, max_tokens=12))
    finally:
        runner.max_chunk = saved
    assert chunked == whole == expected_greedy(tiny, prompt, 12)


def test_io_binding_path_gives_the_same_tokens(tiny: TinyModel, tiny_model: OnnxChatModel) -> None:
    """The path CUDA uses (cache bound as OrtValues on the device), run here on the CPU."""
    from agent.engine.session import CachedRunner

    runner = tiny_model._runner
    assert isinstance(runner, CachedRunner)
    bound = CachedRunner(tiny_model._session, tiny_model.contract, 256, use_binding=True)
    bound.set_vocab(tiny_model.info.vocab_size)
    prompt = chat_prompt(tiny_model)
    tiny_model._runner = bound
    try:
        ids = token_ids(run(tiny_model, prompt, max_tokens=16))
        again = token_ids(run(tiny_model, prompt, max_tokens=16))  # with a reused prefix
    finally:
        tiny_model._runner = runner
    assert ids == again == expected_greedy(tiny, prompt, 16)


def test_step_texts_concatenate_to_the_full_decode(tiny: TinyModel, tiny_model: OnnxChatModel) -> None:
    # Random weights emit arbitrary byte tokens, including ones that never form a character.
    for seed in range(5):
        steps = run(tiny_model, chat_prompt(tiny_model), max_tokens=40, temperature=1.0, seed=seed)
        assert text(steps) == tiny.decode(token_ids(steps))


def test_every_step_but_the_last_has_one_token_and_no_finish(tiny_model: OnnxChatModel) -> None:
    steps = run(tiny_model, chat_prompt(tiny_model), max_tokens=10)
    assert all(len(s.tokens) == 1 and s.finish_reason is None for s in steps[:-1])
    assert steps[-1].finish_reason in ("stop", "length")


def test_scripted_reply_ends_at_eos(scripted_model: OnnxChatModel) -> None:
    steps = run(scripted_model, chat_prompt(scripted_model, "anything"), max_tokens=100)
    assert text(steps) == SCRIPTED_REPLY
    assert steps[-1].finish_reason == "stop"
    assert steps[-1].tokens == []  # the eos token itself is neither text nor a reported token
    assert IM_END_ID not in token_ids(steps)


def test_multibyte_characters_are_never_split_across_steps(scripted_model: OnnxChatModel) -> None:
    steps = run(scripted_model, chat_prompt(scripted_model), max_tokens=100)
    pieces = [s.text for s in steps if s.text]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == SCRIPTED_REPLY
    # 日 and 🙂 each arrive whole, in the step of their last byte.
    assert any(p.endswith("日") or p == "日" for p in pieces)
    assert any("🙂" in p for p in pieces)
    assert sum(1 for s in steps if s.tokens and not s.text) >= 5  # bytes held back


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        (["world"], "Hello "),              # inside one step's text
        (["ld! c"], "Hello wor"),           # spans three tokens
        (["é 日"], "Hello world! caf"),      # spans multi-byte tokens
        (["🙂"], "Hello world! café 日"),    # a character made of four tokens
        (["zzz", "llo w"], "He"),           # the earliest of several
        (["Hello"], ""),                    # at the very start
        (["not there"], SCRIPTED_REPLY),
    ],
)
def test_stop_strings_cut_exactly_before_the_stop(scripted_model: OnnxChatModel, stop: list[str], expected: str) -> None:
    steps = run(scripted_model, chat_prompt(scripted_model), max_tokens=100, stop=stop)
    assert text(steps) == expected
    assert steps[-1].finish_reason == "stop"


def test_a_single_stop_string_is_not_split_into_characters(scripted_model: OnnxChatModel) -> None:
    steps = run(scripted_model, chat_prompt(scripted_model), max_tokens=100, stop="world")
    assert text(steps) == "Hello "


def test_stop_string_tokens_are_reported_but_not_its_text(scripted_model: OnnxChatModel) -> None:
    full = run(scripted_model, chat_prompt(scripted_model), max_tokens=100)
    cut = run(scripted_model, chat_prompt(scripted_model), max_tokens=100, stop=["ld! c"])
    # "Ġc" completes the stop string: it is the last token generated.
    assert token_ids(cut) == token_ids(full)[:7]


def test_max_tokens_gives_length_with_exactly_that_many_tokens(scripted_model: OnnxChatModel) -> None:
    for n in (1, 2, 5):
        steps = run(scripted_model, chat_prompt(scripted_model), max_tokens=n)
        assert len(token_ids(steps)) == n
        assert steps[-1].finish_reason == "length"
        assert steps[-1].tokens  # the last token arrives with the finish reason


def test_length_finish_flushes_held_bytes(scripted_model: OnnxChatModel, scripted: TinyModel) -> None:
    # 11 tokens end in the middle of 日: the partial character is emitted as a full decode shows it.
    steps = run(scripted_model, chat_prompt(scripted_model), max_tokens=11)
    assert text(steps) == scripted.decode(token_ids(steps))
    assert text(steps).endswith("\ufffd")


def test_context_overflow_raises_before_any_work(tiny: TinyModel) -> None:
    from agent.engine.model import load_model

    model = load_model(tiny.path, quantization="fp32", device="cpu", context_length=16)
    with pytest.raises(ContextLengthExceeded):
        model.generate(list(range(3, 19)), SamplingParams(), threading.Event())  # 16 + 1 > 16
    with pytest.raises(ContextLengthExceeded):
        model.generate(list(range(3, 20)), SamplingParams(), threading.Event())
    # 15 tokens leave room for exactly one: max_tokens is capped by the context.
    steps = run(model, list(range(3, 18)), max_tokens=100)
    assert len(token_ids(steps)) == 1 and steps[-1].finish_reason == "length"
    # Without max_tokens the reply may fill the context (9 tokens after 7), unless eos comes first.
    steps = run(model, list(range(3, 10)), presence_penalty=50.0)
    if steps[-1].finish_reason == "length":
        assert len(token_ids(steps)) == 9
    else:
        assert steps[-1].finish_reason == "stop" and len(token_ids(steps)) < 9


def test_invalid_prompts_are_refused(tiny_model: OnnxChatModel) -> None:
    cancel = threading.Event()
    with pytest.raises(InvalidRequestError):
        tiny_model.generate([], SamplingParams(), cancel)
    with pytest.raises(InvalidRequestError):
        tiny_model.generate([5, 100_000], SamplingParams(), cancel)
    with pytest.raises(InvalidRequestError):
        tiny_model.generate([5], SamplingParams(max_tokens=0), cancel)


def test_cancel_stops_within_one_step(tiny_model: OnnxChatModel) -> None:
    cancel = threading.Event()
    steps = []
    for step in tiny_model.generate(chat_prompt(tiny_model), SamplingParams(max_tokens=50), cancel):
        steps.append(step)
        if len(steps) == 3:
            cancel.set()
    assert len(steps) == 4
    assert steps[-1].finish_reason == "cancelled" and steps[-1].tokens == []


def test_cancel_before_start_generates_nothing(tiny_model: OnnxChatModel) -> None:
    cancel = threading.Event()
    cancel.set()
    steps = run(tiny_model, chat_prompt(tiny_model), cancel=cancel, max_tokens=50)
    assert [(s.text, s.tokens, s.finish_reason) for s in steps] == [("", [], "cancelled")]


def test_same_seed_same_text_different_seeds_differ(tiny_model: OnnxChatModel) -> None:
    prompt = chat_prompt(tiny_model)

    def sample(seed: int) -> list[int]:
        return token_ids(run(tiny_model, prompt, max_tokens=20, temperature=1.0, seed=seed))

    assert sample(7) == sample(7)
    assert len({tuple(sample(s)) for s in range(6)}) > 1


def test_top_k_one_is_greedy(tiny_model: OnnxChatModel) -> None:
    prompt = chat_prompt(tiny_model)
    greedy = token_ids(run(tiny_model, prompt, max_tokens=15))
    assert token_ids(run(tiny_model, prompt, max_tokens=15, temperature=1.5, top_k=1, seed=3)) == greedy
    assert token_ids(run(tiny_model, prompt, max_tokens=15, temperature=0.0, seed=3)) == greedy


def test_presence_penalty_prevents_repeats(tiny_model: OnnxChatModel) -> None:
    steps = run(tiny_model, chat_prompt(tiny_model), max_tokens=30, presence_penalty=100.0)
    ids = token_ids(steps)
    assert len(set(ids)) == len(ids)


def test_logprobs_are_consistent(tiny: TinyModel, tiny_model: OnnxChatModel) -> None:
    prompt = chat_prompt(tiny_model)
    steps = run(tiny_model, prompt, max_tokens=8, logprobs=True, top_logprobs=5)
    choices = [c for s in steps for c in s.tokens]
    assert choices
    for choice in choices:
        assert choice.logprob <= 0.0
        assert len(choice.top) == 5
        values = [t.logprob for t in choice.top]
        assert values == sorted(values, reverse=True)
        # Greedy: the chosen token is the most likely one, with the same logprob.
        assert choice.top[0].token == choice.token and choice.top[0].logprob == choice.logprob
        assert bytes(choice.bytes) == tiny_model.tokenizer.token_bytes(choice.token_id)
        assert all(bytes(t.bytes).decode("utf-8", "replace") == t.token for t in choice.top)
    # The first token's logprob is the model's log-softmax at the prompt's last position.
    logits = reference.forward(tiny.shape, tiny.weights, np.array([prompt]))[0, -1]
    expected = log_softmax(logits.astype(np.float32))[choices[0].token_id]
    assert choices[0].logprob == pytest.approx(float(expected), abs=1e-3)


def test_logprobs_when_sampling_are_finite_and_bytes_rebuild_the_text(scripted_model: OnnxChatModel) -> None:
    steps = run(scripted_model, chat_prompt(scripted_model), max_tokens=100, logprobs=True, top_logprobs=2,
                temperature=0.5, top_p=0.9, seed=1)
    choices = [c for s in steps for c in s.tokens]
    assert all(np.isfinite(c.logprob) and c.logprob <= 0 and len(c.top) == 2 for c in choices)
    assert b"".join(bytes(c.bytes) for c in choices).decode("utf-8") == text(steps)


def test_no_logprobs_unless_asked(tiny_model: OnnxChatModel) -> None:
    steps = run(tiny_model, chat_prompt(tiny_model), max_tokens=3)
    assert all(c.top == [] and c.logprob == 0.0 for s in steps for c in s.tokens)


def test_a_new_generation_starts_from_a_clean_cache(tiny: TinyModel, tiny_model: OnnxChatModel) -> None:
    a = chat_prompt(tiny_model, "Hello world")
    b = chat_prompt(tiny_model, "Numbers: 42")
    first = token_ids(run(tiny_model, a, max_tokens=10))
    abandoned = tiny_model.generate(b, SamplingParams(max_tokens=10), threading.Event())
    next(abandoned)
    abandoned.close()
    assert token_ids(run(tiny_model, a, max_tokens=10)) == first == expected_greedy(tiny, a, 10)


@pytest.mark.parametrize("quant", ["fp16", "q8", "q4"])
def test_quantized_variants_load_and_generate(tiny: TinyModel, quant: str) -> None:
    from agent.engine.model import load_model

    model = load_model(tiny.path, quantization=quant, device="cpu")
    assert model.info.quantization == quant and model.info.onnx_file is not None
    steps = run(model, chat_prompt(model), max_tokens=10)
    assert 1 <= len(token_ids(steps)) <= 10
    assert text(steps) == tiny.decode(token_ids(steps))
    if quant == "fp16":  # half-precision weights keep the first argmax on this model
        assert token_ids(steps)[0] == expected_greedy(tiny, chat_prompt(model), 1)[0]


def test_a_following_prompt_reuses_the_cached_prefix(tiny: TinyModel) -> None:
    from agent.engine.model import load_model

    model = load_model(tiny.path, quantization="fp32", device="cpu")
    first = model.encode_chat([{"role": "user", "content": "Hello world"}])
    reply = token_ids(run(model, first, max_tokens=6))
    assert model.last_stats.reused_tokens == 0
    # The next turn extends the cached sequence (prompt + reply but its last token): nothing is cut.
    second = first + reply + tiny.encode("<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n<|im_start|>assistant\n")
    assert token_ids(run(model, second, max_tokens=8)) == expected_greedy(tiny, second, 8)
    assert model.last_stats.reused_tokens == len(first) + len(reply) - 1
    # A prompt that shares only a beginning: the cache is cut back to it.
    third = first[:5] + tiny.encode("Numbers: 42")
    assert token_ids(run(model, third, max_tokens=8)) == expected_greedy(tiny, third, 8)
    assert model.last_stats.reused_tokens == 5
    # The same prompt again: all but its last token come from the cache.
    assert token_ids(run(model, third, max_tokens=8)) == expected_greedy(tiny, third, 8)
    assert model.last_stats.reused_tokens == len(third) - 1
    # Nothing in common.
    run(model, tiny.encode("Once upon a time"), max_tokens=2)
    assert model.last_stats.reused_tokens == 0


def test_a_seeded_request_runs_its_prompt_afresh(tiny: TinyModel) -> None:
    """A seed asks for the same tokens every time: the prompt is not taken from a cache that other
    batch shapes computed (whose last bits differ and can flip a draw); unseeded requests still reuse it."""
    from agent.engine.model import load_model

    model = load_model(tiny.path, quantization="fp32", device="cpu")
    prompt = model.encode_chat([{"role": "user", "content": "Hello world"}])
    seeded = {"temperature": 1.0, "seed": 42, "max_tokens": 8}
    first = token_ids(run(model, prompt, **seeded))
    assert model.last_stats.reused_tokens == 0
    run(model, prompt, max_tokens=3)
    assert model.last_stats.reused_tokens == len(prompt) - 1
    assert token_ids(run(model, prompt, **seeded)) == first
    assert model.last_stats.reused_tokens == 0
    run(model, prompt, max_tokens=3)
    assert model.last_stats.reused_tokens == len(prompt) - 1


def test_a_prompt_too_long_to_ever_fit_is_refused_before_tokenizing(tiny_model: OnnxChatModel) -> None:
    context = tiny_model.info.context_length
    hopeless = "a" * (tiny_model.tokenizer.max_token_chars * (context + 1))
    with pytest.raises(ContextLengthExceeded, match="at least"):
        tiny_model.encode_text(hopeless)
    with pytest.raises(ContextLengthExceeded, match="at least"):
        tiny_model.encode_chat([{"role": "user", "content": hopeless}])
    # the bound is a lower bound on the token count: text that could still fit is tokenized
    fits = "a" * (context // 2)
    assert 0 < len(tiny_model.encode_text(fits)) <= len(fits) + 1
