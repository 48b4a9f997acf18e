"""In-process fan-out of the worker's events, for the settings page's event stream (SSE).

The worker's one ``ipc.publisher.Publisher`` stamps every event once and delivers it, on the event
loop's thread, to the ZeroMQ socket *and* to an ``EventFeed`` (``deliver`` is that sink), so the
HTTP side can relay events without a ZeroMQ round trip. What a caller may rely on:

- ``deliver`` runs on the feed's loop only (the publisher has already hopped there) and never blocks.
- Each subscriber has its own bounded queue. A subscriber that falls behind loses the queued events
  and receives ``RESYNC`` instead, meaning "re-read the state" (as ZeroMQ subscribers re-sync from
  ``status``); it never makes the worker wait or grow memory.
- ``close`` ends every subscription: ``get`` returns ``None`` from then on.
"""

from __future__ import annotations

import asyncio
from typing import Final, Self

from ipc.messages import Event

QUEUE_SIZE = 256
"""Events a subscriber may have pending before it is told to re-sync."""


class Resync:
    """The type of ``RESYNC``."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = Resync()
"""Returned by ``Subscription.get`` after events were dropped for a slow subscriber."""


class Subscription:
    """One subscriber's queue; use as a context manager so it is always removed."""

    def __init__(self, feed: EventFeed, size: int) -> None:
        self._feed = feed
        self._queue: asyncio.Queue[Event | Resync | None] = asyncio.Queue(size)
        self.dropped = 0

    def _offer(self, item: Event | Resync | None) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None if item is None else RESYNC)

    async def get(self, timeout: float | None = None) -> Event | Resync | None:
        """The next event, ``RESYNC``, or ``None`` once the feed is closed. Raises ``TimeoutError``
        after ``timeout`` seconds without one (keep-alive time for the caller)."""
        if self._feed.closed and self._queue.empty():
            return None
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is None:
            self._queue.put_nowait(None)  # stay closed for later calls
        return item

    def close(self) -> None:
        self._feed._subscribers.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventFeed:
    """Fan-out of stamped events to in-process subscribers on one event loop."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self.closed = False

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self._queue_size)
        if self.closed:
            sub._offer(None)
        else:
            self._subscribers.add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def deliver(self, event: Event) -> None:
        """Queue the (already stamped) ``event`` for every subscriber; on the feed's loop only."""
        if not self.closed:
            self._deliver(event)

    def _deliver(self, item: Event | None) -> None:
        for sub in list(self._subscribers):
            sub._offer(item)

    def close(self) -> None:
        """End every subscription (called when the worker stops, so streams end at once)."""
        if self.closed:
            return
        self.closed = True
        self._deliver(None)
        self._subscribers.clear()


__all__ = ["RESYNC", "EventFeed", "Resync", "Subscription"]
