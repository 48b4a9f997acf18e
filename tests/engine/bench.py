"""Measure the engine: decode tokens/s, time to first token (cold cache), peak RSS.

    python -m tests.engine.bench MODEL_DIR [--quant q4] [--threads 2] [--tokens 128] [--runs 9]
    python -m tests.engine.bench --tiny            # the tiny test model (per-token overhead)

Greedy decoding of a fixed ~40-token chat prompt, as in FACTS §4, eos ignored. Each run starts from a cold
cache (a different first token defeats prefix reuse), so the first-token time includes the prefill.
Also runs the same graph through a bare numpy loop (``tests.fakes.decoder``) for comparison, so
the engine's own overhead is visible even on a noisy machine.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from agent.engine.model import load_model
from agent.engine.model_files import ONNX_FILES
from agent.engine.types import SamplingParams
from tests.fakes.decoder import Decoder

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one sentence, then tell a long story."},
]


def bare_loop_tok_s(decoder: Decoder, prompt: list[int], tokens: int) -> float:
    logits, past = decoder.step(np.array([prompt]))
    token = int(logits[0, -1].argmax())
    started = time.perf_counter()
    for _ in range(tokens - 1):
        logits, past = decoder.step(np.array([[token]]), past)
        token = int(logits[0, -1].argmax())
    return (tokens - 1) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--quant", default="q4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    if args.tiny:
        from tests.fakes.tiny_model import build_tiny_repo

        args.model = Path(tempfile.mkdtemp()) / "tiny"
        build_tiny_repo(args.model, quants=(args.quant,))
    model = load_model(args.model, quantization=args.quant, device="cpu", threads=args.threads)
    model.tokenizer.eos_token_ids = frozenset()  # measure exactly --tokens tokens
    prompt = model.encode_chat(MESSAGES)
    graph = model.info.onnx_file or args.model / "onnx" / ONNX_FILES[args.quant]
    decoder: Decoder | None = None
    rss_mb = 0.0
    speeds: list[float] = []
    firsts: list[float] = []
    bare: list[float] = []
    for _ in range(args.runs):  # engine and bare loop interleaved: both see the same machine load
        list(model.generate([prompt[0] + 1], SamplingParams(max_tokens=1), threading.Event()))  # cold cache
        started = time.perf_counter()
        first = None
        for _step in model.generate(prompt, SamplingParams(max_tokens=args.tokens, temperature=0.0), threading.Event()):
            first = first if first is not None else time.perf_counter() - started
        speeds.append(model.last_stats.decode_tokens_per_s)
        firsts.append(first or 0.0)
        if decoder is None:  # the engine's peak memory, before the bare loop's session exists
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            decoder = Decoder(graph, threads=args.threads)
        bare.append(bare_loop_tok_s(decoder, prompt, args.tokens))
    print(f"model {args.model} ({args.quant}, {args.threads} threads), prompt {len(prompt)} tokens, "
          f"{args.tokens} generated, load {model.info.load_s:.2f} s")
    print(f"engine decode {statistics.median(speeds):.1f} tok/s (best {max(speeds):.1f}), "
          f"first token {1000 * statistics.median(firsts):.1f} ms, peak RSS {rss_mb:.0f} MB")
    print(f"bare numpy loop on the same graph {statistics.median(bare):.1f} tok/s (best {max(bare):.1f})")


if __name__ == "__main__":
    main()
