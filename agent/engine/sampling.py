"""Choosing the next token from logits: plain numpy functions plus a small per-request ``Sampler``.

Policy, in order: Hugging Face's repetition penalty (over prompt and generated tokens: a positive
logit is divided by it, a negative one multiplied; from generation_config.json unless the request
sets it) → presence/frequency penalties (OpenAI semantics, over the tokens generated so far, not the
prompt) → greedy argmax, or temperature → top-k → top-p (nucleus) → a draw from the
request's own ``numpy.random.Generator`` (seeded from ``seed``, so a seed repeats its text for the
same model, prompt and parameters).

Defaults come from generation_config.json when the request leaves a value ``None``. Decoding is
greedy when the effective temperature is 0, or when the request sets none of temperature / top_p /
top_k and generation_config does not ask for sampling (``do_sample`` false or absent, as in Hugging
Face). A request that sets any of them samples.

Logprobs are the log-softmax of the logits after the penalties, at temperature 1 and before top-k /
top-p truncation: the model's own distribution. They do not change with temperature (as OpenAI's do
not) and alternatives cut by top-k/top-p keep a finite logprob instead of ``-inf``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.engine.model_files import GenerationDefaults
from agent.engine.types import SamplingParams

MAX_TOP_LOGPROBS = 20
_GREEDY_BELOW = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingPlan:
    """Resolved sampling settings of one request (no ``None`` left)."""

    greedy: bool
    temperature: float
    top_k: int
    """0 = off."""
    top_p: float
    """1.0 = off."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    repetition_penalty: float = 1.0
    """1.0 = off."""


def resolve_sampling(params: SamplingParams, defaults: GenerationDefaults) -> SamplingPlan:
    """Merge the request's settings with the model's generation_config defaults."""
    temperature = params.temperature if params.temperature is not None else defaults.temperature
    top_p = params.top_p if params.top_p is not None else defaults.top_p
    top_k = params.top_k if params.top_k is not None else defaults.top_k
    asked = params.temperature is not None or params.top_p is not None or params.top_k is not None
    greedy = temperature < _GREEDY_BELOW or not (asked or defaults.do_sample)
    return SamplingPlan(
        greedy=greedy,
        temperature=max(float(temperature), _GREEDY_BELOW),
        top_k=max(int(top_k), 0),
        top_p=min(max(float(top_p), 0.0), 1.0),
        presence_penalty=float(params.presence_penalty),
        frequency_penalty=float(params.frequency_penalty),
        logprobs=bool(params.logprobs),
        top_logprobs=min(max(int(params.top_logprobs), 0), MAX_TOP_LOGPROBS) if params.logprobs else 0,
        repetition_penalty=float(
            params.repetition_penalty if params.repetition_penalty is not None else defaults.repetition_penalty
        ),
    )


def apply_penalties(logits: np.ndarray, counts: np.ndarray, presence: float, frequency: float) -> np.ndarray:
    """``logits - frequency * count - presence * (count > 0)`` as a new array (OpenAI's formula)."""
    return logits - (frequency * counts + presence * (counts > 0))


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Hugging Face's ``RepetitionPenaltyLogitsProcessor`` over the token ids ``seen`` (a new array)."""
    out = logits.copy()
    values = out[seen]
    out[seen] = np.where(values > 0, values / penalty, values * penalty)
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities (float32) of ``logits``; ``-inf`` logits stay ``-inf``."""
    shifted = logits.astype(np.float64) - np.max(logits)
    return (shifted - np.log(np.sum(np.exp(shifted)))).astype(np.float32)


def top_indices(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest values, largest first (ties: lower index first)."""
    n = min(n, values.size)
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if n < values.size:
        part = np.argpartition(values, values.size - n)[values.size - n:]
    else:
        part = np.arange(values.size)
    return part[np.lexsort((part, -values[part]))]


def nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest set of most likely tokens whose mass reaches ``top_p``, most likely
    first (always at least one). Sorts only as many candidates as needed: 64, then 4× more."""
    size = probs.size
    m = min(size, 64)
    while True:
        order = top_indices(probs, m)
        mass = np.cumsum(probs[order])
        if mass[-1] >= top_p or m == size:
            keep = int(np.searchsorted(mass, top_p)) + 1
            return order[: min(keep, m)]
        m = min(size, m * 4)


def sample_token(
    logits: np.ndarray, *, temperature: float, top_k: int, top_p: float, rng: np.random.Generator
) -> int:
    """Draw one token id from ``softmax(logits / temperature)`` restricted by top-k and top-p."""
    scaled = logits.astype(np.float64) / temperature
    size = scaled.size
    candidates: np.ndarray | None = None
    if 0 < top_k < size:
        candidates = np.argpartition(scaled, size - top_k)[size - top_k:]
        scaled = scaled[candidates]
    probs = np.exp(scaled - np.max(scaled))
    probs /= probs.sum()
    if top_p < 1.0:
        keep = nucleus(probs, top_p)
        candidates = keep if candidates is None else candidates[keep]
        probs = probs[keep]
    cumulative = np.cumsum(probs)
    pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    pick = min(pick, cumulative.size - 1)
    return int(candidates[pick]) if candidates is not None else pick


@dataclass(frozen=True, slots=True)
class Pick:
    token_id: int
    logprob: float
    """0.0 unless the plan asked for logprobs."""
    top: list[tuple[int, float]]
    """``(token_id, logprob)`` alternatives, most likely first (``plan.top_logprobs`` of them)."""


class Sampler:
    """The per-request state of sampling: the plan, the random generator and token counts."""

    def __init__(
        self, plan: SamplingPlan, vocab_size: int, seed: int | None, prompt_ids: list[int] | None = None
    ) -> None:
        self.plan = plan
        self.rng = np.random.default_rng(seed)
        self._seen: np.ndarray | None = None
        if plan.repetition_penalty != 1.0:
            self._seen_mask = np.zeros(vocab_size, dtype=bool)
            ids = np.asarray([i for i in prompt_ids or () if 0 <= i < vocab_size], dtype=np.int64)
            self._seen_mask[ids] = True
            self._seen = np.flatnonzero(self._seen_mask)
        penalized = plan.presence_penalty != 0.0 or plan.frequency_penalty != 0.0
        self._counts = np.zeros(vocab_size, dtype=np.float32) if penalized else None

    def forced(self, token: int) -> Pick:
        """Record a token that a grammar forced (no choice was made: its logprob is 0)."""
        if self._counts is not None:
            self._counts[token] += 1
        if self._seen is not None and not self._seen_mask[token]:
            self._seen_mask[token] = True
            self._seen = np.flatnonzero(self._seen_mask)
        return Pick(token, 0.0, [])

    def pick(self, logits: np.ndarray) -> Pick:
        """Choose the next token from the float32 ``logits`` of one position and record it."""
        plan = self.plan
        if self._seen is not None and self._seen.size:
            logits = apply_repetition_penalty(logits, self._seen, plan.repetition_penalty)
        if self._counts is not None:
            logits = apply_penalties(logits, self._counts, plan.presence_penalty, plan.frequency_penalty)
        if plan.greedy:
            token = int(np.argmax(logits))
        else:
            token = sample_token(
                logits, temperature=plan.temperature, top_k=plan.top_k, top_p=plan.top_p, rng=self.rng
            )
        logprob = 0.0
        top: list[tuple[int, float]] = []
        if plan.logprobs:
            logprobs = log_softmax(logits)
            logprob = float(logprobs[token])
            top = [(int(i), float(logprobs[i])) for i in top_indices(logprobs, plan.top_logprobs)]
        if self._counts is not None:
            self._counts[token] += 1
        if self._seen is not None and not self._seen_mask[token]:
            self._seen_mask[token] = True
            self._seen = np.flatnonzero(self._seen_mask)
        return Pick(token, logprob, top)
