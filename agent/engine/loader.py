"""``load_variant``: the one loader the pool is given; a variant's kind picks the engine.

``chat`` variants load as ``agent.engine.model.OnnxChatModel`` (decoder + KV cache + chat template),
``embed`` variants as ``agent.engine.embedding.OnnxEmbeddingModel``. Both follow
``agent.engine.types.ModelLoader``.
"""

from __future__ import annotations

from pathlib import Path

from agent.engine.types import LoadedModel, ModelLoadError


def load_variant(path: Path, *, quantization: str, device: str, threads: int = 0, kind: str = "chat") -> LoadedModel:
    """Load the variant in ``path`` with the engine of its ``kind``; ``ModelLoadError`` if that
    fails (or the kind is unknown)."""
    if kind == "embed":
        from agent.engine.embedding import load_embedding_model

        return load_embedding_model(path, quantization=quantization, device=device, threads=threads)
    if kind != "chat":
        raise ModelLoadError(f"unknown model kind {kind!r} (expected chat or embed)")
    from agent.engine.model import load_model

    return load_model(path, quantization=quantization, device=device, threads=threads)
