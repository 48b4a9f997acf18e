"""One handler per request: the only place a capability is written.

ZeroMQ, the HTTP management API and the CLI (through ZeroMQ) all end here. ``Handlers`` is given
the narrow services it uses (``agent.services``: the store's names, the pool's state, activations,
download and import jobs, the event publisher) by the composition root, ``agent.runtime.Runtime``.
Each handler takes a request struct and returns the request's result struct, or raises an
``AgentError`` whose ``code`` and one-line message become the error reply. Blocking work (Hub calls,
disk scans) runs in a thread (``off_loop``), so the event loop keeps answering pings and HTTP
requests, and a stop never waits for a Hub that does not answer.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec

from agent import __version__, hub
from agent.errors import AgentError, BadRequestError, NetworkError
from agent.hardware import hardware_info
from agent.model_kinds import normalize_kind
from agent.paths import Paths
from agent.services import Activations, DownloadJobs, ImportJobs, InstalledModels, PoolView, Publish
from agent.settings import Settings
from agent.variants import (
    InvalidNameError,
    VariantKey,
    normalize_device,
    normalize_quantization,
    validate_model_id,
    validate_revision,
)
from ipc.messages import (
    Activate,
    ActivationFailure,
    CancelDownload,
    Cancelled,
    Delete,
    Deleted,
    Download,
    Hardware,
    HardwareInfo,
    ImportModel,
    InstalledResult,
    JobAccepted,
    ListInstalled,
    Message,
    ModelFiles,
    ModelFilesResult,
    ModelsChanged,
    Ping,
    PingResult,
    Request,
    Search,
    SearchResult,
    Shutdown,
    ShuttingDown,
    Status,
    StatusResult,
)

T = TypeVar("T")
H = TypeVar("H")
R = TypeVar("R")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a daemon thread, awaited.

    Unlike ``asyncio.to_thread`` the thread is never joined: when the worker stops, a call stuck on
    a Hub that does not answer is abandoned instead of holding the exit (asyncio.run joins its
    default executor). Cancelling the await abandons the call the same way.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (fn(*args), None)
        except BaseException as exc:  # handed to the awaiting coroutine
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:
            pass  # the loop is closed: the worker stopped and nobody waits for this any more

    threading.Thread(target=run, name=f"handler-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return await future


HUB_ANSWER_S = 30.0
"""How long ``search`` and ``model_files`` wait for the Hub before answering ``network``. The client
has no timeout of its own on some calls (``list_models``), so a Hub that accepts the connection and
never answers would otherwise leave the caller to its own deadline and a misleading "no reply from
the agent". The abandoned call finishes (or not) in its daemon thread."""


async def ask_hub(fn: Callable[..., T], *args: Any) -> T:
    """``off_loop(fn, *args)`` for a read-only Hub call, answered ``network`` after ``HUB_ANSWER_S``."""
    try:
        return await asyncio.wait_for(off_loop(fn, *args), HUB_ANSWER_S)
    except TimeoutError:
        raise NetworkError(hub.endpoint(), f"no answer within {HUB_ANSWER_S:g} s") from None


def _names(fn: Callable[[H, R], Awaitable[T]]) -> Callable[[H, R], Awaitable[T]]:
    """Turn ``InvalidNameError`` (a ValueError) into a ``bad_request`` with the same message."""

    @functools.wraps(fn)
    async def wrapper(handlers: H, req: R) -> T:
        try:
            return await fn(handlers, req)
        except InvalidNameError as exc:
            raise BadRequestError(str(exc)) from None

    return wrapper


