"""The Hugging Face Hub, through the official ``huggingface_hub`` client: search, file lists, errors.

Callers may rely on:

- ``HF_ENDPOINT`` and ``HF_TOKEN`` are read from the environment at *call* time (``endpoint()``,
  ``token()``) and passed to the client explicitly, so a mirror or a test hub takes effect without
  re-importing anything. Proxies come from ``HTTPS_PROXY``/``HTTP_PROXY`` through ``requests``.
- Every client exception leaves this module as an ``agent.errors.AgentError`` (``map_error``).
- Which files make a variant is ``agent.variant_files`` (pure functions, Transformers.js naming).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.errors import (
    GatedRepoError as HfGatedRepoError,
)

from agent.errors import (
    AgentError,
    DiskFullError,
    GatedRepoError,
    HubError,
    NetworkError,
    NoOnnxError,
    QuantNotOfferedError,
    RepoNotFoundError,
)
from agent.model_kinds import SEARCH_PIPELINE_TAGS, Kind, kind_of_pipeline_tag, repo_kind
from agent.variant_files import layout_problem, offered_quantizations, select_files
from agent.variants import normalize_quantization, validate_model_id
from ipc.messages import ModelFilesResult, ModelSummary, QuantOption

DEFAULT_ENDPOINT = "https://huggingface.co"
CURATED = (
    "onnx-community/Llama-3.2-1B-Instruct",
    "onnx-community/Llama-3.2-3B-Instruct",
    "onnx-community/Phi-3.5-mini-instruct-onnx",
    "onnx-community/gemma-2-2b-it",
    "onnx-community/Qwen2.5-1.5B-Instruct",
)
"""Shown for an empty search, in this order, even when the Hub cannot be reached."""
CURATED_EMBED = (
    "Xenova/all-MiniLM-L6-v2",
    "Xenova/bge-small-en-v1.5",
    "nomic-ai/nomic-embed-text-v1.5",
    "mixedbread-ai/mxbai-embed-large-v1",
    "onnx-community/Qwen3-Embedding-0.6B-ONNX",
)
"""The same for an empty ``kind="embed"`` search: embedding models with ONNX weights."""

_API_TIMEOUT_S = 20.0
_CURATED_TIMEOUT_S = 5.0
T = TypeVar("T")


def endpoint() -> str:
    """The Hub endpoint: ``$HF_ENDPOINT`` at call time, else huggingface.co (no trailing slash)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token() -> str | None:
    """``$HF_TOKEN`` at call time, else the token saved by ``huggingface-cli login`` (or None)."""
    return os.environ.get("HF_TOKEN") or get_token() or None


def api() -> HfApi:
    return HfApi(endpoint=endpoint(), token=token())


