"""What a model is for: ``chat`` (it generates text) or ``embed`` (it turns text into vectors).

The kind decides which engine loads a variant and which routes may use it: chat completions,
completions (and every other generation route) take ``chat`` models, ``/v1/embeddings`` takes
``embed`` models. It is recorded in the store with each variant and reported by ``list_installed``,
``GET /v1/models`` and the search results.

``repo_kind`` is the one rule, a pure function of what is known about a repo, used when a model is
pulled (the Hub's pipeline tag and file list), imported (its folder) or found again in the cache
(a rebuilt manifest: its files and ``config.json``). In order:

1. the Hub's pipeline tag: ``feature-extraction`` / ``sentence-similarity`` → embed; a generation
   tag (``text-generation``, ``text2text-generation``, ``image-text-to-text``) → chat;
2. sentence-transformers files (``modules.json``, ``sentence_bert_config.json``, a
   ``N_Pooling/config.json``) → embed;
3. ``config.json``'s ``architectures``: a head that generates (``…ForCausalLM``, ``…LMHeadModel``,
   ``…ForConditionalGeneration``) → chat; a bare encoder (``BertModel``, ``XLMRobertaModel``,
   ``ModernBertModel``, ``NomicBertModel``…) → embed;
4. otherwise chat (what hflocal served before it knew kinds).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, Literal

Kind = Literal["chat", "embed"]
KINDS: tuple[Kind, ...] = ("chat", "embed")
KIND_ALIASES = {"embedding": "embed", "embeddings": "embed", "generate": "chat", "text-generation": "chat"}

EMBED_PIPELINE_TAGS = ("feature-extraction", "sentence-similarity")
"""Hub pipeline tags of embedding models; a kind=embed search asks for each."""
CHAT_PIPELINE_TAGS = ("text-generation", "text2text-generation", "image-text-to-text")
SEARCH_PIPELINE_TAGS: dict[Kind, tuple[str, ...]] = {"chat": ("text-generation",), "embed": EMBED_PIPELINE_TAGS}
"""What ``hub.search`` asks the Hub for, per kind (always together with the ``onnx`` filter)."""

SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json")
_MODULE_CONFIG = re.compile(r"^\d+_[A-Za-z]+/config\.json$")
"""Config files of sentence-transformers modules (``1_Pooling/config.json``, ``2_Dense/config.json``)."""
_GENERATING_HEAD = re.compile(r"(ForCausalLM|LMHeadModel|ForConditionalGeneration)$")
_ENCODER = re.compile(r"(Model|ForMaskedLM)$")


def normalize_kind(kind: str) -> Kind:
    """``chat`` / ``embed`` (``embedding(s)`` accepted); ``ValueError`` naming the allowed values."""
    text = kind.strip().lower() if isinstance(kind, str) else ""
    text = KIND_ALIASES.get(text, text)
    if text == "chat":
        return "chat"
    if text == "embed":
        return "embed"
    raise ValueError(f"invalid kind {kind!r}: use one of {', '.join(KINDS)}")


def is_module_config(path: str) -> bool:
    """True for a sentence-transformers module's ``config.json`` (``1_Pooling/config.json``...)."""
    return bool(_MODULE_CONFIG.match(path))


def kind_of_pipeline_tag(tag: str | None) -> Kind | None:
    """The kind a Hub pipeline tag means, or None when it says nothing hflocal knows."""
    if tag in EMBED_PIPELINE_TAGS:
        return "embed"
    if tag in CHAT_PIPELINE_TAGS:
        return "chat"
    return None


def repo_kind(
    filenames: Collection[str],
    *,
    pipeline_tag: str | None = None,
    config: dict[str, Any] | None = None,
) -> Kind:
    """The kind of a repo or folder with these (repo-relative) files; see the module docstring."""
    by_tag = kind_of_pipeline_tag(pipeline_tag)
    if by_tag is not None:
        return by_tag
    names = set(filenames)
    if any(f in names for f in SENTENCE_TRANSFORMERS_FILES) or any(is_module_config(f) for f in names):
        return "embed"
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if isinstance(architectures, list) and architectures and all(isinstance(a, str) for a in architectures):
        if any(_GENERATING_HEAD.search(a) for a in architectures):
            return "chat"
        if all(_ENCODER.search(a) for a in architectures):
            return "embed"
    return "chat"


def folder_kind(folder: Path, filenames: Iterable[str]) -> Kind:
    """``repo_kind`` of a folder on disk, reading its ``config.json`` if it has one (never raises)."""
    names = list(filenames)
    config: dict[str, Any] | None = None
    if "config.json" in names:
        try:
            loaded = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else None
        except (OSError, UnicodeDecodeError, ValueError):
            config = None
    return repo_kind(names, config=config)
