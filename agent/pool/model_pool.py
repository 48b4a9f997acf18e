"""The model pool: which model a request gets, when it may generate, and which model is active.

The parts: ``agent.pool.residency`` keeps the models in memory (loads and unloads), by the rules of
``agent.pool.eviction`` (pure functions); ``agent.pool.turns`` is each model's FIFO turn queue;
``agent.pool.kinds`` picks a model of the right kind. This module puts them together behind
``acquire``, ``activate``, ``forget``, ``status`` and ``close``.

Pure asyncio plus threads, no HTTP. Every method is called on the worker's event loop; model loads,
tokenization and generation run in threads and never block it. What a caller may rely on:

- A model loads on first use, in a thread, publishing ``model.loading`` then ``model.ready`` or
  ``model.failed``. Requests arriving while it loads wait for that same load (at most
  ``load_wait_s``; longer gives ``LoadTimeoutError`` while the load carries on).
- At most ``max_loaded`` models are kept: loading another unloads the least recently used idle one
  (``model.unloaded`` reason ``lru``). A model that is generating or has requests waiting is never
  unloaded; if all are busy the pool goes over the limit and trims back as soon as one is idle.
  Models other than the active one unload after ``keep_alive_s`` idle (reason ``idle``).
- Every variant has a kind (``chat`` or ``embed``) that picks its engine; ``acquire(name, kind)``
  refuses a model of the other kind (``ModelKindError``, before anything loads), and both kinds
  share ``max_loaded``.
- One generation at a time per loaded model, FIFO, with at most ``queue_size`` requests waiting per
  model; one more gives ``QueueFullError`` (HTTP 503 + ``Retry-After``).
- A lease's slot is freed when its generation thread has really stopped: cancelling the consumer
  (a client disconnect) sets the cancel event, the engine stops within a step, then the next
  request runs. ``activate`` never disturbs in-flight generations: they finish on their model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from agent.engine.types import ModelLoader
from agent.pool.kinds import check_kind, default_of_kind
from agent.pool.lease import Lease
from agent.pool.residency import Residency, Slot
from agent.pool.types import (
    Catalog,
    LoadTimeoutError,
    ModelLoadFailedError,
    ModelUnavailableError,
    PoolClosedError,
    PoolStatus,
    QueueFullError,
    ResolvedVariant,
    UnknownModelError,
)
from agent.settings import ModelSettings
from ipc.messages import Event, ModelFailed, ModelLoading, ModelReady


class ModelPool:
    """Loads models on demand and hands out one generation turn at a time per model (see module doc).

    ``publish`` is called on the loop with ``model.*`` events (``session``/``time`` are left for the
    publisher to stamp). The pool owns the active key at run time: ``active`` is the key remembered
    from last time (not loaded until asked, or until the caller ``activate``s it), requests without
    a model use it, and ``on_active(key)`` is called after ``activate`` succeeds so the store can
    remember the choice. All methods must be called on the event loop that runs the pool.
    """

    def __init__(
        self,
        catalog: Catalog,
        loader: ModelLoader,
        settings: ModelSettings,
        publish: Callable[[Event], None],
        *,
        active: str | None = None,
        on_active: Callable[[str], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        self._publish = publish
        self._on_active = on_active
        self._active = active
        self._activating: str | None = None
        self.preparing: str | None = None
        """What the agent is doing to have a model active when none is yet (e.g. importing the
        default model); requests that name no model are then told to retry, not that none exists."""
        self._models = Residency(loader, settings, publish, lambda: self._active)
        self.failed_activation: tuple[str, str, str, str] | None = None
        """``(key, code, message, job_id)`` of the last ``activate`` whose load failed (the previous
        model stayed active), until an ``activate`` succeeds; ``status`` reports it."""

    # ------------------------------------------------------------------ public API

    @property
    def active(self) -> str | None:
        """The active variant key (what a request without ``model`` uses), or ``None``."""
        return self._active

    def set_active(self, key: str | None) -> None:
        """Change the active key without loading anything (e.g. ``None`` when the active variant was
        deleted). ``on_active`` is not called: the caller is the one who knows."""
        old, self._active = self._active, key
        slots = self._models.slots
        if key in slots:
            self._models.cancel_idle(slots[key])
        if old is not None and old in slots:
            self._models.after_idle(slots[old])

    def resolve(self, name: str | None, kind: str | None = None) -> ResolvedVariant:
        """The installed variant ``name`` means; ``None`` means the active model. Raises
        ``UnknownModelError`` (also when ``None`` and nothing is active) or ``ModelUnavailableError``.

        With ``kind`` the variant must be of that kind, else ``ModelKindError``. For ``embed``, no
        ``name`` means the active model if it embeds, else the only installed embedding model
        (``agent.pool.kinds.default_of_kind``).
        """
        if name is None and kind == "embed":
            return default_of_kind(self.catalog, self._active, kind)
        if name is None:
            if self._active is None:
                getting_ready = f"{self._activating} is loading" if self._activating else self.preparing
                if getting_ready:
                    raise LoadTimeoutError(f"No model is active yet: {getting_ready}; retry shortly", retry_after=5)
                raise UnknownModelError(None)
            return check_kind(self.catalog.resolve(self._active), kind, active=True)
        return check_kind(self.catalog.resolve(name), kind)

    def installed(self) -> Sequence[ResolvedVariant]:
        return self.catalog.installed()

    async def acquire(self, name: str | None, kind: str = "chat") -> Lease:
        """Resolve ``name`` (a model of ``kind``: generation routes leave it ``chat``), load it if
        needed and wait for its turn; the caller must ``release()``.

        Raises ``UnknownModelError``, ``ModelKindError``, ``ModelUnavailableError``, ``QueueFullError``,
        ``LoadTimeoutError``, ``ModelLoadFailedError`` or ``PoolClosedError``; cancelling the caller
        while it waits gives up its place and leaves any load running.
        """
        self._check_open()
        variant = self.resolve(name, kind)
        slot = self._models.slot_for(variant)
        if slot.waiting() >= self.settings.queue_size:
            raise QueueFullError(
                f"Too many requests are waiting for {slot.key} ({slot.waiting()}); retry shortly",
                retry_after=slot.turns.retry_after(),
            )
        self._models.pin(slot)
        try:
            model = await self._models.ensure_loaded(slot, self.settings.load_wait_s)
            await slot.turns.take()
        except BaseException:
            self._models.unpin(slot)
            raise
        lease = Lease(slot.key, model, on_done=lambda turn_s: self._end_lease(slot, turn_s))
        slot.current = lease
        return lease

    @asynccontextmanager
    async def generation(self, name: str | None, kind: str = "chat") -> AsyncIterator[Lease]:
        """``async with pool.generation(model) as lease:`` — ``acquire`` with a guaranteed release."""
        lease = await self.acquire(name, kind)
        try:
            yield lease
        finally:
            lease.release()

    async def activate(self, key: str, *, job_id: str = "") -> ResolvedVariant:
        """Load ``key`` (no ``load_wait_s`` bound), then make it the active model and call
        ``on_active``. Publishes ``model.loading`` → ``model.ready`` | ``model.failed`` carrying
        ``job_id``; raises what ``acquire`` raises for loading. Generations already running or
        queued on the previous model finish there; it then unloads by the usual rules."""
        self._check_open()
        variant = self.catalog.resolve(key)
        models = self._models
        slot = models.slot_for(variant)
        models.pin(slot)
        self._activating = variant.key
        try:
            shared = slot.resident()  # loaded or loading for someone else: the job still gets its own events
            if shared:
                self._publish(ModelLoading(key=slot.key, job_id=job_id))
            started = time.monotonic()
            try:
                model = await models.ensure_loaded(slot, None, job_id="" if shared else job_id)
            except ModelLoadFailedError as exc:
                message = models.failures.get(slot.key, exc.message)
                self.failed_activation = (slot.key, exc.reason_code, message, job_id)
                if shared:
                    self._publish(ModelFailed(key=slot.key, code=exc.reason_code, message=exc.message, job_id=job_id))
                raise
            if shared:
                self._publish(ModelReady(key=slot.key, job_id=job_id, provider=model.info.provider,
                                         load_s=round(time.monotonic() - started, 3)))
            self.failed_activation = None
            old, self._active = self._active, variant.key
            if self._on_active is not None:
                self._on_active(variant.key)
        finally:
            if self._activating == variant.key:
                self._activating = None
            models.unpin(slot)
        if old is not None and old != variant.key and old in models.slots:
            models.after_idle(models.slots[old])
        return variant

    async def forget(self, key: str, timeout: float = 10.0) -> None:
        """Forget ``key`` before its files go (delete, re-import): it stops being the active model,
        its running generation is stopped (within a step), requests waiting for it fail with
        ``ModelUnavailableError``, and it is unloaded. Unknown keys are fine (nothing to do)."""
        if self._active == key:
            self._active = None
        self._models.failures.pop(key, None)
        slot = self._models.slots.pop(key, None)
        if slot is None:
            return
        self._models.cancel_idle(slot)
        slot.turns.refuse_waiters(ModelUnavailableError(f"{key} was removed"))
        waits: list[asyncio.Future[object]] = []
        if slot.current is not None:
            slot.current.cancel()
            waits.append(asyncio.ensure_future(slot.current.wait_stopped()))
        if slot.load_task is not None:
            waits.append(asyncio.shield(slot.load_task))  # _load unloads a slot no longer in the pool
        if waits:
            done, _ = await asyncio.wait(waits, timeout=timeout)
            for future in done:
                future.cancelled() or future.exception()
        if slot.model is not None:
            self._models.unload(slot, "deleted")

    def load_error(self, key: str) -> str | None:
        """Why the last load of ``key`` failed, or ``None`` (never tried, or it loaded since)."""
        return self._models.failures.get(key)

    def status(self) -> PoolStatus:
        """What is loaded and what the active model is doing; cheap, never blocks."""
        active = self._active
        slots, failures = self._models.slots.values(), self._models.failures
        slot = self._models.slots.get(active) if active else None
        if active is None:
            state = "none"
        elif slot is not None and slot.model is not None:
            state = "ready"
        elif slot is not None and slot.load_task is not None:
            state = "loading"
        elif active in failures:
            state = "failed"
        else:
            state = "unloaded"
        info = slot.model.info if slot is not None and slot.model is not None else None
        queues = {s.key: s.waiting() for s in slots if s.waiting()}
        return PoolStatus(
            active=active,
            model_state=state,
            activating=self._activating,
            loaded=[s.key for s in slots if s.model is not None],
            loading=[s.key for s in slots if s.model is None and s.load_task is not None],
            provider=info.provider if info else None,
            fallback_reason=info.fallback_reason if info else None,
            graph=info.graph if info else None,
            graph_note=(info.graph_note or None) if info else None,
            error=failures.get(active) if active else None,
            queue_depth=sum(queues.values()),
            running=sum(1 for s in slots if s.turns.busy),
            queues=queues,
        )

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new work, stop running generations (within a step), unload everything."""
        models = self._models
        if models.closed:
            return
        models.closed = True
        for slot in list(models.slots.values()):
            models.cancel_idle(slot)
            slot.turns.refuse_waiters(PoolClosedError("The worker is shutting down"))
            if slot.current is not None:
                slot.current.cancel()
        waits: list[asyncio.Future[object]] = [
            asyncio.ensure_future(lease.wait_stopped()) for s in models.slots.values() if (lease := s.current)
        ]
        waits += [asyncio.shield(s.load_task) for s in models.slots.values() if s.load_task]
        if waits:
            done, _ = await asyncio.wait(waits, timeout=timeout)
            for future in done:
                future.cancelled() or future.exception()  # retrieved: failures were reported already
        for slot in list(models.slots.values()):
            if slot.model is not None:
                models.unload(slot, "shutdown")
        await models.wait_closed(timeout)

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._models.closed:
            raise PoolClosedError("The worker is shutting down")

    def _end_lease(self, slot: Slot, turn_s: float) -> None:
        """Called once per lease, on the loop, after its generation thread (if any) has stopped."""
        slot.current = None
        slot.turns.done(turn_s)
        self._models.unpin(slot)
