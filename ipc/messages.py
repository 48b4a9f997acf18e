"""The hflocal ZeroMQ protocol: every message that crosses the wire.

Messages are frozen msgspec Structs encoded as msgpack maps. Requests and events are tagged unions:
a request's tag lives in its ``type`` field, an event's in its ``topic`` field. New fields are only
ever added with defaults, so an older peer can decode a newer message (unknown fields are ignored).
``docs/protocol.md`` is the authoritative, language-neutral description of the same messages; keep
the two in step.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

PROTOCOL_VERSION = 1
"""Bumped only for incompatible changes; a request carrying another version is refused."""

MAX_REQUEST_BYTES = 1 << 20
"""Largest request payload the server decodes; bigger ones get a ``too_large`` error reply."""

Quantization = Literal["q4", "q8", "fp16", "fp32"]


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """Base of every wire struct."""


# --------------------------------------------------------------------------- requests


class Request(Message, tag_field="type"):
    """Base of all requests.

    ``id`` is echoed in the reply so DEALER clients can match replies to calls; ``token`` must equal
    the token in ``agent.json``; ``protocol`` is the client's protocol version.
    """

    id: int | str | None = None
    token: str = ""
    protocol: int = PROTOCOL_VERSION


class Ping(Request, tag="ping", kw_only=True):
    """Liveness check. Replies ``PingResult`` at once; never touches the store or the network."""


class Status(Request, tag="status", kw_only=True):
    """What the worker is doing now: active model, loaded models, downloads. Replies ``StatusResult``."""


class Search(Request, tag="search", kw_only=True):
    """Models with ONNX weights on the Hub, most downloaded first.

    ``kind`` is ``chat`` (text-generation models) or ``embed`` (``feature-extraction`` and
    ``sentence-similarity`` models, for ``/v1/embeddings``). An empty ``query`` returns the curated
    list of that kind. Replies ``SearchResult``.
    """

    query: str = ""
    limit: int = 20
    kind: str = "chat"


class ModelFiles(Request, tag="model_files", kw_only=True):
    """Which quantizations a Hub repo offers and the download size of each. Replies ``ModelFilesResult``."""

    model_id: str
    revision: str = "main"


class ListInstalled(Request, tag="list_installed", kw_only=True):
    """Every variant in the store, whatever its status. Replies ``InstalledResult``."""


class Download(Request, tag="download", kw_only=True):
    """Start (or join) the download of one variant. Replies ``JobAccepted`` at once.

    ``quantization``/``device`` default to the settings. Asking for a variant that is already
    downloading returns that job with ``existing=True``. Progress arrives as ``download.*`` events.
    """

    model_id: str
    quantization: str | None = None
    device: str | None = None
    revision: str = "main"


class CancelDownload(Request, tag="cancel_download", kw_only=True):
    """Cancel a running download by job id or variant key. Bytes already fetched are kept for resume."""

    job_id: str | None = None
    key: str | None = None


class Delete(Request, tag="delete", kw_only=True):
    """Remove a variant from the store; files shared with another installed variant are kept."""

    key: str


class Activate(Request, tag="activate", kw_only=True):
    """Make an installed variant the active model (remembered across restarts) and load it.

    ``key`` is a full variant key, ``org/name::quant`` (on whichever device it was installed for) or a
    bare model id (its active variant, else its first ready one in q4, q8, fp16, fp32 order).

    Replies ``JobAccepted`` at once; ``model.loading`` then ``model.ready`` or ``model.failed`` follow.
    """

    key: str


class ImportModel(Request, tag="import_model", kw_only=True):
    """Turn a local GGUF file, checkpoint folder or ONNX folder into installed variants (a job)."""

    path: str
    quantizations: list[str] = msgspec.field(default_factory=list)
    model_id: str | None = None


class Hardware(Request, tag="hardware", kw_only=True):
    """OS, CPU, RAM, GPUs, execution providers, cache location and free disk. Replies ``HardwareInfo``."""


class Shutdown(Request, tag="shutdown", kw_only=True):
    """Stop the worker cleanly (downloads stay resumable). Replies ``ShuttingDown`` before it stops."""


AnyRequest = (
    Ping
    | Status
    | Search
    | ModelFiles
    | ListInstalled
    | Download
    | CancelDownload
    | Delete
    | Activate
    | ImportModel
    | Hardware
    | Shutdown
)


# --------------------------------------------------------------------------- results


class PingResult(Message, kw_only=True):
    session: str
    pid: int
    protocol: int = PROTOCOL_VERSION
    version: str = ""


class DownloadInfo(Message, kw_only=True):
    """One running download, as shown by ``status`` and the tray."""

    job_id: str
    key: str
    model_id: str
    quantization: str
    done_bytes: int = 0
    total_bytes: int = 0
    rate_bps: float = 0.0
    eta_s: float | None = None
    current_file: str = ""
    state: str = "running"


class ActivationFailure(Message, kw_only=True):
    """The last ``activate`` job whose model did not load; the previous model stayed active."""

    key: str
    code: str
    message: str
    job_id: str = ""


class StatusResult(Message, kw_only=True):
    session: str
    pid: int
    version: str
    uptime_s: float
    http_url: str
    home: str
    active: str | None = None
    activating: str | None = None
    """A variant being loaded to become the active model (``active`` switches once it is ready)."""
    loaded: list[str] = msgspec.field(default_factory=list)
    model_state: str = "none"
    """The active model's state: ``none`` (no active model), ``loading``, ``ready``, ``failed`` (its last
    load failed; ``model_error`` says why) or ``unloaded`` (not in memory; it loads on the next request)."""
    model_error: str | None = None
    provider: str | None = None
    graph: str | None = None
    """For a loaded active model: ``fused`` (hflocal's fast graph: a GGUF import, or the rewrite of a Hub
    export made at its first load) or ``original`` (the repo's own graph; ``graph_note`` says why)."""
    graph_note: str | None = None
    downloads: list[DownloadInfo] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)
    activation_failed: ActivationFailure | None = None
    """Set from a failed ``activate`` until one succeeds (the agent restarting forgets it)."""


