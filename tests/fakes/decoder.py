"""A minimal numpy decode loop over an optimum-contract decoder (for tests and measurements only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class Decoder:
    """Feeds ``input_ids/attention_mask/position_ids/past_key_values.*`` and carries ``present.*``."""

    def __init__(self, model: Path | str, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.positions = any(i.name == "position_ids" for i in self.session.get_inputs())
        first = next(i for i in self.session.get_inputs() if i.name.startswith("past_key_values."))
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.kv_dtype = np.float16 if first.type == "tensor(float16)" else np.float32  # q4f16 / fp16-I/O graphs

    def empty_past(self, batch: int = 1) -> list[np.ndarray]:
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), self.kv_dtype) for _ in self.past_names]

    def step(
        self,
        ids: np.ndarray,
        past: list[np.ndarray] | None = None,
        attention_mask: np.ndarray | None = None,
        position_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One call: returns (logits [B, S, V], present) for ``ids`` [B, S] after ``past``."""
        ids = np.asarray(ids, np.int64)
        batch, seq = ids.shape
        past = past if past is not None else self.empty_past(batch)
        n_past = past[0].shape[2]
        if attention_mask is None:
            attention_mask = np.ones((batch, n_past + seq), np.int64)
        if position_ids is None:
            position_ids = np.broadcast_to(np.arange(n_past, n_past + seq), (batch, seq))
        feeds = {
            "input_ids": ids,
            "attention_mask": np.asarray(attention_mask, np.int64),
            "position_ids": np.ascontiguousarray(position_ids, np.int64),
            **dict(zip(self.past_names, past, strict=True)),
        }
        if not self.positions:  # Gemma's exports have no position_ids input
            del feeds["position_ids"]
        out = self.session.run(self.output_names, feeds)
        return out[0].astype(np.float32, copy=False), out[1:]

    def greedy(self, prompt: list[int], steps: int, eos: int | None = None) -> list[int]:
        """Greedy continuation with the KV cache carried between single-token steps."""
        logits, past = self.step(np.array([prompt]))
        tokens: list[int] = []
        for _ in range(steps):
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            if token == eos:
                break
            logits, past = self.step(np.array([[token]]), past)
        return tokens

    def teacher_forced_top1(self, ids: list[int]) -> np.ndarray:
        """argmax at every position of one prefill over ``ids``."""
        logits, _ = self.step(np.array([ids]))
        return np.asarray(logits[0].argmax(-1))
