"""Events: the worker publishes ``[topic, msgpack]`` on a PUB socket; clients subscribe by prefix.

Topics are dotted (``download.progress``), so subscribing to ``download.`` gets every download
event. PUB/SUB drops messages for slow or late subscribers by design: events are notifications, and
the authoritative state is always available from the ``status`` request.

Events name the active model and the downloads, which other local users have no business reading:
every topic frame starts with the per-run ``event_key`` from ``agent.json`` (mode 0600), and the
socket (an XPUB in manual mode) applies only subscriptions that start with that key: subscribe to
``<event_key>download.`` for the ``download.*`` events. Any other subscription (``""`` included)
is ignored, so a subscriber without the key receives nothing at all.

``EventPublisher.events`` is the worker's one ``ipc.publisher.Publisher``: it stamps each event once
and hops to the loop once; the socket is its first sink, and the worker adds the in-process feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from ipc.messages import AnyEvent, Event, encode, event_decoder, topic_of
from ipc.publisher import Publisher
from ipc.server import bind


class EventPublisher:
    """The events socket. ``publish`` works from any thread (through ``events``, which stamps and
    hops to the loop); the socket itself is only touched on the loop's thread."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, session: str, *, key: str | None = None) -> None:
        self.key = key or secrets.token_hex(16)
        """What every subscription must start with (``agent.json``'s ``event_key``)."""
        self._key = self.key.encode()
        self._socket = ctx.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, 10_000)
        self._socket.setsockopt(zmq.XPUB_MANUAL, 1)
        self.endpoint = bind(self._socket, endpoint, "event")
        self.events = Publisher(session, asyncio.get_running_loop())
        """Stamps and delivers every event; the socket is its first sink."""
        self.events.add_sink(self._send)
        self._closed = False
        self.refused = 0
        """Subscriptions ignored because they did not start with the key."""
        self._subscriptions = asyncio.ensure_future(self._apply_subscriptions())

    async def _apply_subscriptions(self) -> None:
        """Apply each subscription that starts with the key to its subscriber's pipe (XPUB_MANUAL:
        ``setsockopt`` acts on the pipe whose message was read last); ignore the rest."""
        while not self._closed:
            try:
                message = await self._socket.recv()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            if len(message) < 1 or message[0] not in (0, 1):
                continue
            given = message[1:1 + len(self._key)]
            if len(given) != len(self._key) or not hmac.compare_digest(given, self._key):
                self.refused += 1
                continue
            option = zmq.SUBSCRIBE if message[0] == 1 else zmq.UNSUBSCRIBE
            with contextlib.suppress(zmq.ZMQError):
                self._socket.setsockopt(option, message[1:])

    @property
    def session(self) -> str:
        return self.events.session

    def publish(self, event: Event) -> None:
        """Publish ``event`` (``session``/``time`` filled in) to the socket and the other sinks;
        safe from any thread, never raises."""
        self.events.publish(event)

    def _send(self, event: Event) -> None:
        """Send a stamped event (the publisher's sink, on the loop's thread)."""
        if self._closed:
            return
        frames = [self._key + topic_of(event).encode(), encode(event)]
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # high-water mark reached: PUB drops, subscribers re-sync from ``status``

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket; events already queued still go out for up to ``linger_ms`` (the worker's
        last ``worker.status`` "stopping" would otherwise be dropped with the socket)."""
        self._closed = True
        self._subscriptions.cancel()
        self._socket.close(linger=linger_ms)


def _subscribe(socket: zmq.Socket[Any], topics: Iterable[str], key: str) -> None:
    for topic in topics:
        socket.setsockopt(zmq.SUBSCRIBE, (key + topic).encode())


def decode_event(frames: list[bytes]) -> Event | None:
    """The event in a ``[topic, payload]`` message, or ``None`` for one this client cannot read."""
    if len(frames) != 2:
        return None
    try:
        event: AnyEvent = event_decoder.decode(frames[1])
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    return event


class EventSubscriber:
    """Blocking subscriber with timeouts (for CLIs, tests and the tray's background thread).

    ``key`` is ``agent.json``'s ``event_key``: without it the agent sends nothing (``""`` only
    suits a publisher that asks for no key)."""

    def __init__(self, endpoint: str, topics: Iterable[str] = ("",), ctx: zmq.Context[Any] | None = None,
                 *, key: str = "") -> None:
        self._ctx = ctx or zmq.Context.instance()
        self._socket = self._ctx.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        _subscribe(self._socket, topics, key)
        self._socket.connect(endpoint)
        self.endpoint = endpoint

    def recv(self, timeout: float) -> Event | None:
        """The next event, or ``None`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(int(remaining * 1000)):
                return None
            event = decode_event(self._socket.recv_multipart())
            if event is not None:
                return event

    def close(self) -> None:
        self._socket.close(linger=0)

    def __enter__(self) -> EventSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEventSubscriber:
    """asyncio subscriber: ``async for event in sub`` or ``await sub.recv(timeout)``; ``key`` as
    for ``EventSubscriber``."""

    def __init__(self, endpoint: str, topics: Iterable[str] = ("",), ctx: zmq.asyncio.Context | None = None,
                 *, key: str = "") -> None:
        self._ctx = ctx or zmq.asyncio.Context.instance()
        self._socket = self._ctx.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        _subscribe(self._socket, topics, key)
        self._socket.connect(endpoint)

    async def recv(self, timeout: float | None = None) -> Event | None:
        while True:
            try:
                frames = await asyncio.wait_for(self._socket.recv_multipart(), timeout)
            except TimeoutError:
                return None
            event = decode_event(frames)
            if event is not None:
                return event

    def __aiter__(self) -> AsyncEventSubscriber:
        return self

    async def __anext__(self) -> Event:
        event = await self.recv()
        assert event is not None
        return event

    def close(self) -> None:
        self._socket.close(linger=0)
