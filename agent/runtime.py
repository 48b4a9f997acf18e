"""The worker's parts, put together once: store, downloads, imports, model pool and the HTTP app.

``Runtime`` is the composition root: it builds each part, hands every other part the narrow
services it uses (``agent.services``), and owns their lifetimes. The request server and the HTTP
management routes both call ``Runtime.handle``, which dispatches to ``agent.handlers.Handlers``
(one capability, written once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

from agent.activation import Activator, log_task_error
from agent.downloads import Downloads
from agent.engine.loader import load_variant
from agent.errors import AgentError
from agent.feed import EventFeed
from agent.handlers import Handlers
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
        self.pool = ModelPool(
            StoreCatalog(self.store),
            load_variant,
            settings.models,
            self.publish,
            active=self.store.active,
            on_active=self._remember_active,
        )
        self.activations = Activator(self.pool, self.store, self.warnings)
        self.imports = Imports(paths.imported, self.store, self.activations, self.publish)
        self.handlers = Handlers(
            session=session, started=started, http_url=http_url, paths=paths, settings=settings,
            store=self.store, pool=self.pool, activations=self.activations, downloads=self.downloads,
            imports=self.imports, publish=self.publish, warnings=self.warnings, stop=stop,
        )
        self._serving = False
        self._quickstart: asyncio.Future[str | None] | None = None

    def publish(self, event: Event) -> None:
        """Publish ``event`` on ZeroMQ and to in-process subscribers (``feed``); any thread. Stamped
        and handed to the loop once, by ``events``."""
        self.events.publish(event)

    # ------------------------------------------------------------------ requests

    async def handle(self, request: Request) -> Message:
        return await self.handlers.dispatch(request)

    def _remember_active(self, key: str) -> None:
        """The pool's ``on_active``: a loaded variant became active; remembered across restarts."""
        self.store.set_active(key)
        self.publish(ModelActivated(key=key))

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
            self._quickstart.add_done_callback(log_task_error)
            return
        active = self.store.active
        if active is not None:
            entry = self.store.get(active)
            if entry is not None and entry.status == "ready":
                self.activations.activate(active)
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
        except Exception:  # a resume bug must not take the worker down
            log.exception("resuming interrupted downloads failed")

    async def close(self) -> None:
        await asyncio.to_thread(self.downloads.shutdown)
        await self.imports.close()
        await self.pool.close()


async def _close_on(stop: asyncio.Event, feed: EventFeed) -> None:
    await stop.wait()
    feed.close()


__all__ = ["Runtime", "StoreCatalog"]
