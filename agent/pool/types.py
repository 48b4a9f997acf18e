"""The pool's public data: its contract with the store (``Catalog``, ``ResolvedVariant``), the
errors it raises and its status snapshot.

Each error has a ``code`` (reported over HTTP and ZeroMQ); the HTTP layer maps them to statuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ResolvedVariant:
    """An installed, ready variant: what the pool needs to load it and ``/v1/models`` to list it."""

    key: str
    model_id: str
    path: Path
    """The folder holding the variant's files (what the engine's loader is given)."""
    quantization: str
    device: str
    created: int = 0
    """Unix seconds when it was installed (``created`` in ``/v1/models``); 0 if unknown."""
    kind: str = "chat"
    """``chat`` or ``embed`` (``agent.model_kinds``): which engine loads it, which routes take it."""


class Catalog(Protocol):
    """What the pool asks the store. Both methods are called on the event loop and must be quick."""

    def resolve(self, name: str) -> ResolvedVariant:
        """Map a variant key or a bare model id (its installed variant) to a ready variant. Raise
        ``UnknownModelError`` when nothing installed matches (a malformed name included),
        ``ModelUnavailableError`` when it is installed but not usable now (still downloading, or
        broken). A request without ``model`` never gets here as ``None``: the pool resolves its
        own active key instead."""
        ...

    def installed(self) -> Sequence[ResolvedVariant]:
        """Every installed variant whose status is ready, for ``GET /v1/models``."""
        ...


class UnknownModelError(KeyError):
    """No installed variant matches the name (HTTP 404 ``model_not_found``)."""

    def __init__(self, name: str | None, message: str | None = None) -> None:
        self.name = name
        self.message = message or (
            f"The model '{name}' does not exist or is not installed" if name
            else "No model is active: name one in 'model', or choose one with `hflocal use`"
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class PoolError(Exception):
    """Base of the pool's errors. ``code`` is the error code reported over HTTP and ZeroMQ."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelUnavailableError(PoolError):
    """Installed but not usable now (downloading, failed download); HTTP 503."""

    code = "model_unavailable"


class ModelKindError(PoolError):
    """The model named (or the default one) is of the wrong kind for the request: an embedding model
    asked to chat, a chat model asked for embeddings, or no single model of the kind to default to
    (HTTP 400, ``param`` ``model``). ``code`` is ``wrong_model_kind`` or ``model_required``."""

    code = "wrong_model_kind"

    def __init__(self, message: str, code: str = "wrong_model_kind") -> None:
        super().__init__(message)
        self.code = code


class QueueFullError(PoolError):
    """Too many requests waiting for this model; retry after ``retry_after`` seconds (HTTP 503)."""

    code = "queue_full"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LoadTimeoutError(PoolError):
    """The model is still loading after ``load_wait_s``; the load goes on (HTTP 503 + Retry-After)."""

    code = "model_loading"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelLoadFailedError(PoolError):
    """The engine could not load the model; ``reason_code`` is the engine's code (HTTP 500)."""

    code = "model_load_failed"

    def __init__(self, key: str, reason_code: str, message: str) -> None:
        super().__init__(f"Model {key} could not be loaded: {message}")
        self.key = key
        self.reason_code = reason_code


class PoolClosedError(PoolError):
    """The worker is shutting down (HTTP 503)."""

    code = "shutting_down"


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A snapshot for ``/health`` and the ZeroMQ ``status`` reply."""

    active: str | None
    model_state: str
    """State of the active model: ``none`` (no active model), ``loading``, ``ready``, ``failed``
    (its last load failed; ``error`` says why) or ``unloaded`` (it loads on the next request)."""
    activating: str | None
    loaded: list[str]
    loading: list[str]
    provider: str | None
    fallback_reason: str | None
    graph: str | None
    """``fused`` or ``original`` for a loaded active model (``ModelInfo.graph``), else None."""
    graph_note: str | None
    error: str | None
    queue_depth: int
    running: int
    queues: dict[str, int] = field(default_factory=dict)


