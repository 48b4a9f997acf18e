"""The SmolLM2 variants the benchmark compares, each imported from the same GGUF by our importer.

``build(name, gguf, root)`` writes ``root/<name>-<digest>/`` (an onnx-community style folder) once
and reuses it while neither the variant nor the converter changes. Variants are keyed by what
changes between them, so a table row says exactly which lever it measures.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from agent.convert.gguf_import import import_gguf


@dataclass(frozen=True)
class Variant:
    name: str
    quant: str
    fused: bool
    head_bits: int | None = None
    accuracy_level: int | str | None = None
    what: str = ""


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", "fp32", False, what="reference: GGUF dequantized to float32 (unfused graph)"),
        Variant("q4-unfused", "q4", False, 16, "float",
                what="first default: unfused attention, fp16 lm_head, float activations"),
        Variant("q4-fused-f16head", "q4", True, 16, "float",
                what="GroupQueryAttention + skip-norms, fp16 lm_head, float activations"),
        Variant("q4-fused-exact", "q4", True, 8, "float",
                what="previous default: fused, GGUF Q8_0 head with exact top-16 rescoring, "
                     "float activations in the layers"),
        Variant("q4-fused", "q4", True, 8,
                what="default: as q4-fused-exact, int8 activations but for q/k/v, preallocated KV cache"),
        Variant("q4-fused-int8", "q4", True, 8, 4, what="fused, int8 activations in every MatMulNBits"),
    )
}


def build(name: str, gguf: Path, root: Path) -> Path:
    """``root/<name>-<digest>``: the digest covers the variant's options and the converter's source,
    so a changed converter or variant is imported afresh instead of reusing a stale folder."""
    v = VARIANTS[name]
    digest = hashlib.sha1(repr(v).encode())
    for source in sorted(Path(import_gguf.__code__.co_filename).parent.glob("*.py")):
        digest.update(source.read_bytes())
    out = root / f"{name}-{digest.hexdigest()[:10]}"
    if (out / "config.json").exists() and any((out / "onnx").glob("*.onnx")):
        return out
    import_gguf(gguf, out, (v.quant,), fused=v.fused, head_bits=v.head_bits, accuracy_level=v.accuracy_level)  # type: ignore[arg-type]
    return out