class Handlers:
    """The worker's request handlers over the services they use. ``warnings`` is the worker's live
    list of ``status`` warnings; ``stop`` is set to shut the worker down."""

    def __init__(
        self,
        *,
        session: str,
        started: float,
        http_url: str,
        paths: Paths,
        settings: Settings,
        store: InstalledModels,
        pool: PoolView,
        activations: Activations,
        downloads: DownloadJobs,
        imports: ImportJobs,
        publish: Publish,
        warnings: Sequence[str],
        stop: asyncio.Event,
    ) -> None:
        self.session = session
        self.started = started
        self.http_url = http_url
        self.paths = paths
        self.settings = settings
        self.store = store
        self.pool = pool
        self.activations = activations
        self.downloads = downloads
        self.imports = imports
        self.publish = publish
        self.warnings = warnings
        self.stop = stop

    async def dispatch(self, req: Request) -> Message:
        match req:
            case Ping():
                return await self.ping(req)
            case Status():
                return await self.status(req)
            case Search():
                return await self.search(req)
            case ModelFiles():
                return await self.model_files(req)
            case ListInstalled():
                return await self.list_installed(req)
            case Download():
                return await self.download(req)
            case CancelDownload():
                return await self.cancel_download(req)
            case Delete():
                return await self.delete(req)
            case Activate():
                return await self.activate(req)
            case ImportModel():
                return await self.import_model(req)
            case Hardware():
                return await self.hardware(req)
            case Shutdown():
                return await self.shutdown(req)
        raise BadRequestError(f"unsupported request {type(req).__name__}")

    async def ping(self, req: Ping) -> PingResult:
        """Answer at once: liveness and the worker's session id (it changes on restart)."""
        return PingResult(session=self.session, pid=os.getpid(), version=__version__)

    async def status(self, req: Status) -> StatusResult:
        """The worker's state now: active model and its load state, loaded models, running downloads."""
        pool = self.pool.status()
        return StatusResult(
            session=self.session,
            pid=os.getpid(),
            version=__version__,
            uptime_s=time.time() - self.started,
            http_url=self.http_url,
            home=str(self.paths.home),
            active=pool.active,
            activating=pool.activating,
            loaded=list(pool.loaded),
            model_state=pool.model_state,
            model_error=pool.error,
            provider=pool.provider,
            graph=pool.graph,
            graph_note=pool.graph_note,
            downloads=self.downloads.running(),
            warnings=list(self.warnings),
            activation_failed=self._failed_activation(),
        )

    def _failed_activation(self) -> ActivationFailure | None:
        failed = self.pool.failed_activation
        if failed is None:
            return None
        key, code, message, job_id = failed
        return ActivationFailure(key=key, code=code, message=message, job_id=job_id)

    async def search(self, req: Search) -> SearchResult:
        """Hub search for ONNX models of ``req.kind``: chat (text generation) or embed (curated list for
        an empty query)."""
        if not 1 <= req.limit <= 200:
            raise BadRequestError(f"limit must be between 1 and 200, got {req.limit}")
        try:
            kind = normalize_kind(req.kind)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
        if not req.query.strip():
            models, reached = await ask_hub(hub.curated_listing, kind)
            return SearchResult(query=req.query, models=models[:req.limit], kind=kind, hub_reached=reached)
        models = await ask_hub(hub.search, req.query.strip(), req.limit, kind)
        return SearchResult(query=req.query, models=models, kind=kind)

    @_names
    async def model_files(self, req: ModelFiles) -> ModelFilesResult:
        """The quantizations a repo offers, each with its files and download size."""
        model_id = validate_model_id(req.model_id)
        revision = validate_revision(req.revision)
        installed = [e.quantization for e in self.store.list() if e.model_id == model_id and e.status == "ready"]
        return await ask_hub(hub.model_files, model_id, revision, installed)

    async def list_installed(self, req: ListInstalled) -> InstalledResult:
        """Every variant in the store, with the active one marked."""
        models = [msgspec.structs.replace(m, load_error=self.pool.load_error(m.key)) for m in self.store.installed()]
        return InstalledResult(models=models)

    @_names
    async def download(self, req: Download) -> JobAccepted:
        """Start or join the download of a variant; replies at once with the job id. The request names
        what to fetch, not an installed variant: no name is resolved."""
        models = self.settings.models
        model_id = validate_model_id(req.model_id)
        quant = normalize_quantization(req.quantization or models.default_quantization)
        device = normalize_device(req.device or models.default_device)
        revision = validate_revision(req.revision)
        job, existing = await off_loop(self.downloads.start, model_id, quant, device, revision)
        return JobAccepted(job_id=job.job_id, key=job.key, existing=existing)

    async def cancel_download(self, req: CancelDownload) -> Cancelled:
        """Cancel a running download; what was fetched stays on disk for a later resume."""
        if not req.job_id and not req.key:
            raise BadRequestError("cancel_download needs a job_id or a key")
        key = str(VariantKey.parse(req.key)) if req.key else None
        job = await off_loop(self.downloads.cancel, req.job_id, key)
        return Cancelled(job_id=job.job_id, key=job.key)

    @_names
    async def delete(self, req: Delete) -> Deleted:
        """Delete a variant and the files no other variant uses; a running download of it is cancelled
        first, and if it was the active model no model is active afterwards."""
        key = self.store.resolve(req.key).key
        await self.pool.forget(key)
        freed = await off_loop(self.downloads.delete, key)
        self.publish(ModelsChanged(keys=[e.key for e in self.store.list()]))
        return Deleted(key=key, freed_bytes=freed)

    @_names
    async def activate(self, req: Activate) -> JobAccepted:
        """Make a ready variant active (remembered) and load it in the background."""
        entry = self.store.resolve(req.key)
        if entry.status != "ready":
            why = f": {entry.error}" if entry.error else ""
            raise AgentError(f"{entry.key} is not ready ({entry.status}{why})", code="conflict")
        job_id = self.activations.activate(entry.key)
        return JobAccepted(job_id=job_id, key=entry.key)

    async def import_model(self, req: ImportModel) -> JobAccepted:
        """Convert a local GGUF / checkpoint / ONNX folder into installed variants (a background job)."""
        job_id, key = await self.imports.start(req.path, req.quantizations, req.model_id)
        return JobAccepted(job_id=job_id, key=key)

    async def hardware(self, req: Hardware) -> HardwareInfo:
        """What this machine offers, and which device ``auto`` picks and why."""
        return await off_loop(hardware_info, self.paths)

    async def shutdown(self, req: Shutdown) -> ShuttingDown:
        """Stop after this reply has gone out."""
        asyncio.get_running_loop().call_later(0.05, self.stop.set)
        return ShuttingDown(pid=os.getpid())


__all__ = ["Handlers", "ask_hub", "off_loop"]
