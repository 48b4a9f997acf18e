"""One engine, measured in its own process (so peak RSS is that engine's alone).

    python bench/child.py measure ENGINE TARGET PROMPTS_JSON THREADS   -> one JSON line
    python bench/child.py agree   ENGINE TARGET IDS_JSON THREADS       -> JSON list of top-1 ids

ENGINE is ``onnx`` (this engine in-process; TARGET = model folder:quant), ``http`` (the same through
the real HTTP app + SSE; TARGET likewise) or ``llama`` (llama-cpp-python; TARGET = GGUF path).
Every engine runs the same protocol: load; warm up; per prompt, a one-token generation on a different
prompt (so nothing of the measured prompt is cached), then the measured generation, greedy, stopping
at eos or ``NEW_TOKENS``. Time to first token is from the call to the first token; decode tokens/s
is ``(n - 1) / (t_last - t_first)`` over the same generation.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workload import NEW_TOKENS, RESET_USER, messages

SHORT_RUNS = 2
LONG_RUNS = 2
PROBE_RUNS = 2
EOS_ID = 2  # <|im_end|>


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM, the peak resident set of this process image (``ru_maxrss`` would carry the parent's
    peak across ``execve``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class OnnxEngine:
    def __init__(self, target: str, threads: int) -> None:
        from agent.engine.model import load_model

        folder, quant = target.rsplit(":", 1)
        started = time.perf_counter()
        self.model = load_model(Path(folder), quantization=quant, device="cpu", threads=threads)
        self.load_s = time.perf_counter() - started

    def tokens(self, ids: list[int], user: str, max_tokens: int) -> Iterator[int]:
        from agent.engine.types import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        for step in self.model.generate(ids, params, threading.Event()):
            for choice in step.tokens:
                yield choice.token_id

    def rss_mb(self) -> float:
        return peak_rss_mb()


def _without_extra_buffer_types() -> None:
    """llama.cpp's AMX weight buffers segfault in the first decode on this kind of CPU (Sapphire
    Rapids, AMX_INT8; ggml-org/llama.cpp#20824), so weights stay in plain CPU buffers. This also
    skips the CPU_REPACK buffers, which on x86 repack Q4_0/IQ4_NL/Q8_0/K-quants, not Q4_1 layers."""
    import llama_cpp
    import llama_cpp.llama

    default = llama_cpp.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama.llama_cpp.llama_model_default_params = params  # type: ignore[attr-defined]


class LlamaEngine:
    def __init__(self, target: str, threads: int, logits_all: bool = False) -> None:
        from llama_cpp import Llama

        if os.environ.get("BENCH_LLAMA_EXTRA_BUFTS") != "1":
            _without_extra_buffer_types()
        started = time.perf_counter()
        n_ctx = int(os.environ.get("BENCH_LLAMA_CTX", "2048"))  # bench/hub_path.py asks 8192 for its 7.5k prompt
        self.llm = Llama(model_path=target, n_ctx=n_ctx, n_batch=512, n_threads=threads,
                         n_threads_batch=threads, logits_all=logits_all, verbose=False)
        self.load_s = time.perf_counter() - started

    def tokens(self, ids: list[int], user: str, max_tokens: int) -> Iterator[int]:
        n = 0
        for token in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if token == EOS_ID:
                return
            yield int(token)
            n += 1
            if n >= max_tokens:
                return

    def rss_mb(self) -> float:
        return peak_rss_mb()


class HttpEngine:
    """The real app in a server process; this process is the SSE client."""

    def __init__(self, target: str, threads: int) -> None:
        folder, quant = target.rsplit(":", 1)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("http_server.py")), folder, quant, str(self.port),
             str(threads)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"the HTTP server did not start: {line!r}")
        self.load_s = float(line.split()[1])
        self.start_to_ready_s = time.perf_counter() - started
        self.models_latency_ms: list[float] = []
        self.probe = False
        """Poll ``/v1/models`` during generations (only in the probe run, so that the polling's
        own load does not slow the timed runs)."""
        self._polling = threading.Event()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_models, daemon=True)
        self._poller.start()

    def _poll_models(self) -> None:
        """GET /v1/models every 20 ms while the probe generation streams (the event loop must stay
        free while a generation runs)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            if not self._polling.wait(0.05):
                continue
            started = time.perf_counter()
            conn.request("GET", "/v1/models")
            conn.getresponse().read()
            if self._polling.is_set():
                self.models_latency_ms.append(1000 * (time.perf_counter() - started))
            time.sleep(0.02)
        conn.close()

    def tokens(self, ids: list[int], user: str, max_tokens: int) -> Iterator[int]:
        body = json.dumps({"messages": messages(user), "max_tokens": max_tokens, "temperature": 0,
                           "stream": True, "stream_options": {"include_usage": True}})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        if self.probe:
            self._polling.set()
        try:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
            for raw in response:
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage")
                if usage:
                    self.last_count = int(usage["completion_tokens"])
                for choice in chunk.get("choices", []):
                    if (choice.get("delta") or {}).get("content"):
                        yield 0  # a chunk carries one token, or a few when text was held back
        finally:
            self._polling.clear()
            conn.close()

    def rss_mb(self) -> float:
        """The server's peak RSS (VmHWM), read before it is stopped."""
        return peak_rss_mb(self.proc.pid)

    def close(self) -> None:
        self._stop.set()
        self.proc.terminate()
        self.proc.wait(20)


