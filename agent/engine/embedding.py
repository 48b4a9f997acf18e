"""Embedding models: a feature-extraction ONNX graph, run in padded batches and pooled per its files.

``load_embedding_model(folder, quantization=..., device=...)`` returns an ``OnnxEmbeddingModel``
whose ``embed`` turns texts (or token-id lists) into vectors. What a caller may rely on:

- The graph is what optimum / Transformers.js export for ``feature-extraction`` (BERT, XLM-R,
  ModernBERT, NomicBERT…: ``input_ids``, ``attention_mask``, optionally ``token_type_ids``, giving
  ``last_hidden_state``) or for a decoder used as an embedder (Qwen3-Embedding style: also
  ``position_ids`` and empty ``past_key_values.*``), or a sentence-transformers export whose graph
  pools itself (``sentence_embedding`` output). Any other input is a ``ModelLoadError`` at load.
- Inputs are tokenized with the model's ``tokenizer.json`` (special tokens added, no truncation or
  padding from the file), sorted by length and run in batches of at most ``MAX_BATCH_SIZE`` inputs
  and ``MAX_BATCH_TOKENS`` padded tokens, padded on the right with an attention mask: an input's
  vector does not depend on what it was batched with (beyond float rounding).
- Pooling and normalisation follow ``agent.engine.embedding_config``; ``dimensions`` shortens the
  vectors (first components, renormalised when the model normalises) only for models that declare
  Matryoshka training, else it must equal the native size (``EmbeddingRequestError`` otherwise).
- An input longer than ``info.context_length`` tokens is refused (``EmbeddingRequestError``,
  ``param`` ``input``) unless ``truncate``: then it is cut as the tokenizer would (special tokens kept).
- ``embed`` checks ``cancel`` between batches. One ``embed`` at a time per model (the pool's turn).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from agent.engine.embedding_config import EmbeddingConfig, read_embedding_config
from agent.engine.model_files import onnx_path
from agent.engine.session import CPU, open_session
from agent.engine.types import (
    EmbeddingRequestError,
    InvalidRequestError,
    ModelInfo,
    ModelLoadError,
    SamplingParams,
    Step,
)
from agent.hardware import resolve_device
from agent.variants import InvalidNameError, normalize_device

MAX_BATCH_SIZE = 32
MAX_BATCH_TOKENS = 8192
"""Padded tokens per run: activations grow with batch × length (and attention with length²)."""
MAX_INPUTS = 2048
"""Most inputs one request may embed (OpenAI's limit)."""
POOLED_OUTPUT = "sentence_embedding"
TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings", "hidden_states")
_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One vector per input, in input order, and the tokens that were run."""

    vectors: np.ndarray
    """``(inputs, dimensions)`` float32."""
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class _Input:
    """One graph input and how to fill it for a batch."""

    name: str
    role: str  # input_ids | attention_mask | token_type_ids | position_ids | past
    dtype: Any
    shape: tuple[int, ...] = ()
    """For ``past``: the per-row shape after the batch dimension, past length 0."""


def _past_shape(name: str, shape: Sequence[Any], config: dict[str, Any]) -> tuple[int, ...]:
    """``(heads, 0, head_dim)`` of an empty cache input, from the graph's static dims or config.json."""
    heads = config.get("num_key_value_heads") or config.get("num_attention_heads")
    head_dim = config.get("head_dim")
    if not isinstance(head_dim, int) and isinstance(config.get("hidden_size"), int) and isinstance(
            config.get("num_attention_heads"), int):
        head_dim = config["hidden_size"] // config["num_attention_heads"]
    if len(shape) != 4:
        raise ModelLoadError(f"cache input {name} has {len(shape)} dimensions, not 4")
    dims = []
    for index, fallback in ((1, heads), (2, 0), (3, head_dim)):
        value = shape[index] if isinstance(shape[index], int) and index != 2 else fallback
        if not isinstance(value, int) or value < 0:
            raise ModelLoadError(f"cannot tell the shape of cache input {name} (config.json lacks its sizes)")
        dims.append(value)
    return tuple(dims)


def _graph_inputs(session: ort.InferenceSession, config: dict[str, Any], graph: Path) -> list[_Input]:
    found: list[_Input] = []
    for node in session.get_inputs():
        name, kind = node.name, node.type
        if name in ("input_ids", "attention_mask", "token_type_ids", "position_ids"):
            if kind not in _INT_TYPES:
                raise ModelLoadError(f"{graph.name}: input {name} is {kind}, not an integer tensor")
            found.append(_Input(name, name, _INT_TYPES[kind]))
        elif name.startswith(("past_key_values.", "past_")):
            if kind not in _FLOAT_TYPES:
                raise ModelLoadError(f"{graph.name}: cache input {name} is {kind}")
            found.append(_Input(name, "past", _FLOAT_TYPES[kind], _past_shape(name, node.shape, config)))
        else:
            raise ModelLoadError(f"{graph.name}: input {name!r} is not one an embedding graph is fed "
                                 "(input_ids, attention_mask, token_type_ids, position_ids, past_key_values.*)")
    if not any(i.role == "input_ids" for i in found):
        raise ModelLoadError(f"{graph.name} has no input_ids input")
    return found


def _graph_output(session: ort.InferenceSession, graph: Path) -> tuple[str, bool]:
    """The output to read and whether it is already pooled (``sentence_embedding``)."""
    outputs = {o.name: o for o in session.get_outputs()}
    if POOLED_OUTPUT in outputs:
        return POOLED_OUTPUT, True
    for name in TOKEN_OUTPUTS:
        if name in outputs:
            return name, False
    for name, node in outputs.items():
        if len(node.shape) == 3 and name != "logits" and not name.startswith("present"):
            return name, False
    raise ModelLoadError(f"{graph.name} outputs {', '.join(outputs)}: no token states (last_hidden_state) or "
                         "sentence_embedding, so it is no feature-extraction export (a text-generation graph?)")


def pool(states: np.ndarray, mask: np.ndarray, modes: Sequence[str], skip: np.ndarray | None = None) -> np.ndarray:
    """One vector per row of ``states`` ``(batch, tokens, hidden)``: each mode over the tokens where
    ``mask`` is 1 (``skip[i]`` leading tokens of row ``i`` left out: an excluded prompt), the
    modes concatenated. ``lasttoken`` is the last token the mask keeps (right padding)."""
    states = states.astype(np.float32, copy=False)
    weights = mask.astype(np.float32)
    if skip is not None and skip.any():
        weights = weights * (np.arange(mask.shape[1])[None, :] >= skip[:, None])
    expanded = weights[:, :, None]
    count = np.maximum(expanded.sum(axis=1), 1e-9)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(states[:, 0])
        elif mode == "max":
            parts.append(np.where(expanded > 0, states, np.float32(-1e9)).max(axis=1))
        elif mode == "mean":
            parts.append((states * expanded).sum(axis=1) / count)
        elif mode == "mean_sqrt_len":
            parts.append((states * expanded).sum(axis=1) / np.sqrt(count))
        elif mode == "weightedmean":
            position = (np.arange(1, mask.shape[1] + 1, dtype=np.float32)[None, :, None]) * expanded
            parts.append((states * position).sum(axis=1) / np.maximum(position.sum(axis=1), 1e-9))
        elif mode == "lasttoken":
            last = np.maximum(mask.astype(np.int64).sum(axis=1) - 1, 0)
            parts.append(states[np.arange(states.shape[0]), last])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (rows of norm below 1e-12 are divided by 1e-12)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _batches(lengths: Sequence[int]) -> Iterator[list[int]]:
    """Input indices in runs: longest first, each run within the size and padded-token budgets."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for index in order:
        longest = lengths[batch[0]] if batch else lengths[index]
        if batch and (len(batch) >= MAX_BATCH_SIZE or (len(batch) + 1) * longest > MAX_BATCH_TOKENS):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


class OnnxEmbeddingModel:
    """A loaded embedding model (``kind`` ``embed``). It satisfies ``LoadedModel`` so the pool can
    hold it, but cannot generate: ``encode_chat``, ``encode_text`` and ``generate`` raise."""

    kind = "embed"

    def __init__(self, *, info: ModelInfo, config: EmbeddingConfig, tokenizer: Tokenizer, session: ort.InferenceSession,
                 inputs: list[_Input], output: str, pooled: bool, pad_id: int) -> None:
        self.info = info
        self.config = config
        self._tokenizer = tokenizer
        self._truncating = Tokenizer.from_str(tokenizer.to_str())
        self._truncating.enable_truncation(info.context_length)
        self._session: ort.InferenceSession | None = session
        self._inputs = inputs
        self._output = output
        self.pooled_by_graph = pooled
        self._pad_id = pad_id
        prompt_ids = tokenizer.encode(config.prompt).ids if config.prompt else []
        # sentence-transformers counts a prompt's tokens without its trailing special token
        self._prompt_tokens = max(len(prompt_ids) - 1, 0) if config.prompt and not config.include_prompt else 0
        self.dimensions = int(self._run([tokenizer.encode("hello").ids], [0]).shape[1])
        """The size of this model's vectors (what ``dimensions`` may shorten)."""

    # -- the public surface -------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], *, truncate: bool = False) -> list[list[int]]:
        """Token ids of each text as ``embed`` runs it (prompt, lower-casing and special tokens applied)."""
        prepared = [self.config.prompt + t for t in texts]
        if self.config.lowercase:
            prepared = [t.lower() for t in prepared]
        tokenizer = self._truncating if truncate else self._tokenizer
        return [list(e.ids) for e in tokenizer.encode_batch(prepared, add_special_tokens=True)]

    def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]], *, dimensions: int | None = None,
              truncate: bool = False, cancel: threading.Event | None = None) -> Embeddings:
        """One vector per input (texts, or token-id lists fed as given); see the module docstring.
        Raises ``EmbeddingRequestError`` before any work for a request it cannot serve."""
        if self._session is None:
            raise InvalidRequestError("the model has been closed")
        self._check_dimensions(dimensions)
        if not inputs:
            raise EmbeddingRequestError("input is empty: send a string or a list of strings")
        if len(inputs) > MAX_INPUTS:
            raise EmbeddingRequestError(f"input has {len(inputs)} items; at most {MAX_INPUTS} may be embedded at once")
        texts = [i for i in inputs if isinstance(i, str)]
        all_text = len(texts) == len(inputs)
        if all_text:
            empty = [n for n, text in enumerate(texts) if not text]
            if empty:
                raise EmbeddingRequestError(f"input[{empty[0]}] is an empty string")
            sequences = self.tokenize(texts, truncate=truncate)
        else:
            sequences = [self._check_ids(n, ids, truncate) for n, ids in enumerate(inputs)]
        limit = self.info.context_length
        for n, ids in enumerate(sequences):
            if len(ids) > limit:
                raise EmbeddingRequestError(f"input[{n}] has {len(ids)} tokens; this model embeds at most {limit} "
                                            "(send \"truncate\": true to embed its first tokens)",
                                            code="context_length_exceeded")
        skip = self._prompt_tokens if all_text else 0
        vectors = np.empty((len(sequences), self.dimensions), np.float32)
        for batch in _batches([len(s) for s in sequences]):
            if cancel is not None and cancel.is_set():
                raise InvalidRequestError("cancelled")
            vectors[batch] = self._run([sequences[i] for i in batch], [skip] * len(batch))
        if dimensions is not None and dimensions < self.dimensions:
            vectors = vectors[:, :dimensions]
            if self.config.normalize:
                vectors = normalized(vectors)
        return Embeddings(np.ascontiguousarray(vectors), sum(len(s) for s in sequences))

    def close(self) -> None:
        """Drop the session; onnxruntime frees its memory when the last reference goes."""
        self._session = None

    def encode_chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                    add_generation_prompt: bool = True) -> list[int]:
        raise InvalidRequestError(f"{self.info.path.name} is an embedding model: it cannot chat")

    def encode_text(self, text: str) -> list[int]:
        raise InvalidRequestError(f"{self.info.path.name} is an embedding model: it cannot complete text")

    def generate(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[Step]:
        raise InvalidRequestError(f"{self.info.path.name} is an embedding model: it cannot generate text")

    # -- internals ----------------------------------------------------------------------------

    def _check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None or dimensions == self.dimensions:
            return
        native, allowed = self.dimensions, self.config.matryoshka
        if dimensions < 1 or dimensions > native:
            raise EmbeddingRequestError(f"dimensions must be between 1 and {native} for this model", "dimensions")
        if allowed is False:
            raise EmbeddingRequestError(
                f"this model's vectors have {native} dimensions and it does not declare Matryoshka training "
                "(config.json is_matryoshka / matryoshka_dimensions), so they cannot be shortened", "dimensions")
        if isinstance(allowed, tuple) and dimensions not in allowed:
            sizes = ", ".join(str(d) for d in allowed)
            raise EmbeddingRequestError(f"this model was trained for dimensions {sizes} (or {native})", "dimensions")

    def _check_ids(self, n: int, ids: Sequence[object], truncate: bool) -> list[int]:
        vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        if not ids:
            raise EmbeddingRequestError(f"input[{n}] is an empty list of token ids")
        bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocab]
        if bad:
            raise EmbeddingRequestError(f"input[{n}] has token ids outside the vocabulary (0..{vocab - 1}): {bad[:5]}")
        valid = [i for i in ids if isinstance(i, int)]  # all of them, as just checked
        return valid[: self.info.context_length] if truncate else valid

    def _run(self, sequences: list[list[int]], skip: list[int]) -> np.ndarray:
        """Pooled (and normalised) vectors of one padded batch."""
        session = self._session
        assert session is not None
        rows, width = len(sequences), max(len(s) for s in sequences)
        mask = np.zeros((rows, width), np.int64)
        ids = np.full((rows, width), self._pad_id, np.int64)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feeds: dict[str, np.ndarray] = {}
        for node in self._inputs:
            if node.role == "input_ids":
                feeds[node.name] = ids.astype(node.dtype, copy=False)
            elif node.role == "attention_mask":
                feeds[node.name] = mask.astype(node.dtype, copy=False)
            elif node.role == "token_type_ids":
                feeds[node.name] = np.zeros((rows, width), node.dtype)
            elif node.role == "position_ids":
                feeds[node.name] = np.broadcast_to(np.arange(width, dtype=node.dtype), (rows, width)).copy()
            else:
                feeds[node.name] = np.zeros((rows, *node.shape), node.dtype)
        (out,) = session.run([self._output], feeds)
        if self.pooled_by_graph:
            vectors = np.asarray(out, np.float32).reshape(rows, -1)
        else:
            vectors = pool(np.asarray(out), mask, self.config.pooling, np.asarray(skip))
        return normalized(vectors) if self.config.normalize else vectors.astype(np.float32, copy=False)


