"""The worker's parts, put together once: store, downloads, imports, model pool and the HTTP app.

``Runtime`` owns their lifetimes; the request server and the HTTP management routes both call
``Runtime.handle``, which dispatches to ``agent.handlers`` (one capability, written once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.downloads import Downloads
from agent.engine.loader import load_variant
from agent.errors import AgentError
from agent.feed import EventFeed
from agent.handlers import dispatch
from agent.imports import Imports
from agent.paths import Paths
from agent.pool import ModelPool, ModelUnavailableError, ResolvedVariant, UnknownModelError
from agent.settings import Settings
from agent.store import AmbiguousNameError, Store, VariantEntry
from agent.variants import InvalidNameError
from ipc.messages import Event, Message, ModelActivated, Request, WorkerStatus
from ipc.publisher import Publisher


def _created(entry: VariantEntry) -> int:
    if not entry.downloaded_at:
        return 0
    try:
        return int(datetime.strptime(entry.downloaded_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
    except ValueError:
        return 0


def _resolved(entry: VariantEntry) -> ResolvedVariant:
    return ResolvedVariant(
        key=entry.key,
        model_id=entry.model_id,
        path=Path(entry.path),
        quantization=entry.quantization,
        device=entry.device,
        created=_created(entry),
        kind=entry.kind,
    )


class StoreCatalog:
    """The pool's view of the store: names to ready variants (``agent.pool.Catalog``).

    Both are asked on every request. Store entries are immutable (a change replaces the entry), so
    each entry's ``ResolvedVariant`` is kept while the store holds that same entry, and
    ``installed`` returns the same tuple while no entry changed (``/v1/models`` keeps its body).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._resolved: dict[str, tuple[VariantEntry, ResolvedVariant]] = {}
        self._installed: tuple[list[VariantEntry], tuple[ResolvedVariant, ...]] = ([], ())

    def _resolve_entry(self, entry: VariantEntry) -> ResolvedVariant:
        kept = self._resolved.get(entry.key)
        if kept is not None and kept[0] is entry:
            return kept[1]
        variant = _resolved(entry)
        self._resolved[entry.key] = (entry, variant)
        return variant

    def resolve(self, name: str) -> ResolvedVariant:
        try:
            entry = self.store.resolve(name)
        except AmbiguousNameError as exc:
            raise UnknownModelError(name, exc.message) from None
        except (AgentError, InvalidNameError):
            raise UnknownModelError(name) from None
        if entry.status != "ready":
            detail = f": {entry.error}" if entry.error else ""
            raise ModelUnavailableError(f"{entry.key} is installed but {entry.status}{detail}")
        return self._resolve_entry(entry)

    def installed(self) -> tuple[ResolvedVariant, ...]:
        entries = self.store.list()
        last_entries, last = self._installed
        if len(entries) == len(last_entries) and all(a is b for a, b in zip(entries, last_entries, strict=True)):
            return last
        variants = tuple(self._resolve_entry(e) for e in entries if e.status == "ready")
        self._installed = (entries, variants)
        return variants

log = logging.getLogger("hflocal.runtime")


