"""Decode at ~1B parameters against this machine's memory bandwidth (issue 6).

    .venv/bin/python bench/bandwidth.py [--shape llama-3.2-1b] [--tokens 64] [--reps 5] [--threads 2]
                                        [--no-llama] [--rebuild]

At this size one decode step streams the whole model through the cores, so the ceiling is
``memory read bandwidth / bytes read per token`` and the question is how close the engine gets.

1. Measures read bandwidth with numpy in ``--threads`` threads (each thread reduces its half of a
   2 GiB float32 array, 8x the L3 this VM reports; ``max``, BLAS ``dot`` and ``sum`` reductions,
   1 and ``--threads`` threads, best of 10), before and again after the decode runs. The bound is
   the best rate any of them reached (a C AVX-512 read loop reached the same, 31 GB/s on 2 threads).
2. Builds (once, under ``bench/.models/``, rebuilt when ``agent/convert`` changes) a random-weights
   Llama of a real shape with our converter: q4, fused graph, default head (8-bit, tied) and the
   tree's default ``accuracy_level`` policy; the levels found in the graph are recorded. Weights are
   drawn per tensor (seeded by name) through a lazy mapping, so memory stays near one layer.
   Unless ``--no-llama``: the same weights as a Q4_0 GGUF (Q8_0 tied embedding, llama.cpp's usual
   layout) for llama-cpp-python, run as ``bench/run.py`` runs it (no extra weight buffers) and with
   its extra buffers (x86 Q4_0 repacking), which ``bench/run.py`` turns off for a crash on Q4_1.
3. Decodes greedily (engine: ``load_model`` + ``generate``, temperature 0) ``--tokens`` tokens after
   a 16-token prompt given as ids, ``--reps`` times (each with a different prompt), each engine in its
   own process (peak RSS is VmHWM). Decode tok/s is ``(n - 1) / (t_last - t_first)``; median and best
   are over the repetitions whose process got ``--threads`` cores (CPU time >= 90 % of them).
4. Bytes read per token: every initializer a decode step reads in full (MatMulNBits codes, scales,
   zero points, incl. the whole lm_head; norm weights), plus the rows gathered (one embedding row,
   the 16 rescored head rows), plus the KV cache read at the mean position. For llama.cpp: every
   tensor of the GGUF (the tied embedding is read whole as the output matrix).
   Achieved GB/s = bytes/token x tok/s; fraction = achieved / measured bound. onnxruntime does not
   read the initializers themselves: MLAS prepacks each MatMulNBits weight at load, and with int8
   activations (accuracy level 4) stores a float block sum per block beside the scale (zero points
   folded in), 24 instead of 20.5 bytes per 32 4-bit weights; a second row counts those bytes.

Writes ``bench/results/bandwidth.json`` and prints a Markdown table. Other work may share the cores:
each phase first waits (``--max-wait``) for other processes to go quiet, then records loadavg, CPU
steal and the cores other processes kept busy (machine busy time minus the child's own); best-of is
reported beside the median. ``--budget-s`` caps each engine's decode time (at least 3 repetitions).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.convert.llama_shape import LlamaShape  # noqa: E402

MODELS = ROOT / "bench" / ".models"
RESULTS = ROOT / "bench" / "results" / "bandwidth.json"
PROMPT_LEN = 16
CONTEXT = 512
STD = 0.02  # transformers' initializer_range
BW_BYTES = 2 << 30  # 2 GiB read array
BW_REPS = 10
QUIET_CORES = 0.3  # other work below this many busy cores counts as a quiet machine
MIN_REPS = 3  # a decode budget never cuts an engine below this many measured repetitions

SHAPES: dict[str, LlamaShape] = {
    # meta-llama/Llama-3.2-1B(-Instruct) config.json
    "llama-3.2-1b": LlamaShape(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
        num_kv_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=CONTEXT, tie_word_embeddings=True,
    ),
    # HuggingFaceTB/SmolLM2-1.7B(-Instruct) config.json
    "smollm2-1.7b": LlamaShape(
        vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_layers=24, num_heads=32,
        num_kv_heads=32, head_dim=64, rms_norm_eps=1e-5, rope_theta=130000.0,
        max_position_embeddings=CONTEXT, tie_word_embeddings=True,
    ),
}


# -- machine state ------------------------------------------------------------------------------


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    total = sum(f)
    return (total - f[3] - f[4]) / CLK_TCK, f[7] / CLK_TCK, total / CLK_TCK


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def others_cores(seconds: float = 2.0) -> float:
    """Cores busy over ``seconds`` while this script does nothing: other people's work."""
    b0, _, _ = _cpu_seconds()
    time.sleep(seconds)
    return (_cpu_seconds()[0] - b0) / seconds


