"""The worker's one way to publish an event: stamp it once, hop to the event loop's thread once, fan out.

Downloads (their own threads), imports (a thread pool) and the model pool (the loop) all hand their
events to ``Publisher.publish``. It fills in the envelope that ``docs/protocol.md`` §3 gives every
event (``session``, ``time``) exactly once, then hands that same stamped event to each sink on the
loop's thread, in publishing order: the ZeroMQ socket (``ipc.events.EventPublisher``) and the
in-process feed the settings page reads (``agent.feed.EventFeed``). What a caller may rely on:

- ``publish`` is safe from any thread, never blocks and never raises (a failing sink is logged and
  the other sinks still get the event; an event published while the loop shuts down is dropped).
- Every sink sees the same stamped event, so an event has one ``time`` wherever it is read.
- Without a loop (``loop=None``) sinks run on the publishing thread; they must then be thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec

from ipc.messages import Event, topic_of

log = logging.getLogger("hflocal.events")

Sink = Callable[[Event], None]
"""Receives stamped events, on the loop's thread; must not block."""


class Publisher:
    """Stamps events with ``session`` and the time, then delivers them to its sinks (see the module)."""

    def __init__(self, session: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.session = session
        self._loop = loop
        self._sinks: list[tuple[Sink, tuple[str, ...]]] = []

    def add_sink(self, sink: Sink, *, skip: tuple[str, ...] = ()) -> None:
        """Deliver every later event to ``sink``, except those whose topic starts with one of ``skip``."""
        self._sinks.append((sink, skip))

    def stamp(self, event: Event) -> Event:
        """``event`` with this publisher's session and the current time (what ``publish`` sends)."""
        return msgspec.structs.replace(event, session=self.session, time=time.time())

    def publish(self, event: Event) -> None:
        """Stamp ``event`` and deliver it to every sink; any thread (see the module docstring)."""
        try:
            stamped = self.stamp(event)
        except Exception:
            log.exception("could not stamp %r", event)
            return
        loop = self._loop
        if loop is None:
            self._deliver(stamped)
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(stamped)
        elif not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._deliver, stamped)
            except RuntimeError:
                pass  # the loop is shutting down; nobody is left to tell

    def _deliver(self, event: Event) -> None:
        topic = topic_of(event)
        for sink, skip in list(self._sinks):
            if skip and topic.startswith(skip):
                continue
            try:
                sink(event)
            except Exception:
                log.exception("delivering %s failed", topic)


__all__ = ["Publisher", "Sink"]