class ModelSummary(Message, kw_only=True):
    id: str
    downloads: int = 0
    likes: int = 0
    pipeline_tag: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    last_modified: str | None = None
    curated: bool = False
    kind: str = "chat"
    """``chat`` or ``embed`` (from the pipeline tag; see ``agent.model_kinds``)."""
    from_hub: bool = True
    """False for a curated model the Hub could not describe (offline, a mirror without it): its
    ``downloads``, ``likes``, ``tags`` and ``last_modified`` are unknown, not zero."""


class SearchResult(Message, kw_only=True):
    query: str
    models: list[ModelSummary]
    kind: str = "chat"
    """The kind that was searched for."""
    hub_reached: bool = True
    """False when the Hub could not be reached: ``models`` is then the curated list without Hub data
    (only an empty query gets that; a search with words fails with ``network`` instead)."""


class QuantOption(Message, kw_only=True):
    """One quantization a repo offers: the files it needs and their total size in bytes."""

    quantization: str
    files: list[str]
    size: int
    installed: bool = False


class ModelFilesResult(Message, kw_only=True):
    model_id: str
    commit: str
    options: list[QuantOption]
    gated: bool = False
    kind: str = "chat"
    """What the repo's variants will be once installed: ``chat`` or ``embed``."""


class InstalledModel(Message, kw_only=True):
    key: str
    model_id: str
    name: str
    quantization: str
    device: str
    files: list[str]
    size: int
    commit: str | None
    downloaded_at: str | None
    status: str
    error: str | None = None
    active: bool = False
    source: str = "hub"
    kind: str = "chat"
    """``chat`` (chat and text completions) or ``embed`` (``/v1/embeddings``)."""
    load_error: str | None = None
    """Why its last load failed (activate or first request), until it loads; ``None`` otherwise."""


class InstalledResult(Message, kw_only=True):
    models: list[InstalledModel]


class JobAccepted(Message, kw_only=True):
    job_id: str
    key: str
    existing: bool = False


class Cancelled(Message, kw_only=True):
    job_id: str
    key: str


class Deleted(Message, kw_only=True):
    key: str
    freed_bytes: int


class GpuInfo(Message, kw_only=True):
    name: str
    vendor: str = ""
    memory_bytes: int | None = None
    source: str = ""


class HardwareInfo(Message, kw_only=True):
    os: str
    arch: str
    cpu: str
    cores_physical: int | None
    cores_logical: int
    ram_total: int
    ram_available: int
    gpus: list[GpuInfo]
    providers: list[str]
    auto_device: str
    auto_reason: str
    cache_dir: str
    cache_size: int
    disk_free: int


class ShuttingDown(Message, kw_only=True):
    pid: int


# --------------------------------------------------------------------------- replies


class Reply(Message, tag_field="type"):
    """Base of the two replies; ``id`` echoes the request's ``id`` (``None`` if it was unreadable)."""

    id: int | str | None = None


class Ok(Reply, tag="ok", kw_only=True):
    """Success; ``result`` is the request's result struct encoded as a map."""

    result: Any = None


class Error(Reply, tag="error", kw_only=True):
    """Failure. ``code`` is one of ``ERROR_CODES``; ``message`` is one line for a human."""

    code: str
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


AnyReply = Ok | Error