def wait_for_quiet(max_wait: float, threshold: float = QUIET_CORES) -> dict[str, float]:
    """Wait (up to ``max_wait`` s) until other work uses under ``threshold`` cores; say how it went."""
    started = time.monotonic()
    busy = others_cores()
    while busy > threshold and time.monotonic() - started < max_wait:
        time.sleep(3.0)
        busy = others_cores()
    return {"waited_s": round(time.monotonic() - started, 1), "others_cores_at_start": round(busy, 2)}


class Monitor:
    """Over one phase (a child process): loadavg sampled every second, CPU steal, and the cores
    other processes kept busy (machine busy time minus the child's own CPU time)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> Monitor:
        self.samples.append(os.getloadavg()[0])
        self._t0, self._c0, self._w0 = _cpu_seconds(), _children_cpu(), time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        self._t1, self._c1, self._w1 = _cpu_seconds(), _children_cpu(), time.monotonic()

    def summary(self) -> dict[str, float]:
        busy, steal, total = (a - b for a, b in zip(self._t1, self._t0, strict=True))
        wall = self._w1 - self._w0
        child = self._c1 - self._c0
        return {
            "loadavg1_min": round(min(self.samples), 2),
            "loadavg1_max": round(max(self.samples), 2),
            "loadavg1_mean": round(statistics.fmean(self.samples), 2),
            "steal_pct": round(100 * steal / total, 2) if total else 0.0,
            "child_cores": round(child / wall, 2),
            "others_cores": round(max(0.0, busy - child) / wall, 2),
            "wall_s": round(wall, 1),
        }


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- 1. memory bandwidth ------------------------------------------------------------------------


def measure_bandwidth(threads: int) -> dict[str, Any]:
    """Read GB/s (1e9 bytes/s) of numpy reductions over an array 8x the L3, in 1..threads threads."""
    a = np.ones(BW_BYTES // 4, np.float32)  # touched: every page is resident before timing
    methods = {"max": np.max, "dot": lambda c: np.dot(c, c), "sum": np.sum}
    out: dict[str, Any] = {"array_bytes": a.nbytes, "reps": BW_REPS, "read_gb_s": {}}
    for n in sorted({1, threads}):
        chunks = np.array_split(a, n)
        for name, fn in methods.items():
            rates = []
            for _ in range(BW_REPS):
                workers = [threading.Thread(target=fn, args=(c,)) for c in chunks]
                t = time.perf_counter()
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                rates.append(a.nbytes / (time.perf_counter() - t) / 1e9)
            out["read_gb_s"][f"{name}_{n}t"] = {
                "best": round(max(rates), 2),
                "median": round(statistics.median(rates), 2),
            }
    # copy: reads and writes, for reference only (not the bound)
    b = np.empty(a.size // 2, np.float32)
    src = a[: b.size]
    rates = []
    for _ in range(BW_REPS):
        t = time.perf_counter()
        parts = list(zip(np.array_split(b, threads), np.array_split(src, threads), strict=True))
        workers = [threading.Thread(target=np.copyto, args=p) for p in parts]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        rates.append(2 * b.nbytes / (time.perf_counter() - t) / 1e9)
    out["copy_rw_gb_s"] = {"best": round(max(rates), 2), "median": round(statistics.median(rates), 2)}
    best_key = max(out["read_gb_s"], key=lambda k: out["read_gb_s"][k]["best"])
    out["bound_gb_s"] = out["read_gb_s"][best_key]["best"]
    out["bound_method"] = best_key
    return out


# -- 2. the model -------------------------------------------------------------------------------


class RandomWeights(Mapping[str, np.ndarray]):
    """Hugging Face-named float32 weights drawn on access, each from a generator seeded by its name
    (same tensor every time, no two held at once unless the caller keeps them)."""

    def __init__(self, shape: LlamaShape, seed: int = 0) -> None:
        self.shape, self.seed = shape, seed
        s, h, hd = shape, shape.hidden_size, shape.head_dim
        self._dims: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (s.vocab_size, h)}
        for n in range(s.num_layers):
            p = f"model.layers.{n}"
            self._dims.update({
                f"{p}.input_layernorm.weight": (h,),
                f"{p}.self_attn.q_proj.weight": (s.num_heads * hd, h),
                f"{p}.self_attn.k_proj.weight": (s.num_kv_heads * hd, h),
                f"{p}.self_attn.v_proj.weight": (s.num_kv_heads * hd, h),
                f"{p}.self_attn.o_proj.weight": (h, s.num_heads * hd),
                f"{p}.post_attention_layernorm.weight": (h,),
                f"{p}.mlp.gate_proj.weight": (s.intermediate_size, h),
                f"{p}.mlp.up_proj.weight": (s.intermediate_size, h),
                f"{p}.mlp.down_proj.weight": (h, s.intermediate_size),
            })
        self._dims["model.norm.weight"] = (h,)
        if not s.tie_word_embeddings:
            self._dims["lm_head.weight"] = (s.vocab_size, h)

    def __getitem__(self, name: str) -> np.ndarray:
        dims = self._dims[name]
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        if len(dims) == 1:
            return (1.0 + 0.1 * rng.standard_normal(dims, dtype=np.float32)).astype(np.float32)
        w = rng.standard_normal(dims, dtype=np.float32)
        w *= STD
        return w

    def __iter__(self) -> Iterator[str]:
        return iter(self._dims)

    def __len__(self) -> int:
        return len(self._dims)


def converter_fingerprint() -> str:
    """Hash of the converter sources: a cached model is rebuilt when the graph writer changes."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "agent" / "convert").glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def make_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE with no merges (every byte is a token) padded to the real vocabulary size,
    with Llama-3's special tokens at 128000+: any id decodes, and llama.cpp accepts the same list."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    n_special = 256 if vocab_size > 128000 else 2
    n_plain = vocab_size - n_special
    vocab = {c: i for i, c in enumerate(alphabet)}
    for i in range(len(vocab), n_plain):
        vocab[f"tok{i}"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    names = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(n_special - 2)]
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    assert tok.get_vocab_size() == vocab_size
    return tok