# --------------------------------------------------------------------------- listings


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file of a repo at one commit. ``etag`` is the name the cache gives its blob (sha256 for
    LFS files, the git blob sha1 otherwise); ``sha256`` is known for LFS files only."""

    path: str
    size: int
    etag: str | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class RepoListing:
    """A repo at one commit, with the size and checksum of every file."""

    model_id: str
    commit: str
    gated: bool
    files: dict[str, RemoteFile] = field(default_factory=dict)
    pipeline_tag: str | None = None

    @property
    def kind(self) -> Kind:
        """``chat`` or ``embed`` (``agent.model_kinds.repo_kind`` of the tag and the file names)."""
        return repo_kind(self.files, pipeline_tag=self.pipeline_tag)

    def options(self, installed: Collection[str] = ()) -> list[QuantOption]:
        """What ``ModelFilesResult.options`` lists: each offered quantization, its files and size."""
        result = []
        for quant in offered_quantizations(self.files):
            chosen = select_files(self.files, quant)
            result.append(
                QuantOption(
                    quantization=quant,
                    files=chosen,
                    size=sum(self.files[f].size for f in chosen),
                    installed=quant in installed,
                )
            )
        return result

    def plan(self, quantization: str) -> list[RemoteFile]:
        """The files of one variant; raises ``NoOnnxError``/``QuantNotOfferedError``."""
        quantization = normalize_quantization(quantization)
        offered = offered_quantizations(self.files)
        if not offered:
            raise NoOnnxError(self.model_id, layout_problem(self.files))
        if quantization not in offered:
            raise QuantNotOfferedError(self.model_id, quantization, offered)
        return [self.files[f] for f in select_files(self.files, quantization)]


def fetch_listing(model_id: str, revision: str = "main", *, retries: int = 2) -> RepoListing:
    """``model_info(files_metadata=True)`` as a ``RepoListing``; transient failures are retried."""
    validate_model_id(model_id)
    client = api()
    info = call_with_retries(
        lambda: client.model_info(model_id, revision=revision, files_metadata=True, timeout=_API_TIMEOUT_S),
        retries=retries,
        model_id=model_id,
        revision=revision,
    )
    if not info.sha:
        raise HubError(f"the Hub returned no commit for {model_id} at {revision!r}")
    files: dict[str, RemoteFile] = {}
    for sib in info.siblings or []:
        lfs = sib.lfs
        sha256 = lfs.sha256 if lfs is not None else None
        size = sib.size if sib.size is not None else (lfs.size if lfs is not None else 0)
        files[sib.rfilename] = RemoteFile(sib.rfilename, int(size or 0), etag=sha256 or sib.blob_id, sha256=sha256)
    return RepoListing(model_id=model_id, commit=info.sha, gated=bool(info.gated), files=files,
                       pipeline_tag=getattr(info, "pipeline_tag", None))


def model_files(model_id: str, revision: str = "main", installed: Collection[str] = ()) -> ModelFilesResult:
    """Which quantizations ``model_id`` offers, each with all its files and total size.

    ``installed`` names the quantizations already in the store (marks ``QuantOption.installed``).
    Raises ``NoOnnxError`` when the repo offers none, and the errors of ``map_error``.
    """
    listing = fetch_listing(model_id, revision)
    options = listing.options(installed)
    if not options:
        raise NoOnnxError(model_id, layout_problem(listing.files))
    graph, note = _expected_graph(listing)
    return ModelFilesResult(model_id=model_id, commit=listing.commit, options=options, gated=listing.gated,
                            kind=listing.kind, graph=graph, graph_note=note)


CONFIG_BYTES = 1 << 20  # a config.json past this is not read to judge the graph


def _expected_graph(listing: RepoListing) -> tuple[str, str]:
    """Whether a chat repo will take the fast path, from its config.json (fetched into a temporary
    folder, so asking never leaves anything in the cache); ``("", "")`` when that cannot be told."""
    if listing.kind != "chat":
        return "", ""
    config = listing.files.get("config.json")
    if config is None:
        return "original", "the repo has no config.json"
    if config.size > CONFIG_BYTES:
        return "", ""
    from agent.engine.graph_choice import expected_graph

    with tempfile.TemporaryDirectory(prefix="hflocal-config-") as tmp:
        try:
            path = api().hf_hub_download(listing.model_id, "config.json", revision=listing.commit, local_dir=tmp,
                                         etag_timeout=_API_TIMEOUT_S)
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, requests.RequestException, HfHubHTTPError, LocalEntryNotFoundError,
                OfflineModeIsEnabled):
            return "", ""
    return expected_graph(data)


# --------------------------------------------------------------------------- search


def _summary(info: Any, curated: bool, kind: Kind = "chat") -> ModelSummary:
    modified = getattr(info, "last_modified", None)
    tag = getattr(info, "pipeline_tag", None)
    return ModelSummary(
        id=info.id,
        downloads=int(getattr(info, "downloads", 0) or 0),
        likes=int(getattr(info, "likes", 0) or 0),
        pipeline_tag=getattr(info, "pipeline_tag", None),
        tags=list(getattr(info, "tags", None) or []),
        last_modified=modified.isoformat() if modified is not None else None,
        curated=curated,
        kind=kind_of_pipeline_tag(tag) or kind,
    )


def curated_models(kind: Kind = "chat") -> list[ModelSummary]:
    """The curated list of ``kind``, enriched with Hub data (downloads, likes, tags) where reachable.

    Never raises: a model the Hub cannot describe (offline, mirror without it) is listed bare.
    """
    return curated_listing(kind)[0]


def curated_listing(kind: Kind = "chat") -> tuple[list[ModelSummary], bool]:
    """``curated_models(kind)`` and whether the Hub answered at all: False when every model failed
    with a network error (offline), True when at least one answer (even a 404) came back."""
    client = api()
    ids = CURATED_EMBED if kind == "embed" else CURATED

    def one(model_id: str) -> tuple[ModelSummary, bool]:
        try:
            return _summary(client.model_info(model_id, timeout=_CURATED_TIMEOUT_S), curated=True, kind=kind), True
        except Exception as exc:  # offline is normal here: the list must appear anyway
            bare = ModelSummary(id=model_id, curated=True, kind=kind, from_hub=False)
            return bare, not isinstance(map_error(exc, model_id), NetworkError)

    with ThreadPoolExecutor(max_workers=len(ids), thread_name_prefix="hub-curated") as pool:
        results = list(pool.map(one, ids))
    return [summary for summary, _ in results], any(answered for _, answered in results)


def search(query: str = "", limit: int = 20, kind: Kind = "chat") -> list[ModelSummary]:
    """Models with ONNX weights matching ``query``, most downloaded first: ``kind="chat"``
    text-generation models, ``kind="embed"`` feature-extraction and sentence-similarity ones (one
    Hub query per pipeline tag, merged by downloads, each model once).

    An empty query returns ``curated_models(kind)``. ``limit`` is clamped to 1..100; the client
    follows the Hub's pagination until it has ``limit`` models.
    """
    query = (query or "").strip()
    limit = max(1, min(int(limit), 100))
    if not query:
        return curated_models(kind)[:limit]
    client = api()
    curated = CURATED_EMBED if kind == "embed" else CURATED

    def run() -> list[ModelSummary]:
        found: dict[str, ModelSummary] = {}
        for tag in SEARCH_PIPELINE_TAGS[kind]:
            for info in client.list_models(search=query, filter="onnx", pipeline_tag=tag, sort="downloads",
                                           direction=-1, limit=limit):
                found.setdefault(info.id, _summary(info, curated=info.id in curated, kind=kind))
        return sorted(found.values(), key=lambda m: -m.downloads)[:limit]

    return call_with_retries(run, retries=1)


# --------------------------------------------------------------------------- errors


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: connection drops, timeouts, 5xx and 429 answers."""
    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, LocalEntryNotFoundError):
        return exc.__cause__ is None or is_transient(exc.__cause__)
    if isinstance(exc, requests.HTTPError):  # HfHubHTTPError, or raise_for_status after the client's retries
        status = exc.response.status_code if exc.response is not None else None
        return status is None or status >= 500 or status == 429
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
        return True
    try:
        from urllib3.exceptions import HTTPError as Urllib3Error
    except ImportError:  # pragma: no cover
        Urllib3Error = ()  # type: ignore[assignment,misc]
    if isinstance(exc, Urllib3Error):
        return True
    # huggingface_hub's size check after a short read ("Consistency check failed ...")
    return isinstance(exc, OSError) and "Consistency check failed" in str(exc)


