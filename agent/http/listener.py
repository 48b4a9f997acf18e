"""Hypercorn's accept loop with a bound on open connections, and the limits the server runs with.

``hypercorn.asyncio.serve`` accepts every connection it is offered, and each one costs memory
(buffers, a protocol object, tasks) and a file descriptor until it closes: 10 000 idle connections
took 126 MB that the allocator kept after they closed. ``serve_bounded`` runs the same pieces as
Hypercorn's ``worker_serve`` (lifespan, one ``TCPServer`` per connection, graceful shutdown) for
plain-TCP sockets, and answers a connection over ``max_connections`` with a one-line 503 and
closes it. What a caller may rely on (the numbers are ``LIMITS``, documented in the README):

- at most ``max_connections`` connections are served at once (HTTP/1.1 and HTTP/2 alike); the
  limit is also kept under half the process's file-descriptor limit, so that models, logs and the
  ZeroMQ sockets can always open files;
- an idle connection (no request in progress) is closed after ``keep_alive_timeout`` seconds, and
  one the client closed is let go at once;
- an HTTP/2 connection has at most ``h2_max_concurrent_streams`` streams open and is sent GOAWAY
  after ``keep_alive_max_requests`` streams (reset ones count), so that "rapid reset" (opening and
  cancelling streams in a loop) costs a client its connection rather than the agent its loop.

It uses Hypercorn's internal classes (``TCPServer``, ``Lifespan``, ``WorkerContext``); the
version is pinned in ``constraints.txt`` and ``tests/reliability/test_hostile_pages.py`` covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.utils import wrap_app
from quart import Quart

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_connections: int = 1000
    keep_alive_timeout: float = 30.0
    h2_max_concurrent_streams: int = 32
    keep_alive_max_requests: int = 200
    backlog: int = 256


LIMITS = Limits()


class _Connection(TCPServer):
    """Hypercorn's connection, let go as soon as an idle client has closed it: Hypercorn keeps
    such a connection (and its slot under the limit) until ``keep_alive_timeout`` runs out."""

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()


def connection_limit(wanted: int = LIMITS.max_connections) -> int:
    """``wanted``, kept under half the soft limit on open files (at least 16)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft // 2))


def configure(config: Config, limits: Limits = LIMITS) -> None:
    """Set Hypercorn's own limits (the connection bound is ``serve_bounded``'s)."""
    config.keep_alive_timeout = limits.keep_alive_timeout
    config.h2_max_concurrent_streams = limits.h2_max_concurrent_streams
    config.keep_alive_max_requests = limits.keep_alive_max_requests
    config.backlog = limits.backlog


def refusal(limit: int) -> bytes:
    """What a connection over the limit gets before it is closed (an HTTP/1.1 503, OpenAI-shaped)."""
    body = (b'{"error":{"message":"too many open connections to hflocal (limit %d); close idle ones or retry",'
            b'"type":"server_error","param":null,"code":"too_many_connections"}}' % limit)
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body)) + body


async def serve_bounded(app: Quart, config: Config, sock: socket.socket, *,
                        shutdown_trigger: Callable[[], Awaitable[object]], max_connections: int) -> None:
    """Serve ``app`` on the listening ``sock`` until ``shutdown_trigger`` returns (see the module
    docstring); then stop accepting, give open connections ``config.graceful_timeout`` seconds
    and run the app's shutdown."""
    loop = asyncio.get_running_loop()
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, object] = {}
    lifespan = Lifespan(wrapped, config, loop, lifespan_state)
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    if lifespan_task.done() and lifespan_task.exception() is not None:
        raise lifespan_task.exception()  # type: ignore[misc]
    context = WorkerContext(None)
    connections: set[asyncio.Task[None]] = set()
    refused = 0

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal refused
        if len(connections) >= max_connections:
            refused += 1
            if refused == 1 or refused % 1000 == 0:
                log.warning("refused a connection: %d open (the limit); %d refused so far", len(connections), refused)
            with contextlib.suppress(Exception):
                writer.write(refusal(max_connections))
                writer.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # An answer is written in pieces (headers, then body): with Nagle's algorithm on, the second
            # piece waits for the client's delayed ACK, 40 ms per request on a kept-alive connection.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await _Connection(wrapped, loop, config, context, lifespan_state, reader, writer)
        finally:
            connections.discard(task)

    server = await asyncio.start_server(on_connection, sock=sock, backlog=config.backlog)
    try:
        await shutdown_trigger()
    finally:
        await context.terminated.set()  # idle connections close now, busy ones after their answer
        server.close()
        if connections:
            _, pending = await asyncio.wait(set(connections), timeout=config.graceful_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        await server.wait_closed()  # after the connections: from Python 3.12 on it waits for them
        await lifespan.wait_for_shutdown()
        lifespan_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lifespan_task