ERROR_CODES = {
    "bad_request": "the request could not be decoded or a field is invalid",
    "too_large": "the request frame is larger than MAX_REQUEST_BYTES",
    "unauthorized": "missing or wrong token",
    "protocol_mismatch": "the client speaks another protocol version",
    "not_found": "no such model, variant or job",
    "repo_not_found": "the Hub has no such repository (or it is private)",
    "gated": "the repository is gated: accept its terms on the Hub and set HF_TOKEN",
    "no_onnx": "the repository has no ONNX weights",
    "quant_not_offered": "the repository does not offer that quantization",
    "network": "the Hub could not be reached after retries",
    "hub_error": "the Hub answered with an error",
    "disk_full": "not enough free disk space",
    "integrity": "a downloaded file did not match its checksum",
    "conflict": "the operation conflicts with the current state",
    "unsupported": "the model or file type is not supported",
    "missing_extra": "an optional extra must be installed",
    "load_failed": "the model could not be loaded",
    "busy": "the worker has too many requests in flight; retry shortly",
    "internal": "an unexpected error inside the worker (see the log)",
    "interrupted": "the agent stopped during the job (a download resumes, same job_id, at the next start)",
}


# --------------------------------------------------------------------------- events


class Event(Message, tag_field="topic"):
    """Base of all events, published on the PUB socket as ``[topic, msgpack]`` frames.

    ``session`` identifies the worker instance; it changes when the worker restarts.
    """

    session: str = ""
    time: float = 0.0


class DownloadStarted(Event, tag="download.started", kw_only=True):
    job_id: str
    key: str
    model_id: str
    quantization: str
    total_bytes: int
    files: list[str]
    resumed_bytes: int = 0


class DownloadProgress(Event, tag="download.progress", kw_only=True):
    """Aggregate over all files of the job; published at most ~5 times a second."""

    job_id: str
    key: str
    done_bytes: int
    total_bytes: int
    rate_bps: float
    eta_s: float | None
    current_file: str


class DownloadFinished(Event, tag="download.finished", kw_only=True):
    job_id: str
    key: str
    size_bytes: int
    elapsed_s: float
    fetched_bytes: int = 0


class DownloadFailed(Event, tag="download.failed", kw_only=True):
    job_id: str
    key: str
    code: str
    message: str


class DownloadCancelled(Event, tag="download.cancelled", kw_only=True):
    job_id: str
    key: str


class ModelLoading(Event, tag="model.loading", kw_only=True):
    key: str
    job_id: str = ""


class ModelReady(Event, tag="model.ready", kw_only=True):
    key: str
    job_id: str = ""
    provider: str = ""
    load_s: float = 0.0


class ModelFailed(Event, tag="model.failed", kw_only=True):
    key: str
    code: str
    message: str
    job_id: str = ""


class ModelUnloaded(Event, tag="model.unloaded", kw_only=True):
    key: str
    reason: str


class ModelActivated(Event, tag="model.activated", kw_only=True):
    """The active model changed (it may still be loading)."""

    key: str | None


class ModelsChanged(Event, tag="model.installed_changed", kw_only=True):
    """The set of installed variants changed (download finished, delete, import)."""

    keys: list[str]


class ImportProgress(Event, tag="import.progress", kw_only=True):
    job_id: str
    stage: str
    done: int
    total: int


class ImportFinished(Event, tag="import.finished", kw_only=True):
    job_id: str
    keys: list[str]


class ImportFailed(Event, tag="import.failed", kw_only=True):
    job_id: str
    code: str
    message: str


class WorkerStatus(Event, tag="worker.status", kw_only=True):
    """Heartbeat, every few seconds, and at once when the worker's state changes."""

    pid: int
    state: str
    """``starting`` | ``ready`` | ``stopping``."""
    active: str | None = None
    model_state: str = "none"
    """As ``StatusResult.model_state``."""
    downloads: int = 0
    http_url: str = ""


AnyEvent = (
    DownloadStarted
    | DownloadProgress
    | DownloadFinished
    | DownloadFailed
    | DownloadCancelled
    | ModelLoading
    | ModelReady
    | ModelFailed
    | ModelUnloaded
    | ModelActivated
    | ModelsChanged
    | ImportProgress
    | ImportFinished
    | ImportFailed
    | WorkerStatus
)


# --------------------------------------------------------------------------- codecs

_encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(AnyRequest)
reply_decoder = msgspec.msgpack.Decoder(AnyReply)
event_decoder = msgspec.msgpack.Decoder(AnyEvent)


def encode(message: Message | dict[str, Any]) -> bytes:
    """msgpack bytes of a message (or of a plain map, for hand-built test frames)."""
    return _encoder.encode(message)


RESULT_TYPES: dict[type[Request], type[Message]] = {
    Ping: PingResult,
    Status: StatusResult,
    Search: SearchResult,
    ModelFiles: ModelFilesResult,
    ListInstalled: InstalledResult,
    Download: JobAccepted,
    CancelDownload: Cancelled,
    Delete: Deleted,
    Activate: JobAccepted,
    ImportModel: JobAccepted,
    Hardware: HardwareInfo,
    Shutdown: ShuttingDown,
}
"""The result struct each request's ``Ok.result`` decodes to."""


def topic_of(event: Event) -> str:
    """The dotted topic of an event (its tag)."""
    return type(event).__struct_config__.tag  # type: ignore[return-value]
