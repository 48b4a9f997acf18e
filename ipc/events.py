"""Events: the worker publishes ``[topic, msgpack]`` on a PUB socket; clients subscribe by prefix.

Topics are dotted (``download.progress``), so subscribing to ``download.`` gets every download
event. PUB/SUB drops messages for slow or late subscribers by design: events are notifications, and
the authoritative state is always available from the ``status`` request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from ipc.messages import AnyEvent, Event, encode, event_decoder, topic_of
from ipc.server import bind


class EventPublisher:
    """Publishes events from any thread: the socket itself is only touched on the loop's thread."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, session: str) -> None:
        self._socket = ctx.socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, 10_000)
        self.endpoint = bind(self._socket, endpoint, "event")
        self.session = session
        self._loop = asyncio.get_running_loop()
        self._closed = False

    def publish(self, event: Event) -> None:
        """Publish ``event`` (its ``session``/``time`` are filled in). Safe from any thread."""
        stamped = msgspec.structs.replace(event, session=self.session, time=time.time())
        frames = [topic_of(stamped).encode(), encode(stamped)]
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._send(frames)
        elif not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._send, frames)
            except RuntimeError:
                pass  # the loop is shutting down; nobody is left to tell

    def _send(self, frames: list[bytes]) -> None:
        if self._closed:
            return
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # high-water mark reached: PUB drops, subscribers re-sync from ``status``

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket; events already queued still go out for up to ``linger_ms`` (the worker's
        last ``worker.status`` "stopping" would otherwise be dropped with the socket)."""
        self._closed = True
        self._socket.close(linger=linger_ms)


def _subscribe(socket: zmq.Socket[Any], topics: Iterable[str]) -> None:
    for topic in topics:
        socket.setsockopt(zmq.SUBSCRIBE, topic.encode())


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
    """Blocking subscriber with timeouts (for CLIs, tests and the tray's background thread)."""

    def __init__(self, endpoint: str, topics: Iterable[str] = ("",), ctx: zmq.Context[Any] | None = None) -> None:
        self._ctx = ctx or zmq.Context.instance()
        self._socket = self._ctx.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        _subscribe(self._socket, topics)
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
    """asyncio subscriber: ``async for event in sub`` or ``await sub.recv(timeout)``."""

    def __init__(self, endpoint: str, topics: Iterable[str] = ("",), ctx: zmq.asyncio.Context | None = None) -> None:
        self._ctx = ctx or zmq.asyncio.Context.instance()
        self._socket = self._ctx.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        _subscribe(self._socket, topics)
        self._socket.connect(endpoint)

    async def recv(self, timeout: float | None = None) -> Event | None:
        while True:
            try:
                frames = await asyncio.wait_for(self._socket.recv_multipart(), timeout)
            except asyncio.TimeoutError:
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
