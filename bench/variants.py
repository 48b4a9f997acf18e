"""The SmolLM2 variants the benchmark compares, each imported from the same GGUF by our importer.

``build(name, gguf, root)`` writes ``root/<name>/`` (an onnx-community style folder) once and reuses
it afterwards (the folder name includes everything that shapes the graph). Variants are keyed by what
changes between them, so a table row says exactly which lever it measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.convert.gguf_import import import_gguf


@dataclass(frozen=True)
class Variant:
    name: str
    quant: str
    fused: bool
    head_bits: int | None = None
    accuracy_level: int | None = None
    what: str = ""


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", "fp32", False, what="reference: GGUF dequantized to float32 (unfused graph)"),
        Variant("q4-unfused", "q4", False, 16, what="previous default: unfused attention, fp16 lm_head"),
        Variant("q4-fused-f16head", "q4", True, 16, what="GroupQueryAttention + skip-norms, fp16 lm_head"),
        Variant("q4-fused", "q4", True, 8, what="default: fused, GGUF Q8_0 head passed through, int8 activations + exact top-16 rescoring"),
        Variant("q4-fused-int8", "q4", True, 8, 4, what="fused, int8 activations in every MatMulNBits"),
    )
}


def build(name: str, gguf: Path, root: Path) -> Path:
    v = VARIANTS[name]
    out = root / name
    if (out / "config.json").exists() and any((out / "onnx").glob("*.onnx")):
        return out
    import_gguf(gguf, out, (v.quant,), fused=v.fused, head_bits=v.head_bits, accuracy_level=v.accuracy_level)  # type: ignore[arg-type]
    return out
