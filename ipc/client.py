"""Python clients for the worker: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both use a DEALER socket with a call id and a deadline per call, so they never block forever. They
survive a restarted worker: after a timeout the socket is replaced (a late reply can never be taken
for the answer to a later call), and an ``unauthorized`` reply makes the client re-read ``agent.json``
(a new worker has a new token) and retry once.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import zmq
import zmq.asyncio

from ipc.connection import ConnectionInfo, read_connection
from ipc.home import resolve_home
from ipc.messages import RESULT_TYPES, Error, Message, Ok, Request, encode, reply_decoder

T = TypeVar("T", bound=Message)

DEFAULT_TIMEOUT = 10.0


class RemoteError(Exception):
    """The worker answered with an error; ``code`` is one of ``ipc.messages.ERROR_CODES``."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


class CallTimeout(TimeoutError):
    """No reply before the deadline (the worker is busy, hung, or gone)."""


def agent_json_path(home: Path | str | None) -> Path:
    """``agent.json`` under ``home``, or under the home the agent itself would use (``HFLOCAL_HOME`` ...)."""
    return resolve_home(home) / "agent.json"


class _Base:
    def __init__(
        self, home: Path | str | None, connection: ConnectionInfo | None, timeout: float, ctx: Any
    ) -> None:
        self._path = agent_json_path(home)
        self.connection = connection or read_connection(self._path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._ctx = ctx
        self._socket: Any = None

    def _sock(self) -> Any:
        """The DEALER socket, connected to the current endpoint (a fresh one after ``_reset``)."""
        if self._socket is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(self.connection.request_endpoint)
            self._socket = s
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _timed_out(self, limit: float) -> CallTimeout:
        """Drop the socket (a late reply must not answer a later call) and look for a new worker."""
        self._reset()
        self._refresh()
        return CallTimeout(f"no reply from the agent at {self.connection.request_endpoint} within {limit:g}s")

    @staticmethod
    def _match(frames: list[bytes], call_id: int) -> Ok | Error | None:
        """The reply in ``frames`` if it answers ``call_id``; ``None`` for a stale or unreadable one."""
        try:
            reply = reply_decoder.decode(frames[-1])
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            return None
        return reply if reply.id == call_id else None

    def close(self) -> None:
        self._reset()

    def _refresh(self) -> bool:
        """Re-read ``agent.json``; True if it names a different worker than before."""
        try:
            fresh = read_connection(self._path)
        except Exception:  # no newer worker to switch to
            return False
        changed = fresh != self.connection
        self.connection = fresh
        return changed

    def _frame(self, request: Request) -> tuple[int, bytes]:
        call_id = next(self._ids)
        stamped = msgspec.structs.replace(request, id=call_id, token=self.connection.token)
        return call_id, encode(stamped)

    @staticmethod
    def _result(request: Request, reply: Ok | Error) -> Any:
        if isinstance(reply, Error):
            raise RemoteError(reply.code, reply.message, reply.details)
        result_type = RESULT_TYPES.get(type(request))
        if result_type is None:
            return reply.result
        return msgspec.convert(reply.result, result_type)


class Client(_Base):
    """Blocking client. ``call(request)`` returns the request's result struct or raises
    ``RemoteError`` / ``CallTimeout``; ``AgentNotRunning`` if there is no agent at construction."""

    def __init__(
        self,
        home: Path | str | None = None,
        *,
        connection: ConnectionInfo | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ctx: zmq.Context[Any] | None = None,
    ) -> None:
        super().__init__(home, connection, timeout, ctx or zmq.Context.instance())

    def call(self, request: Request, timeout: float | None = None) -> Any:
        reply = self._roundtrip(request, timeout)
        if isinstance(reply, Error) and reply.code == "unauthorized" and self._refresh():
            self._reset()
            reply = self._roundtrip(request, timeout)
        return self._result(request, reply)

    def _roundtrip(self, request: Request, timeout: float | None) -> Ok | Error:
        import time

        call_id, payload = self._frame(request)
        sock = self._sock()
        sock.send_multipart([b"", payload])
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000)):
                raise self._timed_out(limit)
            reply = self._match(sock.recv_multipart(), call_id)
            if reply is not None:
                return reply

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """asyncio twin of ``Client``: ``await client.call(request)``."""

    def __init__(
        self,
        home: Path | str | None = None,
        *,
        connection: ConnectionInfo | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        super().__init__(home, connection, timeout, ctx or zmq.asyncio.Context.instance())

    async def call(self, request: Request, timeout: float | None = None) -> Any:
        reply = await self._roundtrip(request, timeout)
        if isinstance(reply, Error) and reply.code == "unauthorized" and self._refresh():
            self._reset()
            reply = await self._roundtrip(request, timeout)
        return self._result(request, reply)

    async def _roundtrip(self, request: Request, timeout: float | None) -> Ok | Error:
        import asyncio

        call_id, payload = self._frame(request)
        sock = self._sock()
        await sock.send_multipart([b"", payload])
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                while True:
                    reply = self._match(await sock.recv_multipart(), call_id)
                    if reply is not None:
                        return reply
        except TimeoutError:
            raise self._timed_out(limit) from None