def special_ids(shape: LlamaShape) -> tuple[int, int]:
    base = 128000 if shape.vocab_size > 128000 else shape.vocab_size - 2
    return base, base + 1


def build_onnx(name: str, shape: LlamaShape, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    from agent.convert.llama_graph import write_llama_onnx
    from agent.convert.repo_files import TokenizerSpec, write_model_configs, write_tokenizer_files

    folder = MODELS / f"bandwidth-{name}-q4-fused"
    stamp = folder / "bench-build.json"
    fingerprint = converter_fingerprint()
    if not rebuild and stamp.exists():
        info = json.loads(stamp.read_text())
        if info.get("converter") == fingerprint and (folder / "onnx" / "model_q4.onnx").exists():
            return folder, info
    stamp.unlink(missing_ok=True)
    bos, eos = special_ids(shape)
    started = time.perf_counter()
    write_model_configs(folder, shape, bos_token_id=bos, eos_token_id=eos)
    spec = TokenizerSpec(eos_token="<|end_of_text|>", bos_token="<|begin_of_text|>", model_max_length=CONTEXT)
    write_tokenizer_files(folder, make_tokenizer(shape.vocab_size), spec)
    write_llama_onnx(
        shape, RandomWeights(shape), folder, "q4", fused=True, external_data=True,
        progress=lambda _what, i, n: print(f"  layer {i}/{n}", end="\r", flush=True),
    )
    info = {"converter": fingerprint, "build_s": round(time.perf_counter() - started, 1)}
    stamp.write_text(json.dumps(info) + "\n")
    print(f"  built in {info['build_s']} s{' ' * 20}")
    return folder, info


_GGUF_LAYER = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py row order for q/k (its RoPE pairs neighbours)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build_gguf(name: str, shape: LlamaShape, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    """The same random weights as Q4_0 (matrices) / Q8_0 (tied embedding) / F32 (norms)."""
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFWriter, quants

    from tests.fakes.tiny_gguf import write_shape

    path = MODELS / f"bandwidth-{name}.Q4_0.gguf"
    stamp = path.with_suffix(".json")
    if not rebuild and path.exists() and stamp.exists():
        return path, json.loads(stamp.read_text())
    started = time.perf_counter()
    tmp = path.with_name(path.name + ".incomplete")
    w = GGUFWriter(str(tmp), "llama")
    write_shape(w, shape, name=f"random {name}", context=CONTEXT, file_type=2)  # 2: MOSTLY_Q4_0
    tok = make_tokenizer(shape.vocab_size)
    tokens = [tok.id_to_token(i) for i in range(shape.vocab_size)]
    bos, eos = special_ids(shape)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if i >= bos else 1 for i in range(shape.vocab_size)])
    w.add_token_merges(["Ġ Ġ"])  # llama.cpp refuses a BPE vocabulary without merges; prompts are ids
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)
    weights = RandomWeights(shape)
    sizes: dict[str, int] = {}
    for hf in weights:
        value = weights[hf]
        if hf == "model.embed_tokens.weight":
            gname, qtype = "token_embd.weight", QT.Q8_0
        elif hf == "model.norm.weight":
            gname, qtype = "output_norm.weight", QT.F32
        else:
            _, _, layer, rest = hf.split(".", 3)
            gname = f"blk.{layer}.{_GGUF_LAYER[rest.removesuffix('.weight')]}.weight"
            qtype = QT.F32 if value.ndim == 1 else QT.Q4_0
            if rest.startswith("self_attn.q_proj"):
                value = _permute(value, shape.num_heads)
            elif rest.startswith("self_attn.k_proj"):
                value = _permute(value, shape.num_kv_heads)
        data = value if qtype == QT.F32 else quants.quantize(value, qtype)
        sizes[gname] = int(data.nbytes)
        w.add_tensor(gname, data, raw_dtype=None if qtype == QT.F32 else qtype)
        del value
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    info = {"tensor_bytes": sizes, "build_s": round(time.perf_counter() - started, 1)}
    stamp.write_text(json.dumps(info) + "\n")
    print(f"  GGUF written in {info['build_s']} s")
    return path, info