def load_embedding_model(path: Path, *, quantization: str, device: str, threads: int = 0) -> OnnxEmbeddingModel:
    """Load the embedding model in ``path`` for ``quantization`` on ``device``. Raises
    ``ModelLoadError`` naming the file or graph input at fault; a device that cannot be used falls
    back to the CPU and says why in ``info.fallback_reason``."""
    started = time.perf_counter()
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} does not exist")
    graph = onnx_path(folder, quantization)
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelLoadError(f"missing tokenizer.json in {folder}")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises plain Exception on a bad file
        raise ModelLoadError(f"cannot read tokenizer.json: {exc}") from exc
    tokenizer.no_truncation()
    tokenizer.no_padding()
    try:
        raw_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read config.json in {folder}: {exc}") from exc
    try:
        chosen, providers, why = resolve_device(device, list(ort.get_available_providers()))
        fallback = why if chosen == "cpu" and normalize_device(device) not in ("cpu", "auto") else None
    except InvalidNameError as exc:
        raise ModelLoadError(str(exc)) from None
    session = open_session(graph, providers, threads)
    used = session.get_providers()[0] if session.get_providers() else CPU
    if used != providers[0]:
        fallback = f"{providers[0]} could not be initialised; using {used}"
    inputs = _graph_inputs(session, raw_config if isinstance(raw_config, dict) else {}, graph)
    output, pooled = _graph_output(session, graph)
    config = read_embedding_config(folder, graph_pools=pooled)
    pad = raw_config.get("pad_token_id") if isinstance(raw_config, dict) else None
    info = ModelInfo(
        path=folder, context_length=config.max_length, provider=used, requested_device=device,
        fallback_reason=fallback, load_s=0.0, quantization=quantization, onnx_file=graph, kv_cache=False,
        chat_template="none", vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
    )
    try:
        model = OnnxEmbeddingModel(info=info, config=config, tokenizer=tokenizer, session=session, inputs=inputs,
                                   output=output, pooled=pooled, pad_id=pad if isinstance(pad, int) and pad >= 0 else 0)
    except ModelLoadError:
        raise
    except Exception as exc:  # the first run (a warm-up that also finds the vector size) failed
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{graph.name} failed on a first input: {detail}") from exc
    model.info = replace(info, load_s=time.perf_counter() - started)
    return model
