"""The Hub path at the 1B scale: the same random weights as a Hub export, a GGUF import and llama.cpp.

    .venv/bin/python bench/hub_scale.py [--shape llama-3.2-1b|qwen2.5-1.5b] [--reps 3] [--threads 2]
                                        [--prompts 1024,8192] [--original-prompts 1024] [--rebuild]

For one real shape (Llama-3.2-1B's or Qwen2.5-1.5B's config, random weights) it builds, once, under
``bench/.models/``:

- a transformers checkpoint initialised from a fixed seed (std 0.02, as transformers initialises);
- the Hub export of it, as onnx-community publishes: optimum + ``MatMulNBitsQuantizer`` 4-bit, block
  32 (``agent.convert.checkpoint.export_checkpoint``), ``onnx/model_q4.onnx``;
- a GGUF of the same weights, Q4_0 matrices and a Q8_0 tied embedding (llama.cpp's usual layout),
  and hflocal's import of that GGUF (``q4``, the fused graph).

Then it measures, each engine in its own process, one after the other:

- ``hub original``: the export run as it is (``HFLOCAL_FAST_PATH=0``);
- ``hub fast path``: the export rewritten into the fused graph at first load (rewrite time reported);
- ``gguf import``: hflocal's import of the GGUF;
- ``llama.cpp``: llama-cpp-python on the GGUF.

Decode tok/s (64 greedy tokens after a 16-token prompt, median of ``--reps``), time to first token
for each of ``--prompts`` (random token ids; once each — the original graph only for
``--original-prompts``, its 8k prefill takes many minutes), peak RSS (VmHWM), and the fraction of
the memory-bandwidth bound: bytes one decode step reads (from the graph, or the GGUF's tensors) times
tok/s over the read bandwidth that ``bench/bandwidth.py`` measures. Load average and the cores
other work kept busy are recorded per phase: on a shared machine read the numbers with them.
Writes ``bench/results/hub_scale-<shape>.json`` and ``.png`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.convert.llama_shape import LlamaShape, rope_inv_freq  # noqa: E402
from bench.bandwidth import (  # noqa: E402
    _GGUF_LAYER,
    Monitor,
    _permute,
    graph_bytes_per_token,
    kv_bytes_per_token,
    machine,
    measure_bandwidth,
    peak_rss_mb,
    versions,
    wait_for_quiet,
)

MODELS = ROOT / "bench" / ".models"
RESULTS = ROOT / "bench" / "results"
PROMPT_LEN = 16
NEW_TOKENS = 64
SEED = 0


# Real configs (their config.json), random weights.
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    },
    "qwen2.5-1.5b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536,
        "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu",
        "use_sliding_window": False,
    },
}


def context_for(prompts: list[int]) -> int:
    return max([PROMPT_LEN, *prompts]) + NEW_TOKENS + 64


# -- building ---------------------------------------------------------------------------------------


def make_tokenizer(vocab_size: int) -> Any:
    """Byte-level BPE: the 256 byte symbols, one merge (``Ġ Ġ``, which llama.cpp wants at least one
    of), filler tokens up to the real vocabulary size and two specials at the end (bos, eos)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["ĠĠ"] = len(vocab)
    for i in range(len(vocab), vocab_size - 2):
        vocab[f"tok{i}"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "Ġ")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|bos|>", "<|eos|>")])
    assert tok.get_vocab_size() == vocab_size
    return tok


def build_checkpoint(name: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    if (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file():
        return
    spec = dict(SHAPES[name])
    vocab = spec["vocab_size"]
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                  max_position_embeddings=131072 if name.startswith("llama") else 32768)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # transformers initialises norms to 1; vary them as trained models do
        for pname, p in model.named_parameters():
            if p.ndim == 1 and "norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
    tmp = out.with_name(out.name + ".incomplete")
    model.save_pretrained(tmp)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=make_tokenizer(vocab), bos_token="<|bos|>",
                                        eos_token="<|eos|>", pad_token="<|eos|>")
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)


def build_hub_export(checkpoint: Path, out: Path) -> None:
    from agent.convert.checkpoint import export_checkpoint

    if (out / "onnx" / "model_q4.onnx").is_file():
        return
    tmp = out.with_name(out.name + ".incomplete")
    export_checkpoint(checkpoint, tmp, ["q4"],
                      lambda stage, done, total: print(f"    {stage} {done}/{total}", flush=True))
    tmp.rename(out)


