"""What ``Ok.result`` holds for each request (``ipc.messages.RESULT_TYPES`` maps one to the other).

Part of ``ipc.messages``.
"""

from __future__ import annotations

import msgspec

from ipc.wire import PROTOCOL_VERSION, Message


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
    graph: str = ""
    """Which graph a chat model will run once installed, judged from its ``config.json``: ``fused``
    (the fast path rewrites the export at its first load) or ``original`` (the export as it is);
    empty when that cannot be told (an embedding model, a ``config.json`` that could not be fetched).
    ``status`` reports what a loaded model really runs."""
    graph_note: str = ""
    """Why ``original``: the family, rope scaling or layout the fast path does not cover."""


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
