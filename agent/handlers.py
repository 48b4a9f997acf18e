"""One handler per request: the only place a capability is written.

ZeroMQ, the HTTP management API and the CLI (through ZeroMQ) all end here. Each handler takes the
``Runtime`` and a request struct and returns the request's result struct, or raises an
``AgentError`` whose ``code`` and one-line message become the error reply. Blocking work (Hub calls,
disk scans) runs in a thread (``off_loop``), so the event loop keeps answering pings and HTTP
requests, and a stop never waits for a Hub that does not answer.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from agent import __version__, hub
from agent.errors import AgentError, BadRequestError, NetworkError
from agent.hardware import hardware_info
from agent.model_kinds import normalize_kind
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
    AnyRequest,
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
    Search,
    SearchResult,
    Shutdown,
    ShuttingDown,
    Status,
    StatusResult,
)

if TYPE_CHECKING:
    from agent.runtime import Runtime

T = TypeVar("T")


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
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
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


def _names(fn):  # type: ignore[no-untyped-def]
    """Turn ``InvalidNameError`` (a ValueError) into a ``bad_request`` with the same message."""

    async def wrapper(rt: Runtime, req):  # type: ignore[no-untyped-def]
        try:
            return await fn(rt, req)
        except InvalidNameError as exc:
            raise BadRequestError(str(exc)) from None

    wrapper.__doc__ = fn.__doc__
    return wrapper


async def ping(rt: Runtime, req: Ping) -> PingResult:
    """Answer at once: liveness and the worker's session id (it changes on restart)."""
    return PingResult(session=rt.session, pid=os.getpid(), version=__version__)


async def status(rt: Runtime, req: Status) -> StatusResult:
    """The worker's state now: active model and its load state, loaded models, running downloads."""
    pool = rt.pool.status()
    return StatusResult(
        session=rt.session,
        pid=os.getpid(),
        version=__version__,
        uptime_s=time.time() - rt.started,
        http_url=rt.http_url,
        home=str(rt.paths.home),
        active=pool.active,
        activating=pool.activating,
        loaded=list(pool.loaded),
        model_state=pool.model_state,
        model_error=pool.error,
        provider=pool.provider,
        graph=pool.graph,
        graph_note=pool.graph_note,
        downloads=rt.downloads.running(),
        warnings=list(rt.warnings),
        activation_failed=_failed_activation(rt),
    )


def _failed_activation(rt: Runtime) -> ActivationFailure | None:
    failed = rt.pool.failed_activation
    if failed is None:
        return None
    key, code, message, job_id = failed
    return ActivationFailure(key=key, code=code, message=message, job_id=job_id)


async def search(rt: Runtime, req: Search) -> SearchResult:
    """Hub search for ONNX models of ``req.kind``: chat (text generation) or embed (curated list for an
    empty query)."""
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
async def model_files(rt: Runtime, req: ModelFiles) -> ModelFilesResult:
    """The quantizations a repo offers, each with its files and download size."""
    model_id = validate_model_id(req.model_id)
    revision = validate_revision(req.revision)
    installed = [e.quantization for e in rt.store.list() if e.model_id == model_id and e.status == "ready"]
    return await ask_hub(hub.model_files, model_id, revision, installed)


async def list_installed(rt: Runtime, req: ListInstalled) -> InstalledResult:
    """Every variant in the store, with the active one marked."""
    models = [msgspec.structs.replace(m, load_error=rt.pool.load_error(m.key)) for m in rt.store.installed()]
    return InstalledResult(models=models)


@_names
async def download(rt: Runtime, req: Download) -> JobAccepted:
    """Start or join the download of a variant; replies at once with the job id."""
    models = rt.settings.models
    model_id = validate_model_id(req.model_id)
    quant = normalize_quantization(req.quantization or models.default_quantization)
    device = normalize_device(req.device or models.default_device)
    revision = validate_revision(req.revision)
    job, existing = await off_loop(rt.downloads.start, model_id, quant, device, revision)
    return JobAccepted(job_id=job.job_id, key=job.key, existing=existing)


async def cancel_download(rt: Runtime, req: CancelDownload) -> Cancelled:
    """Cancel a running download; what was fetched stays on disk for a later resume."""
    if not req.job_id and not req.key:
        raise BadRequestError("cancel_download needs a job_id or a key")
    key = str(VariantKey.parse(req.key)) if req.key else None
    job = await off_loop(rt.downloads.cancel, req.job_id, key)
    return Cancelled(job_id=job.job_id, key=job.key)


@_names
async def delete(rt: Runtime, req: Delete) -> Deleted:
    """Delete a variant and the files no other variant uses; a running download of it is cancelled
    first, and if it was the active model no model is active afterwards."""
    key = rt.store.resolve(req.key).key
    await rt.pool.forget(key)
    freed = await off_loop(rt.downloads.delete, key)
    rt.publish(ModelsChanged(keys=[e.key for e in rt.store.list()]))
    return Deleted(key=key, freed_bytes=freed)


@_names
async def activate(rt: Runtime, req: Activate) -> JobAccepted:
    """Make a ready variant active (remembered) and load it in the background."""
    entry = rt.store.resolve(req.key)
    if entry.status != "ready":
        why = f": {entry.error}" if entry.error else ""
        raise AgentError(f"{entry.key} is not ready ({entry.status}{why})", code="conflict")
    job_id = rt.activate(entry.key)
    return JobAccepted(job_id=job_id, key=entry.key)


async def import_model(rt: Runtime, req: ImportModel) -> JobAccepted:
    """Convert a local GGUF / checkpoint / ONNX folder into installed variants (a background job)."""
    job_id, key = await rt.imports.start(req.path, req.quantizations, req.model_id)
    return JobAccepted(job_id=job_id, key=key)


async def hardware(rt: Runtime, req: Hardware) -> HardwareInfo:
    """What this machine offers, and which device ``auto`` picks and why."""
    return await off_loop(hardware_info, rt.paths)


async def shutdown(rt: Runtime, req: Shutdown) -> ShuttingDown:
    """Stop after this reply has gone out."""
    asyncio.get_running_loop().call_later(0.05, rt.stop.set)
    return ShuttingDown(pid=os.getpid())


async def dispatch(rt: Runtime, req: AnyRequest) -> Message:
    match req:
        case Ping():
            return await ping(rt, req)
        case Status():
            return await status(rt, req)
        case Search():
            return await search(rt, req)
        case ModelFiles():
            return await model_files(rt, req)
        case ListInstalled():
            return await list_installed(rt, req)
        case Download():
            return await download(rt, req)
        case CancelDownload():
            return await cancel_download(rt, req)
        case Delete():
            return await delete(rt, req)
        case Activate():
            return await activate(rt, req)
        case ImportModel():
            return await import_model(rt, req)
        case Hardware():
            return await hardware(rt, req)
        case Shutdown():
            return await shutdown(rt, req)
    raise BadRequestError(f"unsupported request {type(req).__name__}")
