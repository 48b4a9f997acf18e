"""The onnxruntime session of a decoder and the runners that feed it one sequence at a time.

A runner owns the KV cache of the sequence being decoded. ``begin(prompt)`` starts a sequence
(reusing what the cache holds of it), ``forward(ids)`` appends tokens and returns the logits of the
last one; ``reset()`` forgets the sequence. The cached runner keeps the
``present.*`` outputs as ``OrtValue``s bound straight back as the next ``past_key_values.*`` through
an I/O binding, so the cache is never copied through numpy and stays on the accelerator when there
is one (on the CPU, ``run_with_ort_values`` does the same with less overhead). A later runner may
preallocate fixed KV buffers (fused GroupQueryAttention graphs) behind
the same methods. ``begin(prompt)`` keeps the cache of a shared prefix between generations; that
bookkeeping and the prefill chunk size are in ``agent.engine.runner_base``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import _pybind_state as ort_c

from agent.engine.contract import KV_BUFFER_METADATA, KV_BUFFER_SHARED, LOGITS_TO_KEEP_NAMES, GraphContract
from agent.engine.runner_base import CacheRunner, keep_one, last_logits
from agent.engine.types import ModelLoadError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def open_session(path: Path, providers: list[str], threads: int) -> ort.InferenceSession:
    """An ``InferenceSession`` for ``path`` with all graph optimizations; ``threads`` = 0 keeps
    onnxruntime's default intra-op thread count. Failure → ``ModelLoadError`` naming the file."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Shapes change every step (the cache grows), so memory patterns would only be recomputed.
    options.enable_mem_pattern = False
    # Weights go to plain allocations, not the arena, so the arena only holds activations.
    options.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    options.log_severity_level = 3
    # transformers' logits_to_keep, when a graph has it as an initializer-backed input (default 0 =
    # every position): the engine only ever wants the last position, and an I/O binding cannot feed
    # initializer-backed inputs, so the session gets 1 as its value. A required input of that name
    # is unaffected (onnxruntime ignores the override), and graphs without it are unchanged.
    keep = ort.OrtValue.ortvalue_from_numpy(np.ones(1, np.int64))
    for name in LOGITS_TO_KEEP_NAMES:
        options.add_initializer(name, keep)
    provider_options: list[dict[str, str]] = []
    for provider in providers:
        if provider == CUDA:
            provider_options.append({"arena_extend_strategy": "kSameAsRequested"})
        else:
            provider_options.append({})
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=providers, provider_options=provider_options
        )
        session._hflocal_keep = keep  # must outlive the session
        return session
    except Exception as exc:  # onnxruntime raises its own pybind classes, not one base
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load {path.name}: {detail}") from exc


class DecoderRunner(Protocol):
    """Feeds one sequence through the graph. Not thread-safe; one sequence at a time."""

    max_chunk: int
    """Most tokens one ``forward`` call should be given (the caller chunks long prompts)."""

    def reset(self) -> None:
        """Forget the sequence (and its cache)."""

    def begin(self, prompt: Sequence[int]) -> int:
        """Start a new sequence for ``prompt``; return how many of its first tokens are already
        in the cache (always fewer than ``len(prompt)``). Feed the rest with ``forward``."""

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        """Append ``ids`` to the sequence; return the float32 logits (vocab,) after the last one."""