# -- 4. bytes per token -------------------------------------------------------------------------

_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 6: 4, 7: 8, 10: 2, 11: 8, 16: 2}
GATHER_OPS = ("Gather", "GatherBlockQuantized")


def graph_bytes_per_token(onnx_file: Path, rescore_rows: int = 16) -> dict[str, Any]:
    """Weight bytes one decode step reads, from the graph: initializers read whole by their
    consumers, gathered tables counted by the rows gathered; and the MatMulNBits accuracy levels."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    g = model.graph
    size = {
        t.name: int(np.prod(t.dims, dtype=np.int64)) * _DTYPE_BYTES[t.data_type] for t in g.initializer
    }
    rows = {t.name: int(t.dims[0]) if t.dims else 1 for t in g.initializer}
    full: set[str] = set()
    gathered: dict[str, int] = {}  # initializer -> rows read per token
    levels: dict[str, int] = {}
    matmul_bytes = {"layers": 0, "lm_head": 0}
    packed = unpacked = 0
    for node in g.node:
        inits = [i for i in node.input if i in size]
        if node.op_type in GATHER_OPS and node.input and node.input[0] in size:
            table = node.input[0]
            n = rescore_rows if node.name.startswith("/lm_head/") else 1
            gathered[table] = gathered.get(table, 0) + n
            for extra in inits[1:]:
                gathered[extra] = gathered.get(extra, 0) + n
            continue
        full.update(inits)
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            part = "lm_head" if node.name.startswith("/lm_head/") else "layers"
            key = f"{part}:{attrs['bits']}bit:level{attrs.get('accuracy_level', 0)}"
            levels[key] = levels.get(key, 0) + 1
            matmul_bytes[part] += sum(size[i] for i in inits)
            blocks = attrs["N"] * -(-attrs["K"] // attrs["block_size"])
            blob = attrs["block_size"] * attrs["bits"] // 8
            # MLAS prepacks B; with int8 activations (level 4) as codes + float scale + float
            # block sum (zero point folded in) per block; at level 0 as codes + scales + zero points.
            packed += blocks * (blob + 8) if attrs.get("accuracy_level", 0) == 4 else sum(size[i] for i in inits)
            unpacked += sum(size[i] for i in inits)
    weights_full = sum(size[i] for i in full)
    gathered_bytes = sum(size[t] // rows[t] * n for t, n in gathered.items() if t not in full)
    untouched = sum(size[t] for t in size if t not in full) - gathered_bytes
    data_file = onnx_file.with_name(onnx_file.name + "_data")
    return {
        "matmulnbits_bytes": matmul_bytes,
        "full_read_bytes": weights_full,
        "gathered_bytes": gathered_bytes,
        "not_read_bytes": untouched,
        "weights_per_token": weights_full + gathered_bytes,
        "weights_per_token_prepacked_estimate": weights_full + gathered_bytes + packed - unpacked,
        "file_bytes": onnx_file.stat().st_size + (data_file.stat().st_size if data_file.exists() else 0),
        "matmulnbits_levels": levels,
    }


def kv_bytes_per_token(shape: LlamaShape, mean_past: float, elem: int) -> int:
    """Keys and values of every past position, read once per layer per step."""
    return int(shape.num_layers * 2 * shape.num_kv_heads * shape.head_dim * elem * mean_past)


# -- 3. decode (child processes) ----------------------------------------------------------------


def prompts(shape: LlamaShape, reps: int) -> list[list[int]]:
    rng = np.random.default_rng(1)
    bos, _ = special_ids(shape)
    return [[bos, *rng.integers(256, bos, PROMPT_LEN - 1).tolist()] for _ in range(reps + 1)]


def timed_prompts(
    shape: LlamaShape, reps: int, budget: float, runs: list[dict[str, Any]]
) -> Iterator[tuple[bool, list[int]]]:
    """The prompts to decode, each with whether it is the warm-up (the first, not recorded); stops
    once ``MIN_REPS`` runs are recorded and the decode phase has used ``budget`` seconds."""
    decode_started = time.monotonic()
    for i, ids in enumerate(prompts(shape, reps)):
        if len(runs) >= MIN_REPS and time.monotonic() - decode_started > budget:
            return
        yield i == 0, ids


def child_onnx(
    folder: Path, shape: LlamaShape, tokens: int, reps: int, threads: int, budget: float
) -> dict[str, Any]:
    from agent.engine.model import load_model
    from agent.engine.types import SamplingParams

    base = rss_mb()
    started = time.perf_counter()
    model = load_model(folder, quantization="q4", device="cpu", threads=threads, context_length=CONTEXT)
    load_s = time.perf_counter() - started
    rss_loaded = rss_mb()
    # time inside the runner's forward (feeds, session run, logits): the rest of a step is Python
    runner = model._runner
    assert runner is not None
    inner, in_forward = runner.forward, [0.0]

    def timed_forward(ids: Any) -> Any:
        t = time.perf_counter()
        try:
            return inner(ids)
        finally:
            in_forward[0] += time.perf_counter() - t

    runner.forward = timed_forward  # type: ignore[method-assign]
    runs: list[dict[str, Any]] = []
    for warm_up, ids in timed_prompts(shape, reps, budget, runs):
        n, first, last = 0, 0.0, 0.0
        cpu0 = time.process_time()
        in_forward[0] = 0.0
        t0 = time.perf_counter()
        for step in model.generate(ids, SamplingParams(max_tokens=tokens, temperature=0.0), threading.Event()):
            now = time.perf_counter()
            for _ in step.tokens:
                n += 1
                first = first or now
                last = now
        if warm_up:
            continue
        stats = model.last_stats
        runs.append({
            "tokens": n, "tok_s": (n - 1) / (last - first), "engine_stats_tok_s": stats.decode_tokens_per_s,
            "prefill_s": stats.prefill_s, "loadavg1": os.getloadavg()[0],
            "cpu_cores": (time.process_time() - cpu0) / (stats.prefill_s + stats.decode_s),
            "outside_forward_ms_per_token": 1000 * (last - t0 - in_forward[0]) / n,
        })
    return {"load_s": load_s, "rss_before_load_mb": base, "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": peak_rss_mb(), "runs": runs}


def child_llama(
    gguf: Path, shape: LlamaShape, tokens: int, reps: int, threads: int, budget: float
) -> dict[str, Any]:
    from bench.child import _without_extra_buffer_types  # off unless asked, as in bench/child.py

    if os.environ.get("BENCH_LLAMA_EXTRA_BUFTS") != "1":
        _without_extra_buffer_types()
    from llama_cpp import Llama

    base = rss_mb()
    started = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_ctx=CONTEXT, n_batch=64, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - started
    rss_loaded = rss_mb()
    _, eos = special_ids(shape)
    runs: list[dict[str, Any]] = []
    for warm_up, ids in timed_prompts(shape, reps, budget, runs):
        n, first, last = 0, 0.0, 0.0
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            now = time.perf_counter()
            if tok == eos:
                break
            n += 1
            first = first or now
            last = now
            if n >= tokens:
                break
        if warm_up:
            continue
        runs.append({"tokens": n, "tok_s": (n - 1) / (last - first), "prefill_s": first - t0,
                     "loadavg1": os.getloadavg()[0],
                     "cpu_cores": (time.process_time() - cpu0) / (time.perf_counter() - t0)})
    return {"load_s": load_s, "rss_before_load_mb": base, "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": peak_rss_mb(), "runs": runs}


def run_child(
    args: list[str], max_wait: float, env: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run one phase in a child process after waiting for quiet; (its JSON, the contention seen)."""
    gate = wait_for_quiet(max_wait)
    with Monitor() as mon:
        proc = subprocess.run(
            [sys.executable, __file__, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
        )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), {**gate, **mon.summary()}


