"""The hflocal ZeroMQ protocol: every message that crosses the wire.

Messages are frozen msgspec Structs encoded as msgpack maps. Requests and events are tagged unions:
a request's tag lives in its ``type`` field, an event's in its ``topic`` field. New fields are only
ever added with defaults, so an older peer can decode a newer message (unknown fields are ignored).
The messages live in ``ipc.wire`` (the base), ``ipc.requests``, ``ipc.results`` and
``ipc.event_messages``; this module is their one public name, with the replies and the codecs.
``docs/protocol.md`` is the authoritative, language-neutral description of the same messages; keep
the two in step.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ipc.event_messages import (
    AnyEvent,
    DownloadCancelled,
    DownloadFailed,
    DownloadFinished,
    DownloadProgress,
    DownloadStarted,
    Event,
    ImportFailed,
    ImportFinished,
    ImportProgress,
    ModelActivated,
    ModelFailed,
    ModelLoading,
    ModelReady,
    ModelsChanged,
    ModelUnloaded,
    WorkerStatus,
    topic_of,
)
from ipc.requests import (
    Activate,
    AnyRequest,
    CancelDownload,
    Delete,
    Download,
    Hardware,
    ImportModel,
    ListInstalled,
    ModelFiles,
    Ping,
    Request,
    Search,
    Shutdown,
    Status,
)
from ipc.results import (
    ActivationFailure,
    Cancelled,
    Deleted,
    DownloadInfo,
    GpuInfo,
    HardwareInfo,
    InstalledModel,
    InstalledResult,
    JobAccepted,
    ModelFilesResult,
    ModelSummary,
    PingResult,
    QuantOption,
    SearchResult,
    ShuttingDown,
    StatusResult,
)
from ipc.wire import (
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    Message,
    Quantization,
    tag_of,
)


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


__all__ = [
    "_encoder",
    "Activate",
    "ActivationFailure",
    "AnyEvent",
    "AnyReply",
    "AnyRequest",
    "CancelDownload",
    "Cancelled",
    "Delete",
    "Deleted",
    "Download",
    "DownloadCancelled",
    "DownloadFailed",
    "DownloadFinished",
    "DownloadInfo",
    "DownloadProgress",
    "DownloadStarted",
    "encode",
    "Error",
    "ERROR_CODES",
    "Event",
    "event_decoder",
    "GpuInfo",
    "Hardware",
    "HardwareInfo",
    "ImportFailed",
    "ImportFinished",
    "ImportModel",
    "ImportProgress",
    "InstalledModel",
    "InstalledResult",
    "JobAccepted",
    "ListInstalled",
    "MAX_REQUEST_BYTES",
    "Message",
    "ModelActivated",
    "ModelFailed",
    "ModelFiles",
    "ModelFilesResult",
    "ModelLoading",
    "ModelReady",
    "ModelsChanged",
    "ModelSummary",
    "ModelUnloaded",
    "Ok",
    "Ping",
    "PingResult",
    "PROTOCOL_VERSION",
    "Quantization",
    "QuantOption",
    "Reply",
    "reply_decoder",
    "Request",
    "request_decoder",
    "RESULT_TYPES",
    "Search",
    "SearchResult",
    "Shutdown",
    "ShuttingDown",
    "Status",
    "StatusResult",
    "tag_of",
    "topic_of",
    "WorkerStatus",
]
