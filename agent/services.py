"""The narrow services the request handlers and the import jobs are given, as ``typing.Protocol``s.

Each protocol names only what its users call, so a part's dependencies are visible in its
constructor and nothing reaches through a do-everything object. ``agent.runtime.Runtime`` is the
composition root: it builds the real parts (``Store``, ``Downloads``, ``Imports``, ``ModelPool``,
``Activator``) and passes each one where it is needed; no part receives the ``Runtime`` itself.

Who uses what:

- ``agent.handlers.Handlers``: ``InstalledModels``, ``PoolView``, ``Activations``, ``DownloadJobs``,
  ``ImportJobs``, ``Publish``.
- ``agent.imports.Imports``: ``VariantRecords``, ``Activations``, ``Publish``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agent.download_job import DownloadJob
    from agent.pool import PoolStatus
    from agent.store import VariantEntry
    from ipc.messages import DownloadInfo, Event, InstalledModel

Publish = Callable[["Event"], None]
"""Send an event to every subscriber (ZeroMQ and the settings page); callable from any thread."""


class InstalledModels(Protocol):
    """What the handlers read of the store (``agent.store.Store``)."""

    def list(self) -> builtins.list[VariantEntry]:
        """Every entry, sorted by key."""
        ...

    def installed(self) -> builtins.list[InstalledModel]:
        """Every entry as the protocol's ``InstalledModel``, the active one marked."""
        ...

    def resolve(self, name: str) -> VariantEntry:
        """The entry a model name means (docs/protocol.md, "Model names")."""
        ...


class VariantRecords(Protocol):
    """What an import reads and writes of the store (``agent.store.Store``)."""

    def list(self) -> builtins.list[VariantEntry]:
        ...

    def get(self, key: str) -> VariantEntry | None:
        ...

    def put(self, entry: VariantEntry) -> None:
        ...


class PoolView(Protocol):
    """What the handlers ask of the model pool (``agent.pool.ModelPool``)."""

    failed_activation: tuple[str, str, str, str] | None
    """``(key, code, message, job_id)`` of the last activation whose load failed, or ``None``."""

    def status(self) -> PoolStatus:
        ...

    def load_error(self, key: str) -> str | None:
        ...

    async def forget(self, key: str, timeout: float = 10.0) -> None:
        """Unload ``key`` (waiting for its running requests) and drop it as active."""
        ...


class Activations(Protocol):
    """Which model is active and switching it (``agent.activation.Activator``)."""

    @property
    def active(self) -> str | None:
        """The active variant key, or ``None``."""
        ...

    def activate(self, key: str) -> str:
        """On the event loop: load ``key`` in the background and make it active once loaded; returns
        the job id its ``model.*`` events carry."""
        ...

    def activate_threadsafe(self, key: str) -> None:
        """From a worker thread: ``activate(key)`` on the event loop, without waiting."""
        ...

    def forget_threadsafe(self, key: str, timeout: float = 30.0) -> None:
        """From a worker thread: unload ``key`` and wait until the pool has forgotten it."""
        ...


class DownloadJobs(Protocol):
    """The download job registry (``agent.downloads.Downloads``); blocking calls, run off the loop."""

    def start(
        self, model_id: str, quantization: str | None = None, device: str | None = None, revision: str = "main",
        *, job_id: str | None = None,
    ) -> tuple[DownloadJob, bool]:
        ...

    def cancel(self, job_id: str | None = None, key: str | None = None, wait_s: float = 10.0) -> DownloadJob:
        ...

    def delete(self, key: str) -> int:
        ...

    def running(self) -> builtins.list[DownloadInfo]:
        ...


class ImportJobs(Protocol):
    """Starting an import job (``agent.imports.Imports``)."""

    async def start(self, path_text: str, quantizations: builtins.list[str], model_id: str | None) -> tuple[str, str]:
        """Check the request and start the job; returns ``(job_id, key of the first variant)``."""
        ...


__all__ = [
    "Activations",
    "DownloadJobs",
    "ImportJobs",
    "InstalledModels",
    "PoolView",
    "Publish",
    "VariantRecords",
]
