"""The model pool: which models are in memory, and whose turn it is to generate on each.

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
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from agent.engine.types import EngineError, LoadedModel, ModelLoader
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
from agent.pool.kinds import check_kind, default_of_kind
from agent.pool.lease import Lease
from agent.settings import ModelSettings
from ipc.messages import Event, ModelFailed, ModelLoading, ModelReady, ModelUnloaded

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- internals


class _Slot:
    """One variant known to the pool: loaded, loading, or pinned by waiting requests."""

    def __init__(self, variant: ResolvedVariant) -> None:
        self.variant = variant
        self.key = variant.key
        self.model: LoadedModel | None = None
        self.load_task: asyncio.Task[LoadedModel] | None = None
        self.users = 0  # leases held or being waited for: pins the slot against unloading
        self.busy = False  # a lease holds the model's one generation turn
        self.turn_queue: deque[asyncio.Future[None]] = deque()
        self.load_waiters = 0
        self.current: Lease | None = None
        self.last_used = time.monotonic()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.avg_turn_s = 1.0

    def waiting(self) -> int:
        return len(self.turn_queue) + self.load_waiters


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
        self._loader = loader
        self._publish = publish
        self._on_active = on_active
        self._active = active
        self._activating: str | None = None
        self.preparing: str | None = None
        """What the agent is doing to have a model active when none is yet (e.g. importing the
        default model); requests that name no model are then told to retry, not that none exists."""
        self._slots: dict[str, _Slot] = {}
        self._failures: dict[str, str] = {}
        self.failed_activation: tuple[str, str, str, str] | None = None
        """``(key, code, message, job_id)`` of the last ``activate`` whose load failed (the previous
        model stayed active), until an ``activate`` succeeds; ``status`` reports it."""
        self._background: set[asyncio.Task[object]] = set()
        self._closed = False

    # ------------------------------------------------------------------ public API

    @property
    def active(self) -> str | None:
        """The active variant key (what a request without ``model`` uses), or ``None``."""
        return self._active

    def set_active(self, key: str | None) -> None:
        """Change the active key without loading anything (e.g. ``None`` when the active variant was
        deleted). ``on_active`` is not called: the caller is the one who knows."""
        old, self._active = self._active, key
        if key in self._slots:
            self._cancel_idle(self._slots[key])
        if old is not None and old in self._slots:
            self._after_idle(self._slots[old])

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
        slot = self._slot_for(variant)
        if slot.waiting() >= self.settings.queue_size:
            raise QueueFullError(
                f"Too many requests are waiting for {slot.key} ({slot.waiting()}); retry shortly",
                retry_after=max(1, min(60, math.ceil(slot.avg_turn_s))),
            )
        self._pin(slot)
        try:
            model = await self._ensure_loaded(slot, self.settings.load_wait_s)
            await self._take_turn(slot)
        except BaseException:
            self._unpin(slot)
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
        slot = self._slot_for(variant)
        self._pin(slot)
        self._activating = variant.key
        try:
            if slot.model is not None or slot.load_task is not None:
                # Already loaded or loading for someone else: the job still gets its own events.
                self._publish(ModelLoading(key=slot.key, job_id=job_id))
                started = time.monotonic()
                try:
                    model = await self._ensure_loaded(slot, None)
                except ModelLoadFailedError as exc:
                    self.failed_activation = (slot.key, exc.reason_code, self._failures.get(slot.key, exc.message), job_id)
                    self._publish(ModelFailed(key=slot.key, code=exc.reason_code, message=exc.message, job_id=job_id))
                    raise
                self._publish(ModelReady(key=slot.key, job_id=job_id, provider=model.info.provider,
                                         load_s=round(time.monotonic() - started, 3)))
            else:
                try:
                    await self._ensure_loaded(slot, None, job_id=job_id)
                except ModelLoadFailedError as exc:
                    self.failed_activation = (slot.key, exc.reason_code, self._failures.get(slot.key, exc.message), job_id)
                    raise
            self.failed_activation = None
            old, self._active = self._active, variant.key
            if self._on_active is not None:
                self._on_active(variant.key)
        finally:
            if self._activating == variant.key:
                self._activating = None
            self._unpin(slot)
        if old is not None and old != variant.key and old in self._slots:
            self._after_idle(self._slots[old])
        return variant

    async def forget(self, key: str, timeout: float = 10.0) -> None:
        """Forget ``key`` before its files go (delete, re-import): it stops being the active model,
        its running generation is stopped (within a step), requests waiting for it fail with
        ``ModelUnavailableError``, and it is unloaded. Unknown keys are fine (nothing to do)."""
        if self._active == key:
            self._active = None
        self._failures.pop(key, None)
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        self._cancel_idle(slot)
        while slot.turn_queue:
            waiter = slot.turn_queue.popleft()
            if not waiter.done():
                waiter.set_exception(ModelUnavailableError(f"{key} was removed"))
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
            self._unload(slot, "deleted")

    def load_error(self, key: str) -> str | None:
        """Why the last load of ``key`` failed, or ``None`` (never tried, or it loaded since)."""
        return self._failures.get(key)

    def status(self) -> PoolStatus:
        """What is loaded and what the active model is doing; cheap, never blocks."""
        active = self._active
        slot = self._slots.get(active) if active else None
        if active is None:
            state = "none"
        elif slot is not None and slot.model is not None:
            state = "ready"
        elif slot is not None and slot.load_task is not None:
            state = "loading"
        elif active in self._failures:
            state = "failed"
        else:
            state = "unloaded"
        info = slot.model.info if slot is not None and slot.model is not None else None
        queues = {s.key: s.waiting() for s in self._slots.values() if s.waiting()}
        return PoolStatus(
            active=active,
            model_state=state,
            activating=self._activating,
            loaded=[s.key for s in self._slots.values() if s.model is not None],
            loading=[s.key for s in self._slots.values() if s.model is None and s.load_task is not None],
            provider=info.provider if info else None,
            fallback_reason=info.fallback_reason if info else None,
            graph=info.graph if info else None,
            graph_note=(info.graph_note or None) if info else None,
            error=self._failures.get(active) if active else None,
            queue_depth=sum(queues.values()),
            running=sum(1 for s in self._slots.values() if s.busy),
            queues=queues,
        )

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new work, stop running generations (within a step), unload everything."""
        if self._closed:
            return
        self._closed = True
        for slot in list(self._slots.values()):
            self._cancel_idle(slot)
            while slot.turn_queue:
                waiter = slot.turn_queue.popleft()
                if not waiter.done():
                    waiter.set_exception(PoolClosedError("The worker is shutting down"))
            if slot.current is not None:
                slot.current.cancel()
        waits: list[asyncio.Future[object]] = [
            asyncio.ensure_future(lease.wait_stopped()) for s in self._slots.values() if (lease := s.current)
        ]
        waits += [asyncio.shield(s.load_task) for s in self._slots.values() if s.load_task]
        if waits:
            done, _ = await asyncio.wait(waits, timeout=timeout)
            for future in done:
                future.cancelled() or future.exception()  # retrieved: failures were reported already
        for slot in list(self._slots.values()):
            if slot.model is not None:
                self._unload(slot, "shutdown")
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)

    # ------------------------------------------------------------------ loading

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosedError("The worker is shutting down")

    def _slot_for(self, variant: ResolvedVariant) -> _Slot:
        slot = self._slots.get(variant.key)
        if slot is None:
            slot = self._slots[variant.key] = _Slot(variant)
        return slot

    async def _ensure_loaded(self, slot: _Slot, wait_s: float | None, *, job_id: str = "") -> LoadedModel:
        if slot.model is not None:
            return slot.model
        if slot.load_task is None:
            self._make_room()
            self._publish(ModelLoading(key=slot.key, job_id=job_id))
            slot.load_task = asyncio.get_running_loop().create_task(self._load(slot, job_id))
        task = slot.load_task
        slot.load_waiters += 1
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait_s)
        except TimeoutError:
            raise LoadTimeoutError(
                f"Model {slot.key} is still loading after {wait_s:g}s; retry shortly",
                retry_after=max(1, min(60, math.ceil(wait_s or 1))),
            ) from None
        finally:
            slot.load_waiters -= 1

    async def _load(self, slot: _Slot, job_id: str) -> LoadedModel:
        variant = slot.variant
        started = time.monotonic()
        try:
            model = await asyncio.to_thread(
                self._loader, variant.path, quantization=variant.quantization,
                device=variant.device, threads=self.settings.threads, kind=variant.kind,
            )
        except BaseException as exc:
            code = exc.code if isinstance(exc, EngineError) else "load_failed"
            message = str(exc) or type(exc).__name__
            log.warning("loading %s failed: %s", slot.key, message, exc_info=not isinstance(exc, EngineError))
            self._failures[slot.key] = message
            slot.load_task = None
            if slot.users == 0 and slot.model is None:
                self._slots.pop(slot.key, None)
            self._publish(ModelFailed(key=slot.key, code=code, message=message, job_id=job_id))
            raise ModelLoadFailedError(slot.key, code, message) from exc
        slot.model = model
        self._failures.pop(slot.key, None)
        self._publish(ModelReady(key=slot.key, job_id=job_id, provider=model.info.provider,
                                 load_s=round(time.monotonic() - started, 3)))
        if self._closed or self._slots.get(slot.key) is not slot:
            self._unload(slot, "shutdown")
        else:
            self._trim()
            if slot.users == 0:
                self._after_idle(slot)
        return model

    # ------------------------------------------------------------------ turns

    async def _take_turn(self, slot: _Slot) -> None:
        """FIFO: wait until this request holds the model's single generation turn."""
        if not slot.busy and not slot.turn_queue:
            slot.busy = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.turn_queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_turn(slot)  # the turn was handed to us just as we gave up
            elif waiter in slot.turn_queue:
                slot.turn_queue.remove(waiter)
            raise

    def _pass_turn(self, slot: _Slot) -> None:
        while slot.turn_queue:
            waiter = slot.turn_queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        slot.busy = False

    def _end_lease(self, slot: _Slot, turn_s: float) -> None:
        """Called once per lease, on the loop, after its generation thread (if any) has stopped."""
        slot.current = None
        slot.avg_turn_s = 0.7 * slot.avg_turn_s + 0.3 * turn_s
        self._pass_turn(slot)
        self._unpin(slot)

    def _pin(self, slot: _Slot) -> None:
        slot.users += 1
        self._cancel_idle(slot)

    def _unpin(self, slot: _Slot) -> None:
        slot.users -= 1
        slot.last_used = time.monotonic()
        if slot.users == 0:
            if slot.model is None and slot.load_task is None:
                if self._slots.get(slot.key) is slot:
                    del self._slots[slot.key]
                return
            self._trim()
            self._after_idle(slot)

    # ------------------------------------------------------------------ unloading

    def _resident(self) -> int:
        return sum(1 for s in self._slots.values() if s.model is not None or s.load_task is not None)

    def _victim(self, *, trimming: bool) -> _Slot | None:
        """The least recently used idle loaded model, the active one last. When trimming back
        under the limit, the active model is spared while another model is resident: that one
        is only busy for now and will be the one to go when it is idle."""
        idle = [s for s in self._slots.values() if s.users == 0 and s.model is not None]
        if trimming and any(s.key != self._active for s in self._slots.values()
                            if s.model is not None or s.load_task is not None):
            idle = [s for s in idle if s.key != self._active]
        idle.sort(key=lambda s: (s.key == self._active, s.last_used))
        return idle[0] if idle else None

    def _make_room(self) -> None:
        """Before a load: unload idle models until the new one fits under ``max_loaded``."""
        while self._resident() >= self.settings.max_loaded and (victim := self._victim(trimming=False)):
            self._unload(victim, "lru")

    def _trim(self) -> None:
        while self._resident() > self.settings.max_loaded and (victim := self._victim(trimming=True)):
            self._unload(victim, "lru")

    def _after_idle(self, slot: _Slot) -> None:
        """Arm the keep-alive timer of an idle, loaded, non-active model."""
        self._cancel_idle(slot)
        if self._closed or slot.users or slot.model is None or slot.key == self._active:
            return
        loop = asyncio.get_running_loop()
        slot.idle_timer = loop.call_later(self.settings.keep_alive_s, self._idle_expired, slot)

    def _cancel_idle(self, slot: _Slot) -> None:
        if slot.idle_timer is not None:
            slot.idle_timer.cancel()
            slot.idle_timer = None

    def _idle_expired(self, slot: _Slot) -> None:
        slot.idle_timer = None
        if (self._slots.get(slot.key) is slot and slot.users == 0 and slot.model is not None
                and slot.key != self._active):
            self._unload(slot, "idle")

    def _unload(self, slot: _Slot, reason: str) -> None:
        self._cancel_idle(slot)
        if self._slots.get(slot.key) is slot:
            del self._slots[slot.key]
        model, slot.model = slot.model, None
        if model is None:
            return
        self._publish(ModelUnloaded(key=slot.key, reason=reason))
        task = asyncio.get_running_loop().create_task(self._close_model(slot.key, model))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _close_model(key: str, model: LoadedModel) -> None:
        try:
            await asyncio.to_thread(model.close)
        except Exception:
            log.exception("closing %s failed", key)
