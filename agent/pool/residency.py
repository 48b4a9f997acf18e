"""Which models are in memory: each loads once, in a thread, and unloads by ``agent.pool.eviction``.

``ModelPool`` decides who gets a model and when; this module only keeps the models themselves. It
runs on the event loop; loads and closes run in threads. Events: ``model.loading``, then
``model.ready`` or ``model.failed``, and ``model.unloaded`` with its reason (``lru``, ``idle``,
``deleted``, ``shutdown``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from agent.engine.types import EngineError, LoadedModel, ModelLoader
from agent.pool import eviction
from agent.pool.lease import Lease
from agent.pool.turns import TurnQueue
from agent.pool.types import LoadTimeoutError, ModelLoadFailedError, ResolvedVariant
from agent.settings import ModelSettings
from ipc.messages import Event, ModelFailed, ModelLoading, ModelReady, ModelUnloaded

log = logging.getLogger(__name__)


class Slot:
    """One variant known to the pool: loaded, loading, or pinned by the requests that want it."""

    def __init__(self, variant: ResolvedVariant) -> None:
        self.variant = variant
        self.key = variant.key
        self.model: LoadedModel | None = None
        self.load_task: asyncio.Task[LoadedModel] | None = None
        self.users = 0
        """Leases held or being waited for: while above 0 the slot is never unloaded."""
        self.turns = TurnQueue()
        self.load_waiters = 0
        self.current: Lease | None = None
        """The lease that holds the turn, if any."""
        self.last_used = time.monotonic()
        self.idle_timer: asyncio.TimerHandle | None = None

    def waiting(self) -> int:
        """Requests waiting for this model: for its turn or for its load."""
        return len(self.turns) + self.load_waiters

    def resident(self) -> bool:
        """Loaded or loading: it counts against ``max_loaded``."""
        return self.model is not None or self.load_task is not None

    def seen(self) -> eviction.Resident:
        return eviction.Resident(key=self.key, loaded=self.model is not None, in_use=self.users > 0,
                                 last_used=self.last_used)


class Residency:
    """The slots by key, their loads and unloads. ``active()`` is the pool's active key, which the
    eviction rules spare; once ``closed`` is set nothing new is kept."""

    def __init__(
        self,
        loader: ModelLoader,
        settings: ModelSettings,
        publish: Callable[[Event], None],
        active: Callable[[], str | None],
    ) -> None:
        self.settings = settings
        self.slots: dict[str, Slot] = {}
        self.failures: dict[str, str] = {}
        """Why the last load of a key failed (until it loads, or is forgotten)."""
        self.closed = False
        self._loader = loader
        self._publish = publish
        self._active = active
        self._background: set[asyncio.Task[None]] = set()

    def slot_for(self, variant: ResolvedVariant) -> Slot:
        slot = self.slots.get(variant.key)
        if slot is None:
            slot = self.slots[variant.key] = Slot(variant)
        return slot

    def pin(self, slot: Slot) -> None:
        """Someone wants ``slot``'s model: it is not unloaded until as many ``unpin``s."""
        slot.users += 1
        self.cancel_idle(slot)

    def unpin(self, slot: Slot) -> None:
        slot.users -= 1
        slot.last_used = time.monotonic()
        if slot.users == 0:
            if not slot.resident():
                if self.slots.get(slot.key) is slot:
                    del self.slots[slot.key]
                return
            self.trim()
            self.after_idle(slot)

    # ------------------------------------------------------------------ loading

    async def ensure_loaded(self, slot: Slot, wait_s: float | None, *, job_id: str = "") -> LoadedModel:
        """``slot``'s model, loading it if nobody has started to (one load, however many wait).
        Waits at most ``wait_s`` (``None``: no bound), then ``LoadTimeoutError`` while the load goes on."""
        if slot.model is not None:
            return slot.model
        if slot.load_task is None:
            self.make_room()
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

    async def _load(self, slot: Slot, job_id: str) -> LoadedModel:
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
            self.failures[slot.key] = message
            slot.load_task = None
            if slot.users == 0 and slot.model is None:
                self.slots.pop(slot.key, None)
            self._publish(ModelFailed(key=slot.key, code=code, message=message, job_id=job_id))
            raise ModelLoadFailedError(slot.key, code, message) from exc
        slot.model = model
        self.failures.pop(slot.key, None)
        self._publish(ModelReady(key=slot.key, job_id=job_id, provider=model.info.provider,
                                 load_s=round(time.monotonic() - started, 3)))
        if self.closed or self.slots.get(slot.key) is not slot:
            self.unload(slot, "shutdown")  # forgotten or shut down while it loaded
        else:
            self.trim()
            if slot.users == 0:
                self.after_idle(slot)
        return model

    # ------------------------------------------------------------------ unloading

    def _residents(self) -> list[eviction.Resident]:
        return [s.seen() for s in self.slots.values() if s.resident()]

    def make_room(self) -> None:
        """Before a load: unload idle models until the new one fits under ``max_loaded``."""
        for key in eviction.to_make_room(self._residents(), self._active(), self.settings.max_loaded):
            self.unload(self.slots[key], "lru")

    def trim(self) -> None:
        """Back under ``max_loaded`` as far as idle models allow."""
        for key in eviction.to_trim(self._residents(), self._active(), self.settings.max_loaded):
            self.unload(self.slots[key], "lru")

    def after_idle(self, slot: Slot) -> None:
        """Arm the keep-alive timer of a model that the idle rule applies to."""
        self.cancel_idle(slot)
        if self.closed or not eviction.unloads_when_idle(slot.seen(), self._active()):
            return
        loop = asyncio.get_running_loop()
        slot.idle_timer = loop.call_later(self.settings.keep_alive_s, self._idle_expired, slot)

    def cancel_idle(self, slot: Slot) -> None:
        if slot.idle_timer is not None:
            slot.idle_timer.cancel()
            slot.idle_timer = None

    def _idle_expired(self, slot: Slot) -> None:
        slot.idle_timer = None
        if self.slots.get(slot.key) is slot and eviction.unloads_when_idle(slot.seen(), self._active()):
            self.unload(slot, "idle")

    def unload(self, slot: Slot, reason: str) -> None:
        """Drop ``slot`` and close its model in a thread (publishing ``model.unloaded``)."""
        self.cancel_idle(slot)
        if self.slots.get(slot.key) is slot:
            del self.slots[slot.key]
        model, slot.model = slot.model, None
        if model is None:
            return
        self._publish(ModelUnloaded(key=slot.key, reason=reason))
        task = asyncio.get_running_loop().create_task(_close_model(slot.key, model))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_closed(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the models being closed."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)


async def _close_model(key: str, model: LoadedModel) -> None:
    try:
        await asyncio.to_thread(model.close)
    except Exception:
        log.exception("closing %s failed", key)