class CachedRunner(CacheRunner):
    """Runner for graphs with ``past_key_values`` inputs; the cache stays in ``OrtValue``s."""

    def __init__(
        self,
        session: ort.InferenceSession,
        contract: GraphContract,
        context_length: int,
        *,
        use_binding: bool | None = None,
    ) -> None:
        """``use_binding``: feed the cache through an I/O binding (default: only on CUDA, where it
        keeps the cache on the GPU); otherwise ``run_with_ort_values``."""
        super().__init__(session, contract, context_length)
        provider = session.get_providers()[0]
        # DirectML outputs could stay on the device too; binding them there is untested, so they
        # come back to the CPU, which is correct but slower.
        self._kv_device = "cuda" if provider == CUDA else "cpu"
        # The CPU path calls the C session directly: the public wrapper validates and wraps every
        # one of the 2 x layers cache values on each call, which cost ~0.1-0.5 ms per token.
        # If a future onnxruntime changes these internals, the public I/O binding path is used.
        self._raw = getattr(session, "_sess", None)
        try:
            self._cpu = ort_c.OrtDevice(ort_c.OrtDevice.cpu(), ort_c.OrtDevice.default_memory(), 0)
            raw_ok = hasattr(self._raw, "run_with_ort_values") and hasattr(ort_c.OrtValue, "ortvalue_from_numpy")
        except (AttributeError, TypeError):
            raw_ok = False
        self._use_binding = (self._kv_device != "cpu" or not raw_ok) if use_binding is None else use_binding
        self._arrays: list[np.ndarray] = []
        """numpy buffers behind cache values made here (C OrtValues do not keep them alive)."""
        self._output_names = [contract.logits_name, *(spec.output_name for spec in contract.kv)]
        self._empty = {
            spec.input_name: np.zeros((1, spec.num_heads, 0, spec.head_dim), dtype=spec.dtype)
            for spec in contract.kv
        }
        self._past: list[Any] = []

    def reset(self) -> None:
        self._past = []
        self._arrays = []
        self._tokens = []
        self.past_length = 0

    def _value(self, array: np.ndarray) -> Any:
        """An OrtValue over ``array`` of the kind this runner's path feeds (no copy)."""
        if self._use_binding:
            return ort.OrtValue.ortvalue_from_numpy(array)
        return ort_c.OrtValue.ortvalue_from_numpy(array, self._cpu)

    def begin(self, prompt: Sequence[int]) -> int:
        """Keep the cache of the longest common prefix of the cached tokens and ``prompt`` (at most
        ``len(prompt) - 1``: the last prompt token must be run for its logits). Multi-turn chats
        thus re-run only the new turn. A cache on an accelerator is kept only when the prompt
        extends it; cutting it back happens on the CPU only."""
        common = self._shared_prefix(prompt)
        if common == len(self._tokens):
            return common
        if common == 0 or self._kv_device != "cpu":
            self.reset()
            return 0
        self._arrays = [np.ascontiguousarray(value.numpy()[:, :, :common, :]) for value in self._past]
        self._past = [self._value(array) for array in self._arrays]
        del self._tokens[common:]
        self.past_length = common
        return common

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        contract = self._contract
        past = self.past_length
        total = past + len(ids)
        if total > self._mask.shape[1]:
            raise RuntimeError(f"sequence of {total} tokens exceeds the context of {self._mask.shape[1]}")
        small: dict[str, np.ndarray] = {
            "input_ids": np.asarray(ids, dtype=contract.input_ids_dtype).reshape(1, len(ids)),
            "attention_mask": self._mask[:, :total],
        }
        if contract.position_ids_dtype is not None:
            small["position_ids"] = self._positions[:, past:total]
        if contract.logits_to_keep is not None:
            small[contract.logits_to_keep[0]] = self._keep
        if self._use_binding:
            logits, present = self._run_bound(small)
        else:
            logits, present = self._run_on_cpu(small)
        self._past = present
        self._arrays = []
        self._tokens.extend(int(i) for i in ids)
        self.past_length = total
        return last_logits(logits)

    def _run_on_cpu(self, small: dict[str, np.ndarray]) -> tuple[np.ndarray, list[Any]]:
        """``run_with_ort_values`` on the C session: the cache goes back in as the OrtValues that
        came out (no numpy round trip, no per-value wrappers)."""
        assert self._raw is not None
        feeds = {name: self._value(value) for name, value in small.items()}
        if self._past:
            past = self._past
        else:
            past = [self._value(self._empty[spec.input_name]) for spec in self._contract.kv]
        for spec, value in zip(self._contract.kv, past, strict=True):
            feeds[spec.input_name] = value
        outputs = self._raw.run_with_ort_values(feeds, self._output_names, None)
        return outputs[0].numpy(), [outputs[i] for i in range(1, len(outputs))]

    def _run_bound(self, small: dict[str, np.ndarray]) -> tuple[np.ndarray, list[Any]]:
        """I/O binding: ``present.*`` are allocated on the accelerator and bound back as the next
        ``past_key_values.*``, so the cache never crosses to the host; only the logits do."""
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, value in small.items():
            binding.bind_cpu_input(name, value)
        if self._past:
            for spec, value in zip(self._contract.kv, self._past, strict=True):
                binding.bind_ortvalue_input(spec.input_name, value)
        else:
            for spec in self._contract.kv:
                binding.bind_cpu_input(spec.input_name, self._empty[spec.input_name])
        binding.bind_output(self._contract.logits_name, "cpu")
        for spec in self._contract.kv:
            binding.bind_output(spec.output_name, self._kv_device)
        self._session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), list(outputs[1:])


