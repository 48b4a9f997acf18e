"""Events the worker publishes: a tagged union on ``topic`` (``AnyEvent``), dotted topics filtered by prefix.

Part of ``ipc.messages``; ``ipc.events`` has the sockets that carry them.
"""

from __future__ import annotations

from ipc.wire import Message, tag_of


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


def topic_of(event: Event) -> str:
    """The dotted topic of an event (its tag)."""
    return tag_of(type(event))