class Runtime:
    def __init__(
        self,
        paths: Paths,
        settings: Settings,
        events: Publisher,
        *,
        session: str,
        http_url: str,
        started: float,
        stop: asyncio.Event,
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.events = events
        self.session = session
        self.http_url = http_url
        self.started = started
        self.stop = stop
        self.warnings: list[str] = []
        self.feed = EventFeed()
        """The same events, in process: the settings page's event stream reads them here (not the
        worker's own heartbeat, which only goes out on ZeroMQ)."""
        events.add_sink(self.feed.deliver, skip=("worker.",))
        self.store = Store(paths)
        self.warnings.extend(self.store.warnings)
        for warning in self.store.warnings:
            log.warning("%s", warning)
        self.downloads = Downloads(self.store, paths, settings, self.publish)
        self.imports = Imports(self)
        self.pool = ModelPool(
            StoreCatalog(self.store),
            load_variant,
            settings.models,
            self.publish,
            active=self.store.active,
            on_active=self._remember_active,
        )
        self._loop = asyncio.get_running_loop()
        self._serving = False
        self._quickstart: asyncio.Future[str | None] | None = None

    def publish(self, event: Event) -> None:
        """Publish ``event`` on ZeroMQ and to in-process subscribers (``feed``); any thread. Stamped
        and handed to the loop once, by ``events``."""
        self.events.publish(event)

    # ------------------------------------------------------------------ requests

    async def handle(self, request: Request) -> Message:
        return await dispatch(self, request)  # type: ignore[arg-type]

    def activate(self, key: str) -> str:
        """Load ``key`` in the background and make it active once loaded (remembered across restarts);
        returns the job id its ``model.*`` events carry. If the load fails the previous model stays."""
        job_id = uuid.uuid4().hex[:12]
        task = asyncio.ensure_future(self._load_active(key, job_id))
        task.add_done_callback(_log_task_error)
        return job_id

    def activate_threadsafe(self, key: str) -> None:
        """From a worker thread: ``activate(key)`` on the event loop (without waiting for the load)."""
        self._loop.call_soon_threadsafe(self.activate, key)

    def pool_forget_threadsafe(self, key: str, timeout: float = 30.0) -> None:
        """From a worker thread: make the pool forget ``key`` and wait until it has."""
        future = asyncio.run_coroutine_threadsafe(self.pool.forget(key), self._loop)
        future.result(timeout)

    def _remember_active(self, key: str) -> None:
        self.store.set_active(key)
        self.publish(ModelActivated(key=key))

    async def _load_active(self, key: str, job_id: str) -> None:
        try:
            await self.pool.activate(key, job_id=job_id)
        except Exception as exc:  # noqa: BLE001 - the pool already published model.failed
            log.warning("could not load %s: %s", key, exc)
            if self.store.active == key:
                # The remembered model failed to load (not a crash: a kill keeps it): forget it, or
                # every start would spend the same failed load again.
                self.store.set_active(None)
                if self.pool.active == key:
                    self.pool.set_active(None)
                self.warnings.append(f"the remembered active model {key} failed to load and is no longer "
                                     f"active ({exc}); 'hflocal use' makes it active again")

    def worker_status(self) -> WorkerStatus:
        pool = self.pool.status()
        return WorkerStatus(
            pid=os.getpid(),
            state="ready" if self._serving else "starting",
            active=pool.active,
            model_state=pool.model_state,
            downloads=len(self.downloads.running()),
            http_url=self.http_url,
        )

    # ------------------------------------------------------------------ lifecycle

    async def serve_http(self, sock: socket.socket, stop: asyncio.Event) -> None:
        from agent.http.access import TokenSource
        from agent.http.app import create_app, serve_http
        from agent.http.state import Management

        host, port = sock.getsockname()[:2]
        management = Management(handle=self.handle, feed=self.feed, tokens=TokenSource(self.paths.connection))
        app = create_app(self.pool, self.settings, management=management)
        # End the page's event streams as soon as the worker stops, so the server need not wait for them.
        closer = asyncio.ensure_future(_close_on(stop, self.feed))
        try:
            await serve_http(app, host, port, stop, sock=sock)
        finally:
            closer.cancel()
            self.feed.close()

    def started_serving(self, *, default_model: bool = False) -> None:
        """Called once clients can connect: resume interrupted downloads, load the active model.
        With ``default_model`` (``serve --default-model``) ``agent.quickstart`` also makes sure one
        is installed and active first."""
        self._serving = True
        if self.settings.hub.resume_on_start and self.store.interrupted():
            # Resuming asks the Hub about each repo first, which may hang on a slow or dead Hub: never
            # on the event loop (pings and HTTP must answer meanwhile), never joined at exit.
            threading.Thread(target=self._resume_interrupted, name="resume-downloads", daemon=True).start()
        if default_model:
            from agent.quickstart import ensure_default_model

            self._quickstart = asyncio.ensure_future(ensure_default_model(self))
            self._quickstart.add_done_callback(_log_task_error)
            return
        active = self.store.active
        if active is not None:
            entry = self.store.get(active)
            if entry is not None and entry.status == "ready":
                self.activate(active)
            elif entry is None:
                self.warnings.append(f"the remembered active model {active} is not installed any more")
            else:
                why = f": {entry.error}" if entry.error else ""
                self.warnings.append(f"the remembered active model {active} was not loaded: it is {entry.status}{why}")

    def _resume_interrupted(self) -> None:
        """In a thread: continue downloads a stopped or killed worker left ``downloading``; what
        cannot be resumed now becomes a ``status`` warning."""
        try:
            for job in self.downloads.resume_interrupted():
                log.info("resuming the download of %s", job.key)
            self.warnings.extend(self.downloads.warnings)
        except Exception:  # noqa: BLE001 - a resume bug must not take the worker down
            log.exception("resuming interrupted downloads failed")

    async def close(self) -> None:
        await asyncio.to_thread(self.downloads.shutdown)
        await self.imports.close()
        await self.pool.close()


async def _close_on(stop: asyncio.Event, feed: EventFeed) -> None:
    await stop.wait()
    feed.close()


def _log_task_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


__all__ = ["Runtime", "StoreCatalog"]