def _checkpoint_tensors(checkpoint: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(checkpoint.glob("*.safetensors"))
    out: dict[str, np.ndarray] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def build_gguf(name: str, checkpoint: Path, path: Path) -> dict[str, int]:
    """Q4_0 matrices, Q8_0 tied embedding, F32 norms and biases, as llama.cpp's converter lays them
    out (q/k rows permuted for Llama's interleaved rotary, not for Qwen2's). Returns tensor bytes."""
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFWriter, quants

    from tests.fakes.tiny_gguf import write_shape

    stamp = path.with_suffix(".json")
    if path.exists() and stamp.exists():
        return dict(json.loads(stamp.read_text()))
    config = json.loads((checkpoint / "config.json").read_text())
    arch = "llama" if config["model_type"] == "llama" else "qwen2"
    shape = shape_of(config)
    tmp = path.with_name(path.name + ".incomplete")
    w = GGUFWriter(str(tmp), arch)
    write_shape(w, shape, name=f"random {name}", context=32768, file_type=2)
    if arch == "llama":  # Llama 3's rope scaling as llama.cpp carries it: per-frequency divisors
        plain = rope_inv_freq(replace(shape, rope_scaling=None)).astype(np.float64)
        w.add_tensor("rope_freqs.weight", (plain / rope_inv_freq(shape)).astype(np.float32))
    tok = make_tokenizer(shape.vocab_size)
    vocab = shape.vocab_size
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default" if arch == "llama" else "qwen2")
    w.add_token_list([tok.id_to_token(i) for i in range(vocab)])
    w.add_token_types([3 if i >= vocab - 2 else 1 for i in range(vocab)])
    w.add_token_merges(["Ġ Ġ"])
    w.add_bos_token_id(vocab - 2)
    w.add_eos_token_id(vocab - 1)
    w.add_add_bos_token(False)
    sizes: dict[str, int] = {}
    for hf, value in _checkpoint_tensors(checkpoint).items():
        value = value.astype(np.float32)
        if hf == "lm_head.weight":
            continue  # tied
        if hf == "model.embed_tokens.weight":
            gname, qtype = "token_embd.weight", QT.Q8_0
        elif hf == "model.norm.weight":
            gname, qtype = "output_norm.weight", QT.F32
        else:
            _, _, layer, rest = hf.split(".", 3)
            base, kind = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{_GGUF_LAYER[base]}.{kind}"
            qtype = QT.F32 if value.ndim == 1 else QT.Q4_0
            if arch == "llama" and base in ("self_attn.q_proj", "self_attn.k_proj"):
                value = _permute(value, shape.num_heads if base == "self_attn.q_proj" else shape.num_kv_heads)
        data = value if qtype == QT.F32 else quants.quantize(value, qtype)
        sizes[gname] = int(data.nbytes)
        w.add_tensor(gname, data, raw_dtype=None if qtype == QT.F32 else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    stamp.write_text(json.dumps(sizes) + "\n")
    return sizes


def shape_of(config: dict[str, Any]) -> LlamaShape:
    from agent.convert.fast_path import shape_from_config

    return shape_from_config(config)


def build_import(gguf: Path, out: Path) -> None:
    from agent.convert.gguf_import import import_gguf

    if (out / "onnx" / "model_q4.onnx").is_file():
        return
    tmp = out.with_name(out.name + ".incomplete")
    import_gguf(gguf, tmp, ("q4",))
    tmp.rename(out)


# -- children ---------------------------------------------------------------------------------------


def _ids(seed: int, n: int, vocab: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).integers(300, vocab - 2, n)]


Run = Callable[[list[int], int], tuple[int, float, float, float]]
"""One generation: (prompt ids, max tokens) -> (tokens, start, first token, last token) times."""


def _measure(run: Run, vocab: int, reps: int, prompts: list[int], out: dict[str, Any]) -> dict[str, Any]:
    """Decode rates after a warm-up, then time to first token for each prompt length; into ``out``."""
    for rep in range(reps + 1):
        n, _, first, last = run(_ids(rep, PROMPT_LEN, vocab), NEW_TOKENS)
        if rep:  # the first is a warm-up
            out["decode"].append((n - 1) / (last - first))
    for length in prompts:
        _, t0, first, _ = run(_ids(1000 + length, length, vocab), 1)
        out["ttft_s"][str(length)] = first - t0
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def child_onnx(folder: Path, vocab: int, reps: int, prompts: list[int], threads: int) -> dict[str, Any]:
    from agent.engine.model import load_model
    from agent.engine.types import SamplingParams

    started = time.perf_counter()
    model = load_model(folder, quantization="q4", device="cpu", threads=threads, context_length=context_for(prompts))
    out: dict[str, Any] = {"load_s": time.perf_counter() - started, "graph": model.info.graph,
                           "graph_note": model.info.graph_note, "decode": [], "ttft_s": {}}

    def run(ids: list[int], max_tokens: int) -> tuple[int, float, float, float]:
        n, first, last = 0, 0.0, 0.0
        t0 = time.perf_counter()
        for step in model.generate(ids, SamplingParams(max_tokens=max_tokens, temperature=0.0), threading.Event()):
            now = time.perf_counter()
            for _ in step.tokens:
                n += 1
                first = first or now
                last = now
        return n, t0, first, last

    return _measure(run, vocab, reps, prompts, out)


def child_llama(gguf: Path, vocab: int, reps: int, prompts: list[int], threads: int) -> dict[str, Any]:
    from bench.child import _without_extra_buffer_types

    _without_extra_buffer_types()  # as bench/run.py runs it
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_ctx=context_for(prompts), n_batch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    out: dict[str, Any] = {"load_s": time.perf_counter() - started, "decode": [], "ttft_s": {}}

    def run(ids: list[int], max_tokens: int) -> tuple[int, float, float, float]:
        n, first, last = 0, 0.0, 0.0
        t0 = time.perf_counter()
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            now = time.perf_counter()
            if tok == vocab - 1:
                break
            n += 1
            first = first or now
            last = now
            if n >= max_tokens:
                break
        return n, t0, first, last

    return _measure(run, vocab, reps, prompts, out)


def run_child(args: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    gate = wait_for_quiet(30.0)
    with Monitor() as mon:
        proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), {**gate, **mon.summary()}


# -- report -----------------------------------------------------------------------------------------


def table(out: dict[str, Any]) -> str:
    prompts = out["prompts"]
    head = " | ".join(f"first token, {p} tok" for p in prompts)
    lines = [
        f"| engine ({out['shape']}, q4, {out['threads']} threads, {out['date'][:10]}) | decode tok/s | × llama.cpp "
        f"| {head} | peak RSS | of bandwidth bound |",
        "|---|---|---|" + "---|" * len(prompts) + "---|---|",
    ]
    for name, e in out["engines"].items():
        ttft = " | ".join(f"{e['ttft_s'][str(p)]:.1f} s" if str(p) in e["ttft_s"] else "not run" for p in prompts)
        ratio = e.get("decode_vs_llama_cpp")
        frac = e.get("fraction_of_bound")
        lines.append(f"| {name} | {e['decode_tok_s']:.2f} | {ratio:.2f} | {ttft} | {e['peak_rss_mb']:.0f} MB "
                     f"| {'' if frac is None else f'{100 * frac:.0f} %'} |")
    return "\n".join(lines)


def chart(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["engines"])
    panels = [("decode tok/s", lambda e: e["decode_tok_s"]), ("peak RSS MB", lambda e: e["peak_rss_mb"])]
    panels += [(f"first token, {p} tok (s)", lambda e, p=p: e["ttft_s"].get(str(p), 0.0)) for p in out["prompts"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 4.0))
    for ax, (title, value) in zip(axes, panels, strict=True):
        ax.bar(range(len(names)), [value(out["engines"][n]) for n in names], color="#4a7bd0")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{out['shape']} (random weights), q4, {out['threads']} threads, {out['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="llama-3.2-1b")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", default="1024,8192", help="prompt lengths for time to first token")
    parser.add_argument("--original-prompts", default="1024", help="the same, for the original graph")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--only", default="", help="re-measure these engines (comma-separated names) and "
                        "merge them into the shape's existing results (each keeps its own date and load)")
    args = parser.parse_args()
    prompts = [int(p) for p in args.prompts.split(",") if p]
    original_prompts = [int(p) for p in args.original_prompts.split(",") if p]
    base = MODELS / f"hub-scale-{args.shape}"
    if args.rebuild:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"1/3 models ({args.shape}, random weights)", flush=True)
    checkpoint, hub, gguf, imported = base / "checkpoint", base / "hub", base / "model.Q4_0.gguf", base / "import"
    subprocess.run([sys.executable, __file__, "_build_checkpoint", args.shape, str(checkpoint)], check=True)
    build_hub_export(checkpoint, hub)
    tensor_bytes = build_gguf(args.shape, checkpoint, gguf)
    build_import(gguf, imported)
    config = json.loads((checkpoint / "config.json").read_text())
    shape = shape_of(config)
    vocab = shape.vocab_size

    print("2/3 memory bandwidth", flush=True)
    bw, bw_load = run_child(["_membw", str(args.threads)], {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    bound = bw["bound_gb_s"]

    print("3/3 engines", flush=True)
    common = [str(vocab), str(args.reps), str(args.threads)]
    plan = [
        ("hub original", ["_onnx", str(hub), *common, args.original_prompts], {"HFLOCAL_FAST_PATH": "0"}),
        ("hub fast path", ["_onnx", str(hub), *common, args.prompts], {}),
        ("gguf import", ["_onnx", str(imported), *common, args.prompts], {}),
        ("llama.cpp", ["_llama", str(gguf), *common, args.prompts], {}),
    ]
    # the rewrite is made once, before measuring, and timed
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "_rewrite", str(hub)], check=True)
    rewrite_s = time.perf_counter() - t
    path = RESULTS / f"hub_scale-{args.shape}.json"
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    previous = json.loads(path.read_text()) if only and path.exists() else {}
    engines: dict[str, Any] = dict(previous.get("engines", {}))
    load: dict[str, Any] = {**previous.get("load", {}), "bandwidth": bw_load}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    mean_past = PROMPT_LEN + NEW_TOKENS / 2
    fast_file = next((hub / ".hflocal-fast").rglob("model_q4.onnx"), None)
    for name, argv, env in plan:
        if only and name not in only:
            continue
        print(f"    {name}", flush=True)
        raw, load[name] = run_child(argv, env)
        decode = statistics.median(raw["decode"])
        if name == "llama.cpp":
            nbytes = sum(tensor_bytes.values()) + kv_bytes_per_token(shape, mean_past, 2)
        else:
            graph = {"hub original": hub / "onnx" / "model_q4.onnx", "hub fast path": fast_file,
                     "gguf import": imported / "onnx" / "model_q4.onnx"}[name]
            nbytes = (graph_bytes_per_token(graph)["weights_per_token"] + kv_bytes_per_token(shape, mean_past, 4)
                      if graph is not None else 0)
        engines[name] = {
            "decode_tok_s": decode, "decode_runs": raw["decode"], "ttft_s": raw["ttft_s"],
            "peak_rss_mb": raw["peak_rss_mb"], "load_s": raw["load_s"], "graph": raw.get("graph", ""),
            "bytes_per_token": nbytes, "fraction_of_bound": nbytes * decode / 1e9 / bound if nbytes else None,
            "measured": now, "others_cores": load[name].get("others_cores"),
        }
    llama = engines["llama.cpp"]["decode_tok_s"]
    for e in engines.values():
        e["decode_vs_llama_cpp"] = e["decode_tok_s"] / llama
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(), "versions": versions(),
        "shape": args.shape, "config": SHAPES[args.shape], "params": shape.param_count(), "threads": args.threads,
        "prompts": prompts, "original_prompts": original_prompts, "decode": {"prompt": PROMPT_LEN, "new": NEW_TOKENS},
        "bandwidth_bound_gb_s": bound, "rewrite_s": rewrite_s, "engines": engines, "load": load,
        "wall_s": time.perf_counter() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    chart(out, path.with_suffix(".png"))
    print(table(out))
    seen = "; ".join(f"{k}: other work {v['others_cores']} cores" for k, v in load.items())
    print(f"\n{seen}\nwrote {path}")


def child_main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "_build_checkpoint":
        build_checkpoint(argv[1], Path(argv[2]))
        return
    if kind == "_rewrite":
        from agent.convert.fast_path import fast_graph

        folder = Path(argv[1])
        result = fast_graph(folder, folder / "onnx" / "model_q4.onnx", "q4")
        print(f"    rewrite: {result.path or result.reason}", flush=True)
        return
    if kind == "_membw":
        result = measure_bandwidth(int(argv[1]))
    else:
        target, vocab, reps, threads, prompts = argv[1:6]
        lengths = [int(p) for p in prompts.split(",") if p]
        fn = child_onnx if kind == "_onnx" else child_llama
        result = fn(Path(target), int(vocab), int(reps), lengths, int(threads))
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        child_main(sys.argv[1:])
    else:
        main()