def timed(engine: Any, ids: list[int], user: str, max_tokens: int) -> tuple[float, float | None, int]:
    """Seconds to the first token, decode tokens/s after it, and tokens generated. Over HTTP the
    count comes from ``usage`` (a chunk may carry more than one token)."""
    engine.last_count = None
    started = time.perf_counter()
    times = [time.perf_counter() for _ in engine.tokens(ids, user, max_tokens)]
    n = engine.last_count or len(times)
    rate = (n - 1) / (times[-1] - times[0]) if n > 1 and len(times) > 1 else None
    return (times[0] - started if times else float("nan")), rate, n


def measure(engine_kind: str, target: str, prompts: dict[str, Any], threads: int) -> dict[str, Any]:
    engines = {"onnx": OnnxEngine, "llama": LlamaEngine, "http": HttpEngine}
    engine = engines[engine_kind](target, threads)
    reset = prompts["reset"]
    try:
        timed(engine, prompts["short"], prompts["short_user"], 8)  # warm-up
        ttft_short, decode, generated = [], [], []
        for _ in range(SHORT_RUNS):
            timed(engine, reset, RESET_USER, 1)
            first, rate, n = timed(engine, prompts["short"], prompts["short_user"], NEW_TOKENS)
            ttft_short.append(first)
            generated.append(n)
            if rate is not None:
                decode.append(rate)
        ttft_long = []
        for _ in range(LONG_RUNS):
            timed(engine, reset, RESET_USER, 1)
            first, _, _ = timed(engine, prompts["long"], prompts["long_user"], 1)
            ttft_long.append(first)
        result: dict[str, Any] = {
            "load_s": engine.load_s,
            "decode_tok_s": statistics.median(decode) if decode else None,
            "generated_tokens": generated,
            "ttft_short_ms": 1000 * statistics.median(ttft_short),
            "ttft_long_ms": 1000 * statistics.median(ttft_long),
            "peak_rss_mb": engine.rss_mb(),
        }
        if isinstance(engine, HttpEngine):
            engine.probe = True
            for _ in range(PROBE_RUNS):
                timed(engine, prompts["short"], prompts["short_user"], NEW_TOKENS)
            lat = sorted(engine.models_latency_ms)
            result["start_to_ready_s"] = engine.start_to_ready_s
            result["models_p99_ms"] = float(np.percentile(lat, 99)) if lat else None
            result["models_p50_ms"] = float(np.percentile(lat, 50)) if lat else None
            result["models_samples"] = len(lat)
        return result
    finally:
        if isinstance(engine, HttpEngine):
            engine.close()


def agree(engine_kind: str, target: str, payload: dict[str, Any], threads: int) -> str:
    """Teacher-forced logits after every prefix of each id list in ``payload["texts"]`` (each text a
    fresh sequence, all its positions in one run), saved to ``payload["out"]`` (.npz, one array per
    text); returns that path."""
    texts: list[list[int]] = payload["texts"]
    out: dict[str, np.ndarray] = {}
    if engine_kind == "llama":
        for i, ids in enumerate(texts):
            llm = LlamaEngine(target, threads, logits_all=True).llm  # a fresh context per text
            llm.reset()
            llm.eval(ids)
            out[f"text{i}"] = np.array(llm.scores[: len(ids)], np.float32)
            del llm
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(str(Path(target)), options, providers=["CPUExecutionProvider"])
        for i, ids in enumerate(texts):
            feeds: dict[str, np.ndarray] = {
                "input_ids": np.array([ids], np.int64),
                "attention_mask": np.ones((1, len(ids)), np.int64),
                "position_ids": np.arange(len(ids), dtype=np.int64)[None],
            }
            for node in session.get_inputs():
                if node.name.startswith("past_key_values."):
                    feeds[node.name] = np.zeros((1, int(node.shape[1]), 0, int(node.shape[3])), np.float32)
            (logits,) = session.run(["logits"], feeds)  # logits_to_keep, if the graph has it, defaults to all
            out[f"text{i}"] = logits[0]
    np.savez(payload["out"], **out)
    return str(payload["out"])


def main() -> None:
    mode, engine_kind, target, data, threads = sys.argv[1:6]
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    payload = json.loads(Path(data).read_text())
    if mode == "measure":
        print(json.dumps(measure(engine_kind, target, payload, int(threads))))
    else:
        print(json.dumps(agree(engine_kind, target, payload, int(threads))))


if __name__ == "__main__":
    main()