KV_BUFFER_STEP = 256
"""The preallocated cache grows in whole multiples of this many positions (at least doubling)."""


class KVBufferRunner(CacheRunner):
    """Runner for graphs that update their cache in place (:data:`KV_BUFFER_METADATA`).

    Each layer's key and value live in one preallocated ``[1, heads, capacity, head_dim]`` buffer,
    bound through an I/O binding as both the past input and the present output, so a step writes
    only its new positions: nothing is concatenated or copied, and memory holds one cache, not the
    old and the new one side by side. The buffers grow (copying once) when a sequence outgrows them,
    up to the context length; cutting the sequence back to a shared prefix costs nothing.
    """

    def __init__(self, session: ort.InferenceSession, contract: GraphContract, context_length: int) -> None:
        super().__init__(session, contract, context_length)
        self._context = context_length
        # An initializer-backed logits_to_keep already holds 1 (see open_session) and cannot be
        # bound; only a required input of that name is fed.
        keep_name = contract.logits_to_keep[0] if contract.logits_to_keep is not None else None
        self._keep_input = keep_name if keep_name in {i.name for i in session.get_inputs()} else None
        """The ``logits_to_keep`` input to feed on every step, or ``None``."""
        self._buffers: list[np.ndarray] = []
        width = next((o.shape[-1] for o in session.get_outputs() if o.name == contract.logits_name), None)
        self._logits = np.zeros((1, 1, width), np.float32) if isinstance(width, int) and width > 0 else None
        """Where the last position's logits land (the graph keeps one position), when the width is
        known; otherwise onnxruntime allocates them on every step."""

    @property
    def capacity(self) -> int:
        """Positions the buffers hold now (0 before the first forward)."""
        return int(self._buffers[0].shape[2]) if self._buffers else 0

    def reset(self) -> None:
        """Forget the sequence and give the buffers' memory back."""
        self._buffers = []
        self._tokens = []
        self.past_length = 0
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()

    def begin(self, prompt: Sequence[int]) -> int:
        common = self._shared_prefix(prompt)
        del self._tokens[common:]  # positions past ``common`` are simply overwritten later
        self.past_length = common
        return common

    def _grow(self, needed: int) -> None:
        """Make room for ``needed`` positions, keeping the ``past_length`` already cached."""
        if needed > self._context:
            raise RuntimeError(f"sequence of {needed} tokens exceeds the context of {self._context}")
        if needed <= self.capacity:
            return
        size = max(needed, 2 * self.capacity)
        size = min(self._context, -(-size // KV_BUFFER_STEP) * KV_BUFFER_STEP)
        old, keep = self._buffers, self.past_length
        self._buffers = []
        binding = self._binding
        for i, spec in enumerate(self._contract.kv):
            buffer = np.zeros((1, spec.num_heads, size, spec.head_dim), dtype=spec.dtype)
            if old and keep:
                buffer[:, :, :keep] = old[i][:, :, :keep]
            self._buffers.append(buffer)
            value = ort.OrtValue.ortvalue_from_numpy(buffer)
            binding.bind_ortvalue_input(spec.input_name, value)
            binding.bind_ortvalue_output(spec.output_name, value)
        if self._logits is not None:
            binding.bind_ortvalue_output(self._contract.logits_name, ort.OrtValue.ortvalue_from_numpy(self._logits))
        else:
            binding.bind_output(self._contract.logits_name, "cpu")

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        contract, past = self._contract, self.past_length
        total = past + len(ids)
        self._grow(total)
        binding = self._binding
        tokens = np.asarray(ids, dtype=contract.input_ids_dtype).reshape(1, len(ids))
        binding.bind_cpu_input("input_ids", tokens)
        binding.bind_cpu_input("attention_mask", self._mask[:, :total])
        if contract.position_ids_dtype is not None:
            binding.bind_cpu_input("position_ids", self._positions[:, past:total])
        if self._keep_input is not None:
            binding.bind_cpu_input(self._keep_input, self._keep)
        self._session.run_with_iobinding(binding)
        self._tokens.extend(int(i) for i in ids)
        self.past_length = total
        if self._logits is not None:
            return self._logits[0, -1].copy()  # the buffer is overwritten by the next step
        return last_logits(binding.get_outputs()[-1].numpy())


class UncachedRunner:
    """Runner for graphs without a cache: every call re-runs the whole sequence."""

    def __init__(self, session: ort.InferenceSession, contract: GraphContract, context_length: int) -> None:
        self._session = session
        self._contract = contract
        self._ids: list[int] = []
        self.max_chunk = context_length

    def set_vocab(self, vocab: int) -> None:
        """Chunking cannot help without a cache: the whole sequence is fed every time."""

    def reset(self) -> None:
        self._ids = []

    def begin(self, prompt: Sequence[int]) -> int:
        self.reset()
        return 0

    def forward(self, ids: Sequence[int]) -> np.ndarray:
        self._ids.extend(int(i) for i in ids)
        n = len(self._ids)
        contract = self._contract
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray(self._ids, dtype=contract.input_ids_dtype).reshape(1, n)
        }
        if contract.attention_mask_dtype is not None:
            feeds["attention_mask"] = np.ones((1, n), dtype=contract.attention_mask_dtype)
        if contract.position_ids_dtype is not None:
            feeds["position_ids"] = np.arange(n, dtype=contract.position_ids_dtype).reshape(1, n)
        if contract.logits_to_keep is not None:
            feeds[contract.logits_to_keep[0]] = keep_one(contract)
        (logits,) = self._session.run([contract.logits_name], feeds)
        return last_logits(logits)


Runner: TypeAlias = CachedRunner | KVBufferRunner | UncachedRunner


def shares_kv_buffer(session: ort.InferenceSession) -> bool:
    """The graph says it updates its cache in place, and runs on the CPU (where that is tested)."""
    metadata = session.get_modelmeta().custom_metadata_map
    return metadata.get(KV_BUFFER_METADATA) == KV_BUFFER_SHARED and session.get_providers()[0] == CPU


def make_runner(session: ort.InferenceSession, contract: GraphContract, context_length: int, vocab: int) -> Runner:
    runner: Runner
    if (contract.has_cache and contract.attention_mask_dtype is not None and contract.logits_to_keep
            and shares_kv_buffer(session)):
        runner = KVBufferRunner(session, contract, context_length)
    elif contract.has_cache:
        runner = CachedRunner(session, contract, context_length)
    else:
        runner = UncachedRunner(session, contract, context_length)
    runner.set_vocab(vocab)
    return runner
