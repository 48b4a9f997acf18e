"""Switching the active model: the ``agent.services.Activations`` the handlers and imports use.

``Activator`` starts a load in the background and the pool makes the variant active once it is
loaded (the pool's ``on_active`` remembers it in the store). If the load fails, the previous model
stays active; if the one that failed was the remembered active model, it is forgotten, with a
``status`` warning, so the next start does not spend the same failed load again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from agent.pool import ModelPool
from agent.store import Store

log = logging.getLogger("hflocal.runtime")


class Activator:
    """Activations over ``pool`` and ``store``, on the event loop it is built on; ``warnings`` is the
    worker's list of ``status`` warnings (appended to, not copied)."""

    def __init__(self, pool: ModelPool, store: Store, warnings: list[str]) -> None:
        self._pool = pool
        self._store = store
        self._warnings = warnings
        self._loop = asyncio.get_running_loop()

    @property
    def active(self) -> str | None:
        return self._pool.active

    def activate(self, key: str) -> str:
        """Load ``key`` in the background and make it active once loaded (remembered across restarts);
        returns the job id its ``model.*`` events carry. If the load fails the previous model stays."""
        job_id = uuid.uuid4().hex[:12]
        task = asyncio.ensure_future(self._load(key, job_id))
        task.add_done_callback(log_task_error)
        return job_id

    def activate_threadsafe(self, key: str) -> None:
        self._loop.call_soon_threadsafe(self.activate, key)

    def forget_threadsafe(self, key: str, timeout: float = 30.0) -> None:
        asyncio.run_coroutine_threadsafe(self._pool.forget(key), self._loop).result(timeout)

    async def _load(self, key: str, job_id: str) -> None:
        try:
            await self._pool.activate(key, job_id=job_id)
        except Exception as exc:  # the pool already published model.failed
            log.warning("could not load %s: %s", key, exc)
            if self._store.active == key:
                # The remembered model failed to load (not a crash: a kill keeps it): forget it, or
                # every start would spend the same failed load again.
                self._store.set_active(None)
                if self._pool.active == key:
                    self._pool.set_active(None)
                self._warnings.append(f"the remembered active model {key} failed to load and is no longer "
                                      f"active ({exc}); 'hflocal use' makes it active again")


def log_task_error(task: asyncio.Future[Any]) -> None:
    """A done callback for background tasks: their failure goes to the log, not to nowhere."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


__all__ = ["Activator", "log_task_error"]
