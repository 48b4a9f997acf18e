"""Build Hub-style repos of tiny random decoders, one per family, the way onnx-community's are made.

``python -m tests.convert.hub_exports OUT [FAMILY ...]`` (needs the ``convert`` extra: torch, optimum):
for each family a random transformers model (std 0.2 weights at width 64, so greedy output varies) with the tiny
ChatML tokenizer, exported by ``agent.convert.checkpoint.export_checkpoint`` (optimum's
``text-generation-with-past`` export, then ``MatMulNBitsQuantizer`` 4/8-bit and the fp16 converter:
``onnx/model.onnx``, ``model_fp16.onnx``, ``model_quantized.onnx``, ``model_q4.onnx``) into
``OUT/<family>/repo``, a ``-web`` style repo with only ``onnx/model_q4f16.onnx`` into ``OUT/<family>/web``,
and what transformers itself generates greedily for :data:`PROMPT` into
``OUT/<family>/transformers.json`` (and, with fp16-rounded weights, ``transformers_fp16.json``). Run in a child process so the test process never imports torch.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from tests.fakes.tiny_model import IM_END_ID, IM_START_ID, train_tokenizer

PROMPT = [5, 17, 33, 48, 101, 7, 250, 12]
NEW_TOKENS = 20
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama"},
    # Llama 3.x: rope scaling, an untied head.
    "llama3": {
        "model_type": "llama",
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    },
    # A window shorter than prompt + answer, so the sliding attention is exercised.
    "mistral": {"model_type": "mistral", "sliding_window": 6},
    "qwen2": {"model_type": "qwen2"},  # q/k/v biases
    "qwen3": {"model_type": "qwen3", "head_dim": 32},  # q/k norms, head_dim != hidden/heads
    # Phi-3.5: fused qkv_proj and gate_up_proj, longrope. The original context (32) is above prompt +
    # answer (short factors) and below TEACHER (long factors, checked by LONG_TOP1); an untied head.
    "phi3": {
        "model_type": "phi3",
        "tie_word_embeddings": False,
        "original_max_position_embeddings": 32,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8],
            "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 13.0, 18.0],
        },
    },
    # Phi-4-mini: partial rotary (0.75 of head_dim: 48 of 64, onnxruntime's kernel turns a multiple
    # of 16 channels), longrope, a tied head.
    "phi4mini": {
        "model_type": "phi3",
        "hidden_size": 256,  # head_dim 64: Phi3Config checks the factors against hidden / heads
        "partial_rotary_factor": 0.75,
        "original_max_position_embeddings": 32,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": [1.0 + 0.1 * i for i in range(24)],
            "long_factor": [1.0 + 0.7 * i for i in range(24)],
        },
    },
    # SmolLM3: layers without a rotary embedding (NoPE; here the second of two).
    "smollm3": {"model_type": "smollm3", "no_rope_layers": [1, 0]},
    # Gemma 2: (1+w) norms around attention and MLP, embedding scale, query_pre_attn_scalar, attention
    # and final logit soft-capping (caps low enough to bite), every other layer a sliding window.
    "gemma2": {
        "model_type": "gemma2", "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 6,
        "attn_logit_softcapping": 10.0, "final_logit_softcapping": 15.0,
        "tie_word_embeddings": False,  # tied, the scaled embedding makes a random model echo its input
        "layer_types": ["sliding_attention", "full_attention"],
    },
    # Gemma 3: Gemma 2's layout with q/k norms, no soft-caps, and a local rope base on sliding layers.
    "gemma3": {
        "model_type": "gemma3_text", "head_dim": 16, "query_pre_attn_scalar": 24, "sliding_window": 6,
        "layer_types": ["sliding_attention", "full_attention"], "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0, "tie_word_embeddings": False,
    },
}
FP16_REFERENCE = "transformers_fp16.json"
LONG_TOP1 = "transformers_long_top1.json"
"""For :data:`EXPORT_DEPARTS`: transformers' argmax at every position of one forward over ``TEACHER``
(longer than the longrope families' original context, so their long rope factors apply)."""
EXPORT_DEPARTS = {"phi3": "sdpa", "phi4mini": "sdpa", "gemma2": "eager"}
"""Families whose optimum export computes otherwise than transformers (traced with longrope's short
factors only; Gemma 2's attention soft-cap left out), with the attention transformers runs them with."""
TEACHER = (PROMPT * 8)[:60]


def build(out: Path, family: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from agent.convert.checkpoint import export_checkpoint

    tokenizer = train_tokenizer()
    spec = dict(FAMILIES[family])
    model_type = spec.pop("model_type")
    sizes = {
        "vocab_size": tokenizer.get_vocab_size(), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "bos_token_id": IM_START_ID, "eos_token_id": IM_END_ID, "pad_token_id": IM_END_ID, "tie_word_embeddings": True,
    }
    config = AutoConfig.for_model(model_type, **{**sizes, **spec})
    torch.manual_seed(0)
    # Eager attention where the family soft-caps its scores: transformers' sdpa path (and so
    # optimum's export) leaves the cap out.
    model = AutoModelForCausalLM.from_config(config, attn_implementation=EXPORT_DEPARTS.get(family, "sdpa")).eval()
    std = 0.2 * (64 / config.hidden_size) ** 0.5  # the same activation scale at any width
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, std)
            else:  # norms and biases away from their identity values, so a dropped one shows
                p.add_(torch.randn_like(p) * 0.1)
    source = out / family / "checkpoint"
    model.save_pretrained(source)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    ).save_pretrained(source)
    export_checkpoint(source, out / family / "repo", ["fp32", "fp16", "q8", "q4"], lambda *_: None)
    _web_repo(out / family / "repo", out / family / "web")
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        generated = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    (out / family / "transformers.json").write_text(json.dumps(generated[0, len(PROMPT):].tolist()))
    if family in EXPORT_DEPARTS:
        with torch.no_grad():
            logits = model(torch.tensor([TEACHER])).logits
        (out / family / LONG_TOP1).write_text(json.dumps(logits[0].argmax(-1).tolist()))
    _greedy_fp16_weights(model, ids, out / family / FP16_REFERENCE)  # last: it rounds the weights


def _greedy_fp16_weights(model: Any, ids: Any, path: Path) -> None:
    """What transformers generates with every weight rounded to fp16 (computing in fp32, as the fp16
    rewrite does): the reference for fp16 files, which a random model's rounding can sway from fp32."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
        generated = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    path.write_text(json.dumps(generated[0, ids.shape[1]:].tolist()))


def _web_repo(repo: Path, web: Path) -> None:
    """A ``-web`` style repo: only ``onnx/model_q4f16.onnx`` (the fp16 model, fp16 I/O and KV cache,
    its MatMuls quantized to 4-bit blocks with fp16 scales), beside the same support files."""
    import shutil

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.transformers.float16 import convert_float_to_float16

    (web / "onnx").mkdir(parents=True)
    for f in repo.iterdir():
        if f.is_file():
            shutil.copy2(f, web / f.name)
    fp16 = convert_float_to_float16(onnx.load(str(repo / "onnx" / "model.onnx")), keep_io_types=False)
    quantizer = MatMulNBitsQuantizer(fp16, bits=4, block_size=32, is_symmetric=True)
    quantizer.process()
    onnx.save(quantizer.model.model, str(web / "onnx" / "model_q4f16.onnx"))


def main(argv: list[str]) -> int:
    import logging

    warnings.simplefilter("ignore")
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    out = Path(argv[0])
    for family in argv[1:] or list(FAMILIES):
        build(out, family)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
