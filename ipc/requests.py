"""Requests a client sends the worker: a tagged union on ``type`` (``AnyRequest``).

``id`` is echoed in the reply; ``docs/protocol.md`` describes each one. Part of ``ipc.messages``.
"""

from __future__ import annotations

import msgspec

from ipc.wire import PROTOCOL_VERSION, Message


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
