"""Sampling policy as plain functions: defaults, greedy, top-k, top-p, penalties, logprobs."""

from __future__ import annotations

import numpy as np
import pytest

from agent.engine.model_files import GenerationDefaults
from agent.engine.sampling import (
    Sampler,
    apply_penalties,
    apply_repetition_penalty,
    log_softmax,
    nucleus,
    resolve_sampling,
    sample_token,
    top_indices,
)
from agent.engine.types import SamplingParams


def test_request_values_override_generation_config() -> None:
    defaults = GenerationDefaults(do_sample=True, temperature=0.6, top_p=0.9, top_k=40)
    plan = resolve_sampling(SamplingParams(), defaults)
    assert (plan.greedy, plan.temperature, plan.top_p, plan.top_k) == (False, 0.6, 0.9, 40)
    plan = resolve_sampling(SamplingParams(temperature=1.2, top_p=0.5, top_k=5), defaults)
    assert (plan.greedy, plan.temperature, plan.top_p, plan.top_k) == (False, 1.2, 0.5, 5)


def test_greedy_when_temperature_zero_or_config_does_not_sample() -> None:
    assert resolve_sampling(SamplingParams(temperature=0.0), GenerationDefaults(do_sample=True)).greedy
    assert resolve_sampling(SamplingParams(), GenerationDefaults(do_sample=False)).greedy
    assert resolve_sampling(SamplingParams(), GenerationDefaults()).greedy  # HF: do_sample defaults to False
    # A request that asks for sampling samples, whatever generation_config says.
    assert not resolve_sampling(SamplingParams(temperature=0.7), GenerationDefaults()).greedy
    assert not resolve_sampling(SamplingParams(top_p=0.9), GenerationDefaults()).greedy


def test_top_logprobs_only_with_logprobs_and_capped() -> None:
    assert resolve_sampling(SamplingParams(top_logprobs=5), GenerationDefaults()).top_logprobs == 0
    assert resolve_sampling(SamplingParams(logprobs=True, top_logprobs=50), GenerationDefaults()).top_logprobs == 20


def test_penalties_follow_openai() -> None:
    logits = np.array([1.0, 1.0, 1.0], np.float32)
    counts = np.array([0, 1, 3], np.float32)
    out = apply_penalties(logits, counts, presence=0.5, frequency=0.25)
    assert out.tolist() == pytest.approx([1.0, 1.0 - 0.25 - 0.5, 1.0 - 0.75 - 0.5])
    assert logits.tolist() == [1.0, 1.0, 1.0]  # the input is not modified


def test_log_softmax_is_normalised() -> None:
    logits = np.array([2.0, 1.0, -np.inf, 0.5], np.float32)
    lp = log_softmax(logits)
    assert np.exp(lp).sum() == pytest.approx(1.0) and lp[2] == -np.inf and (lp <= 0).all()


def test_top_indices_sorted_with_ties_by_index() -> None:
    values = np.array([1.0, 3.0, 3.0, 2.0, 0.0])
    assert top_indices(values, 3).tolist() == [1, 2, 3]
    assert top_indices(values, 10).tolist() == [1, 2, 3, 0, 4]
    assert top_indices(values, 0).tolist() == []


def test_nucleus_smallest_set_reaching_p() -> None:
    probs = np.array([0.05, 0.5, 0.3, 0.15])
    assert nucleus(probs, 0.5).tolist() == [1]
    assert nucleus(probs, 0.6).tolist() == [1, 2]
    assert nucleus(probs, 0.81).tolist() == [1, 2, 3]
    assert nucleus(probs, 0.0).tolist() == [1]  # always at least one token
    big = np.random.default_rng(0).dirichlet(np.ones(50_000))
    kept = nucleus(big, 0.9)
    order = np.argsort(-big)
    expected = int(np.searchsorted(np.cumsum(big[order]), 0.9)) + 1
    assert sorted(kept.tolist()) == sorted(order[:expected].tolist())


def test_sampling_respects_top_k_and_top_p() -> None:
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1], np.float32))
    rng = np.random.default_rng(0)
    drawn = {sample_token(logits, temperature=1.0, top_k=2, top_p=1.0, rng=rng) for _ in range(300)}
    assert drawn == {0, 1}
    drawn = {sample_token(logits, temperature=1.0, top_k=0, top_p=0.85, rng=rng) for _ in range(300)}
    assert drawn == {0, 1, 2}


def test_sampling_frequencies_follow_temperature() -> None:
    logits = np.log(np.array([0.5, 0.25, 0.25], np.float32))
    rng = np.random.default_rng(1)
    draws = np.bincount([sample_token(logits, temperature=1.0, top_k=0, top_p=1.0, rng=rng) for _ in range(4000)], minlength=3)
    assert draws[0] / 4000 == pytest.approx(0.5, abs=0.03)
    cold = np.bincount([sample_token(logits, temperature=0.1, top_k=0, top_p=1.0, rng=rng) for _ in range(500)], minlength=3)
    assert cold[0] > 490


def test_same_seed_same_draws() -> None:
    logits = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    plan = resolve_sampling(SamplingParams(temperature=1.0), GenerationDefaults())
    sampler_a, sampler_b = Sampler(plan, 1000, seed=42), Sampler(plan, 1000, seed=42)
    draws = [sampler_a.pick(logits).token_id for _ in range(20)]
    assert draws == [sampler_b.pick(logits).token_id for _ in range(20)]
    other = Sampler(plan, 1000, seed=43)
    assert draws != [other.pick(logits).token_id for _ in range(20)]


def test_sampler_logprobs_are_of_the_penalised_distribution_before_temperature() -> None:
    logits = np.array([3.0, 2.0, 1.0, 0.0], np.float32)
    plan = resolve_sampling(
        SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2, presence_penalty=5.0), GenerationDefaults()
    )
    sampler = Sampler(plan, 4, seed=0)
    first = sampler.pick(logits)
    assert first.token_id == 0 and first.logprob == pytest.approx(float(log_softmax(logits)[0]))
    assert [t for t, _ in first.top] == [0, 1]
    second = sampler.pick(logits)  # token 0 is now penalised by 5
    assert second.token_id == 1
    penalised = logits - np.array([5.0, 0, 0, 0], np.float32)
    assert second.logprob == pytest.approx(float(log_softmax(penalised)[1]))
    assert [t for t, _ in second.top] == [1, 2]


def test_repetition_penalty_follows_hugging_face() -> None:
    logits = np.array([2.0, -2.0, 2.0, 0.5], np.float32)
    out = apply_repetition_penalty(logits, np.array([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 2.0, 0.5] and logits[0] == 2.0


def test_repetition_penalty_covers_prompt_and_generated_tokens() -> None:
    defaults = GenerationDefaults(repetition_penalty=100.0)
    plan = resolve_sampling(SamplingParams(), defaults)
    assert plan.repetition_penalty == 100.0 and plan.greedy
    logits = np.array([5.0, 4.0, 3.0, 2.0], np.float32)
    sampler = Sampler(plan, 4, seed=0, prompt_ids=[0])
    assert [sampler.pick(logits).token_id for _ in range(3)] == [1, 2, 3]  # 0 from the prompt, then each once
    off = resolve_sampling(SamplingParams(repetition_penalty=1.0), defaults)
    assert Sampler(off, 4, seed=0, prompt_ids=[0]).pick(logits).token_id == 0
