"""Shared parts of the embedding tests: repo ids and the files of a tiny encoder repo for the hub."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.tiny_encoder import TinyEncoder

EMBED_ID = "sentence-tiny/Tiny-MiniLM-ONNX"
"""The tiny encoder as a sentence-transformers repo with ONNX weights (fp32 and q8) on the test hub."""
ST_FILES = [
    "config.json", "tokenizer.json", "tokenizer_config.json", "modules.json", "sentence_bert_config.json",
    "config_sentence_transformers.json", "1_Pooling/config.json", "onnx/model.onnx",
]


def embed_repo_files(enc: TinyEncoder) -> dict[str, Path]:
    """Every file of the built repo plus a model card, keyed by repo path (for ``HubRepos.add_repo``)."""
    files = {rel: enc.path / rel for rel in enc.files}
    card = enc.path.parent / f"{enc.path.name}-README.md"
    card.write_text("---\npipeline_tag: sentence-similarity\nlibrary_name: sentence-transformers\n---\n")
    files["README.md"] = card
    return files