# -- report -------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("numpy", "onnx", "onnxruntime", "llama_cpp_python", "gguf", "tokenizers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    out["git_head"] = head.stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "agent/convert", "agent/engine"], capture_output=True,
                           text=True).stdout.split()
    out["agent_uncommitted"] = ", ".join(p for p in dirty if p.startswith("agent/")) or "none"
    return out


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    l3 = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("L3")), "")
    return {"cpu": cpu, "cores": os.cpu_count(), "l3": l3, "ram_gb": round(mem / 1e9, 1),
            "kernel": platform.release()}


def summarize(result: dict[str, Any], bytes_per_token: float, bound: float, threads: int) -> dict[str, Any]:
    """Median and best over the repetitions that had their cores (CPU time >= 90 % of ``threads``
    cores: both engines keep their threads spinning, so less means other work took the cores);
    over all repetitions when none did."""
    clean = [r["tok_s"] for r in result["runs"] if r["cpu_cores"] >= 0.9 * threads]
    rates = clean or [r["tok_s"] for r in result["runs"]]
    med, best = statistics.median(rates), max(rates)
    python = [r["outside_forward_ms_per_token"] for r in result["runs"] if "outside_forward_ms_per_token" in r]
    extra = {"python_ms_per_token_outside_forward": round(statistics.median(python), 3)} if python else {}
    return {
        **extra,
        "runs_uncontended": len(clean), "runs": len(result["runs"]),
        "tok_s_median": round(med, 2), "tok_s_best": round(best, 2),
        "tok_s_median_all_runs": round(statistics.median(r["tok_s"] for r in result["runs"]), 2),
        "bytes_per_token": int(bytes_per_token),
        "achieved_gb_s_median": round(bytes_per_token * med / 1e9, 2),
        "achieved_gb_s_best": round(bytes_per_token * best / 1e9, 2),
        "fraction_of_bound_median": round(bytes_per_token * med / 1e9 / bound, 3),
        "fraction_of_bound_best": round(bytes_per_token * best / 1e9 / bound, 3),
        "ceiling_tok_s": round(bound * 1e9 / bytes_per_token, 2),
        "peak_rss_mb": round(result["peak_rss_mb"]),
        "rss_after_load_mb": round(result["rss_after_load_mb"]),
    }


