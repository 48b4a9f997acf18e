"""What the decoder runners of ``agent.engine.session`` share: how many prompt tokens one run may
take, the small per-step inputs, and the token ids a cache holds (so a new sequence keeps the cache
of the prefix it shares with the last one). Kept apart from the runners so that each cache strategy
(``CachedRunner``, ``KVBufferRunner``) adds only its own way of feeding the cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from agent.engine.contract import GraphContract

PREFILL_CHUNK = 256
"""Most prompt tokens fed in one run: attention materialises (heads, chunk, total) scores and the
MLP (chunk, intermediate) activations, which the arena keeps. On SmolLM2-135M a 979-token prompt
peaks 32 MB lower with 256 than with 512 at the same time to first token (128: 10 MB less again,
but 8 % slower)."""
PREFILL_LOGITS_BUDGET = 16 * 1024 * 1024
"""Most logits (elements) one prefill chunk may produce: graphs without ``logits_to_keep`` return
logits for every position, so long prompts are fed in chunks of ``budget // vocab`` tokens."""


def prefill_chunk(contract: GraphContract, vocab: int) -> int:
    """Most prompt tokens per run: at most ``PREFILL_CHUNK`` (bounds attention scratch memory) and,
    unless the graph returns the last position only, logits within ``PREFILL_LOGITS_BUDGET``."""
    chunk = PREFILL_CHUNK
    if contract.logits_to_keep is None:
        chunk = min(chunk, PREFILL_LOGITS_BUDGET // max(vocab, 1))
    return max(16, chunk)


def keep_one(contract: GraphContract) -> np.ndarray:
    """The ``logits_to_keep`` value that asks for the last position only."""
    shape = contract.logits_to_keep[1] if contract.logits_to_keep else ()
    return np.ones(shape, dtype=np.int64)


def last_logits(logits: np.ndarray) -> np.ndarray:
    """The float32 logits of the last position of a ``(1, sequence, vocab)`` output."""
    if logits.ndim != 3:
        raise RuntimeError(f"logits have shape {logits.shape}, expected (batch, sequence, vocab)")
    return np.ascontiguousarray(logits[0, -1], dtype=np.float32)


class CacheRunner:
    """What both cached runners share: the small per-step inputs, the token ids in the cache, the
    prefill chunk size, and a failed step forgets the cache."""

    def __init__(self, session: ort.InferenceSession, contract: GraphContract, context_length: int) -> None:
        assert contract.attention_mask_dtype is not None
        self._session = session
        self._contract = contract
        self._binding = session.io_binding()
        self._mask = np.ones((1, context_length), dtype=contract.attention_mask_dtype)
        pos_dtype = contract.position_ids_dtype or np.int64
        self._positions = np.arange(context_length, dtype=pos_dtype).reshape(1, context_length)
        self._keep = keep_one(contract)
        self._tokens: list[int] = []
        """The token ids whose keys and values are in the cache."""
        self.past_length = 0
        self.max_chunk = context_length

    def set_vocab(self, vocab: int) -> None:
        self.max_chunk = prefill_chunk(self._contract, vocab)

    def reset(self) -> None:
        raise NotImplementedError

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def _shared_prefix(self, prompt: Sequence[int]) -> int:
        """How many first tokens of ``prompt`` the cache holds (at most ``len(prompt) - 1``: the last
        prompt token must be run for its logits)."""
        cached = self._tokens
        limit = min(len(cached), len(prompt) - 1)
        common = 0
        while common < limit and cached[common] == prompt[common]:
            common += 1
        return common

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        try:
            return self._forward(ids)
        except BaseException:
            self.reset()  # the cache no longer matches any known token sequence
            raise
