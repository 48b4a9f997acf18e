"""The decode loop: prefill once, then one token per step, yielding ``Step``s.

Every generated token yields one ``Step`` (its ``text`` may be empty while a character or a
possible stop string is held back). The last step carries the ``finish_reason``:

* ``stop`` — an eos token (not included in ``tokens`` nor in the text) or a stop string (its tokens
  are included in ``tokens``; the text ends exactly before the stop string);
* ``length`` — ``max_tokens`` or the end of the context was reached; that step carries the last token;
* ``stop`` also when a constraint's grammar is complete (a JSON value closed, a tool call ended);
* ``cancelled`` — ``cancel`` was set; checked before every model run (also between prefill chunks),
  so at most one more token is computed after it is set. That step has no tokens.

The concatenation of all ``Step.text`` is the decoded completion (special tokens skipped, cut at a
stop string).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from agent.engine.constrain import Constraint
from agent.engine.detokenize import IncrementalDetokenizer, StopMatcher
from agent.engine.sampling import Pick, Sampler, SamplingPlan
from agent.engine.session import Runner
from agent.engine.tokenizer import ModelTokenizer
from agent.engine.types import Step, TokenChoice, TokenLogprob


@dataclass(slots=True)
class DecodeStats:
    """Timings of the last generation, for logs and benchmarks (seconds, tokens). ``decode_s`` is
    wall time from the first sampled token to the last, including time the consumer spent between
    steps; ``generated_tokens`` counts an eos token too."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    """Prompt tokens whose KV cache was kept from the previous generation (not recomputed)."""
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        steps = self.generated_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0


def _choice(tokenizer: ModelTokenizer, pick: Pick, plan: SamplingPlan) -> TokenChoice:
    top = [
        TokenLogprob(tokenizer.token_text(i), lp, list(tokenizer.token_bytes(i)))
        for i, lp in pick.top
    ] if plan.logprobs else []
    return TokenChoice(
        token_id=pick.token_id,
        token=tokenizer.token_text(pick.token_id),
        logprob=pick.logprob,
        bytes=list(tokenizer.token_bytes(pick.token_id)),
        top=top,
    )


def run_decode(
    *,
    runner: Runner,
    tokenizer: ModelTokenizer,
    prompt_ids: list[int],
    sampler: Sampler,
    max_new_tokens: int,
    stops: list[str],
    eos_ids: frozenset[int],
    vocab_limit: int,
    cancel: threading.Event,
    stats: DecodeStats,
    constraint: Constraint | None = None,
) -> Generator[Step, None, None]:
    """Generate up to ``max_new_tokens`` (≥ 1) tokens after ``prompt_ids`` (already validated);
    with a ``constraint``, only tokens its grammar allows (see ``agent.engine.constrain``)."""

    detok = IncrementalDetokenizer(tokenizer.decode, prompt_ids)
    matcher = StopMatcher(stops)
    stats.prompt_tokens = len(prompt_ids)

    def finish(reason: str, tokens: list[TokenChoice], released: str = "") -> Step:
        """The last step: ``released`` text plus whatever the detokenizer and matcher still hold."""
        tail, stopped = matcher.push(detok.flush())
        if stopped:
            return Step(released + tail, tokens, "stop")
        return Step(released + tail + matcher.flush(), tokens, reason)

    started = time.perf_counter()
    reused = runner.begin(prompt_ids)
    stats.reused_tokens = reused
    logits: np.ndarray | None = None
    for start in range(reused, len(prompt_ids), runner.max_chunk):
        if cancel.is_set():
            yield finish("cancelled", [])
            return
        logits = runner.forward(prompt_ids[start : start + runner.max_chunk])
    assert logits is not None
    decode_started = time.perf_counter()
    stats.prefill_s = decode_started - started

    produced = 0
    while produced < max_new_tokens:
        if cancel.is_set():
            yield finish("cancelled", [])
            return
        row = logits[:vocab_limit] if logits.shape[0] > vocab_limit else logits
        if constraint is not None:
            if constraint.failed:
                stats.decode_s = time.perf_counter() - decode_started
                yield finish("stop", [])
                return
            row = constraint.mask(row)
        pick = sampler.pick(row)
        produced += 1
        stats.generated_tokens = produced
        if pick.token_id in eos_ids:
            stats.decode_s = time.perf_counter() - decode_started
            yield finish("stop", [])
            return
        picks = [pick]
        if constraint is not None:
            constraint.accept(pick.token_id)
            if not sampler.plan.logprobs and not constraint.done:
                # tokens the grammar leaves no choice about go in without sampling, in one model run
                forced = constraint.forced()[: max_new_tokens - produced]
                picks += [sampler.forced(token) for token in forced]
                produced += len(forced)
                stats.generated_tokens = produced
        for i, chosen in enumerate(picks):
            choice = _choice(tokenizer, chosen, sampler.plan)
            text, stopped = matcher.push(detok.push(chosen.token_id))
            if stopped:
                stats.decode_s = time.perf_counter() - decode_started
                yield Step(text, [choice], "stop")
                return
            last = i == len(picks) - 1
            if last and constraint is not None and constraint.done:
                # the grammar is complete: nothing but the end of the answer may follow
                stats.decode_s = time.perf_counter() - decode_started
                yield finish("stop", [choice], text)
                return
            if last and produced >= max_new_tokens:
                stats.decode_s = time.perf_counter() - decode_started
                yield finish("length", [choice], text)
                return
            yield Step(text, [choice])
        if cancel.is_set():
            yield finish("cancelled", [])
            return
        logits = runner.forward([p.token_id for p in picks])