def table(out: dict[str, Any]) -> str:
    bw = out["bandwidth"]
    lines = [
        f"read bandwidth bound: **{bw['bound_gb_s']} GB/s** ({bw['bound_method']}, best of {bw['reps']}, "
        f"{bw['phase']} decoding; "
        f"copy r+w {bw['copy_rw_gb_s']['best']} GB/s)",
        "",
        "| engine | MB read/token | decode tok/s median (best) | ceiling tok/s | achieved GB/s median (best) "
        "| of bound median (best) | peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in out["engines"].items():
        n, total = s["runs_uncontended"], s["runs"]
        runs = f"{n}/{total} runs" if n else f"all {total} runs CONTENDED"
        lines.append(
            f"| {name} | {s['bytes_per_token'] / 1e6:.0f} | {s['tok_s_median']:.2f} ({s['tok_s_best']:.2f}), {runs} "
            f"| {s['ceiling_tok_s']:.1f} | {s['achieved_gb_s_median']:.2f} ({s['achieved_gb_s_best']:.2f}) "
            f"| {100 * s['fraction_of_bound_median']:.0f} % ({100 * s['fraction_of_bound_best']:.0f} %) "
            f"| {s['peak_rss_mb']} MB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="llama-3.2-1b")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-llama", action="store_true", help="skip llama-cpp-python")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached models")
    parser.add_argument("--budget-s", type=float, default=120.0,
                        help="per engine: start no further repetition after this much decoding (min 3 reps)")
    parser.add_argument("--max-wait", type=float, default=90.0,
                        help="before each phase, wait up to this long for other work to go quiet")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    MODELS.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    out: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(), "threads": args.threads,
        "shape": {"name": args.shape, **{k: v for k, v in vars(shape).items() if k != "rope_scaling"},
                  "params": shape.param_count()},
        "decode": {"prompt_tokens": PROMPT_LEN, "new_tokens": args.tokens, "reps": args.reps,
                   "warmup_runs": 1, "weights": f"random normal std {STD}, norms 1 + 0.1 N(0, 1)"},
        "contention": {},
    }

    def bandwidth(phase: str) -> None:
        out["bandwidth_runs"][phase], out["contention"][phase] = run_child(
            ["_membw", str(args.threads)], args.max_wait, {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        )
        print(f"    {out['bandwidth_runs'][phase]['bound_gb_s']} GB/s", flush=True)

    out["bandwidth_runs"] = {}
    print(f"1/4 memory bandwidth ({args.threads} threads, {BW_BYTES >> 30} GiB array)", flush=True)
    bandwidth("bandwidth before")

    print(f"2/4 models ({args.shape}, {shape.param_count() / 1e9:.2f} B params)", flush=True)
    folder, build_info = build_onnx(args.shape, shape, args.rebuild)
    onnx_bytes = graph_bytes_per_token(folder / "onnx" / "model_q4.onnx")
    mean_past = PROMPT_LEN + args.tokens / 2
    onnx_kv = kv_bytes_per_token(shape, mean_past, 4)
    out["onnx_model"] = {"folder": str(folder.relative_to(ROOT)), **build_info, **onnx_bytes,
                         "kv_read_per_token": onnx_kv}
    print(f"    accuracy levels: {onnx_bytes['matmulnbits_levels']}", flush=True)
    use_llama = not args.no_llama
    if use_llama and importlib.util.find_spec("llama_cpp") is None:
        print("    llama-cpp-python is not installed: skipping it (pip install '.[bench]')")
        use_llama = False
    if use_llama:
        gguf, gguf_info = build_gguf(args.shape, shape, args.rebuild)
        tensors = gguf_info["tensor_bytes"]
        # token_embd is the (tied) output matrix: read whole every step; + one embedding row
        embd = tensors["token_embd.weight"]
        llama_weights = sum(tensors.values()) + embd // shape.vocab_size
        llama_kv = kv_bytes_per_token(shape, mean_past, 2)  # f16 KV cache
        out["gguf_model"] = {"path": str(gguf.relative_to(ROOT)), "build_s": gguf_info["build_s"],
                             "weights_per_token": llama_weights, "kv_read_per_token": llama_kv,
                             "file_bytes": gguf.stat().st_size,
                             "types": "Q4_0 matrices, Q8_0 tied token_embd (also the output), F32 norms"}

    print(f"3/4 decode: {args.reps} x {args.tokens} tokens after {PROMPT_LEN} prompt tokens (+1 warm-up)", flush=True)
    common = [args.shape, str(args.tokens), str(args.reps), str(args.threads), str(args.budget_s)]
    raw: dict[str, Any] = {}
    raw["hflocal q4 fused"], out["contention"]["hflocal"] = run_child(["_onnx", str(folder), *common], args.max_wait)
    if use_llama:
        raw["llama.cpp Q4_0"], out["contention"]["llama.cpp"] = run_child(
            ["_llama", str(gguf), *common], args.max_wait
        )
        # llama.cpp's extra weight buffers (x86 Q4_0 repacking, AMX) are off in bench/child.py
        # because they crash on the SmolLM2 Q4_1 file there; try them here, where they may work.
        try:
            raw["llama.cpp Q4_0 repacked"], out["contention"]["llama.cpp repacked"] = run_child(
                ["_llama", str(gguf), *common], args.max_wait, {"BENCH_LLAMA_EXTRA_BUFTS": "1"}
            )
        except RuntimeError as exc:
            out["llama_repacked_error"] = str(exc)[-500:]
            print(f"    llama.cpp with extra buffers failed: {str(exc).splitlines()[0]}")
    out["raw"] = raw

    print("4/4 memory bandwidth again (the bound is the better of both), bytes per token", flush=True)
    bandwidth("bandwidth after")
    # the bound is the hardware's: the best rate seen, before or after (other work only lowers it)
    chosen = max(out["bandwidth_runs"], key=lambda k: out["bandwidth_runs"][k]["bound_gb_s"])
    out["bandwidth"] = {"phase": chosen, **out["bandwidth_runs"][chosen]}
    bound = out["bandwidth"]["bound_gb_s"]
    rows = {  # table row -> (raw run, bytes read per token)
        "hflocal q4 fused": ("hflocal q4 fused", onnx_bytes["weights_per_token"] + onnx_kv),
        "same run, bytes as MLAS prepacks them": (
            "hflocal q4 fused", onnx_bytes["weights_per_token_prepacked_estimate"] + onnx_kv
        ),
    }
    if use_llama:
        gm = out["gguf_model"]
        for run in ("llama.cpp Q4_0", "llama.cpp Q4_0 repacked"):
            if run in raw:
                rows[run] = (run, gm["weights_per_token"] + gm["kv_read_per_token"])
    out["engines"] = {
        row: summarize(raw[run], nbytes, bound, args.threads) for row, (run, nbytes) in rows.items()
    }
    busy = {
        k: v["others_cores"] for k, v in out["contention"].items()
        if v["others_cores"] > QUIET_CORES and (k == chosen or not k.startswith("bandwidth"))
    }
    out["contended_phases"] = busy
    out["wall_s"] = round(time.perf_counter() - wall, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print()
    print(table(out))
    seen = "; ".join(
        f"{k}: loadavg {v['loadavg1_min']}-{v['loadavg1_max']}, other work {v['others_cores']} cores"
        for k, v in out["contention"].items()
    )
    print(f"\nduring the phases: {seen}\nwrote {args.out}")
    if busy:
        print(f"WARNING: other work kept more than {QUIET_CORES} cores busy during {', '.join(busy)}: "
              "these numbers measure CPU sharing as much as bandwidth; run again when the machine is quiet")


def child_main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "_membw":
        result = measure_bandwidth(int(argv[1]))
    else:
        target, shape_name, tokens, reps, threads, budget = argv[1:7]
        fn = child_onnx if kind == "_onnx" else child_llama
        result = fn(Path(target), SHAPES[shape_name], int(tokens), int(reps), int(threads), float(budget))
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        child_main(sys.argv[1:])
    else:
        main()