def map_error(exc: BaseException, model_id: str = "", revision: str | None = None) -> AgentError:
    """The ``AgentError`` a client exception means (``AgentError`` passes through unchanged)."""
    where = endpoint()
    if isinstance(exc, AgentError):
        return exc
    if isinstance(exc, HfGatedRepoError):
        return GatedRepoError(model_id, where)
    if isinstance(exc, RevisionNotFoundError):
        return RepoNotFoundError(model_id, revision)
    if isinstance(exc, RepositoryNotFoundError):
        return RepoNotFoundError(model_id)
    if isinstance(exc, OfflineModeIsEnabled):
        return NetworkError(where, "HF_HUB_OFFLINE is set")
    if isinstance(exc, LocalEntryNotFoundError):
        cause = exc.__cause__
        if isinstance(cause, BaseException) and not isinstance(cause, LocalEntryNotFoundError):
            return map_error(cause, model_id, revision)
        return NetworkError(where)
    if isinstance(exc, EntryNotFoundError):
        return HubError(f"a file of {model_id} is missing on the Hub: {_first_line(exc)}")
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status == 401:
            return HubError(f"the Hub refused the token for {model_id} (401): check HF_TOKEN")
        return HubError(f"the Hub answered {status} for {model_id or where}: {_first_line(exc)}")
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)) or is_transient(exc):
        return NetworkError(where, _reason(exc))
    if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
        return DiskFullError(str(exc.filename or "the cache"))
    return HubError(f"unexpected answer from the Hub for {model_id or where}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """A short why for a connection failure ("connection refused", "timed out" ...)."""
    text = str(exc).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("timed out", "timed out"),
        ("name or service", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("proxy", "proxy error"),
        ("ssl", "TLS error"),
    ):
        if needle in text:
            return reason
    return type(exc).__name__


def call_with_retries(
    fn: Callable[[], T],
    *,
    retries: int,
    model_id: str = "",
    revision: str | None = None,
    backoff_s: float = 0.5,
) -> T:
    """``fn()``, retried ``retries`` times on transient failures with exponential backoff; any
    failure leaves as the ``AgentError`` of ``map_error``."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if attempt < retries and is_transient(exc):
                time.sleep(backoff_s * (2**attempt))
                attempt += 1
                continue
            raise map_error(exc, model_id, revision) from exc
