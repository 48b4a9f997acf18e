"""The worker's request server: a ZeroMQ ROUTER that answers every request exactly once.

Plain ``REQ`` clients (any language) and ``DEALER`` clients both work: the envelope (routing id and
the empty delimiter, if present) is copied back onto the reply. Nothing a client sends — garbage
bytes, extra frames, an unknown ``type``, a wrong token, an oversize frame — can stop the loop: each
gets an ``error`` reply. Requests are handled concurrently, so a slow search never delays a ping.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from ipc.messages import (
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    RESULT_TYPES,
    Error,
    Message,
    Ok,
    Request,
    encode,
    request_decoder,
    tag_of,
)

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Message]]

WRONG_TOKEN = "missing or wrong token (see agent.json)"

MAX_IN_FLIGHT = 256
"""Requests handled at once; more are answered ``busy`` at once rather than queued without bound."""


class BindError(OSError):
    """An endpoint could not be bound (usually: the port is taken by another program or agent)."""


def bind(socket: zmq.Socket[Any], endpoint: str, what: str) -> str:
    """Bind ``socket`` and return the real endpoint (with the port chosen when ``:0`` was asked)."""
    try:
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            port = socket.bind_to_random_port(endpoint[: -len(":0")])
            return f"{endpoint[: -len(':0')]}:{port}"
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        socket.close(linger=0)  # an unclosed socket would make Context.term() hang
        why = "is another hflocal agent or another program using it? " if exc.errno == errno.EADDRINUSE else ""
        raise BindError(
            f"cannot bind the ZeroMQ {what} socket to {endpoint}: {exc.strerror} "
            f"({why}change it in settings.toml [zmq])"
        ) from None
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


class RequestServer:
    """Serve requests on a ROUTER socket until ``run``'s stop event is set.

    ``handler`` turns a decoded request into a result struct, or raises: an exception with a
    ``code`` attribute becomes that error, ``msgspec.ValidationError``/``ValueError`` become
    ``bad_request``, anything else ``internal`` (logged with its traceback, never sent).
    """

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, token: str, handler: Handler) -> None:
        self._socket = ctx.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # Hard cap far above MAX_REQUEST_BYTES: frames in between get a polite "too_large" reply,
        # frames above it make libzmq drop the peer before we ever buffer them.
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES * 64)
        self.endpoint = bind(self._socket, endpoint, "request")
        self._token = token.encode()
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                receiver = asyncio.ensure_future(self._socket.recv_multipart(copy=True))
                done, _ = await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if receiver not in done:
                    receiver.cancel()
                    break
                frames: list[bytes] = receiver.result()
                self._dispatch(frames)
        finally:
            stopper.cancel()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._socket.close(linger=0)

    def _dispatch(self, frames: list[bytes]) -> None:
        # ROUTER prepends the peer's routing id; REQ (and polite DEALERs) add an empty delimiter.
        if len(frames) < 2:
            return  # no body: nothing we can address a reply to
        if b"" in frames[1:]:
            split = frames.index(b"", 1) + 1
        else:
            split = 1
        envelope, body = frames[:split], frames[split:]
        if len(body) != 1:
            self._send(envelope, Error(code="bad_request", message=f"expected one body frame, got {len(body)}"))
            return
        payload = body[0]
        if len(payload) > MAX_REQUEST_BYTES:
            self._send(
                envelope,
                Error(code="too_large", message=f"request of {len(payload)} bytes exceeds {MAX_REQUEST_BYTES}"),
            )
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self._send(envelope, Error(code="busy", message="too many requests in flight; retry shortly"))
            return
        task = asyncio.ensure_future(self._handle(envelope, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, envelope: list[bytes], payload: bytes) -> None:
        request_id = _peek_id(payload)
        # The token first: a map without the right one is "unauthorized" whatever else it holds, so a
        # client without the token learns nothing (not the request types, not which fields are wrong).
        token = _peek_token(payload)
        if token is not None and not hmac.compare_digest(token, self._token):
            self._send(envelope, Error(id=request_id, code="unauthorized", message=WRONG_TOKEN))
            return
        try:
            request = request_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            self._send(envelope, Error(id=request_id, code="bad_request", message=_explain_decode(payload, exc)))
            return
        if not hmac.compare_digest(request.token.encode(), self._token):
            self._send(envelope, Error(id=request.id, code="unauthorized", message=WRONG_TOKEN))
            return
        if request.protocol != PROTOCOL_VERSION:
            self._send(
                envelope,
                Error(
                    id=request.id,
                    code="protocol_mismatch",
                    message=f"client speaks protocol {request.protocol}, this agent speaks {PROTOCOL_VERSION}",
                ),
            )
            return
        try:
            result = await self._handler(request)
            reply: Ok | Error = Ok(id=request.id, result=result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the loop must survive every handler failure
            reply = error_reply(request.id, exc)
        self._send(envelope, reply)

    def _send(self, envelope: list[bytes], reply: Ok | Error) -> None:
        try:
            self._socket.send_multipart([*envelope, encode(reply)], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("dropped a reply: the client is not reading")
        except zmq.ZMQError as exc:
            log.warning("could not send a reply: %s", exc)


def error_reply(request_id: int | str | None, exc: BaseException) -> Error:
    """The ``Error`` reply for a handler exception (see ``RequestServer``)."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return Error(id=request_id, code=code, message=str(exc) or code)
    if isinstance(exc, (msgspec.ValidationError, ValueError)):
        return Error(id=request_id, code="bad_request", message=str(exc))
    log.exception("internal error while handling a request", exc_info=exc)
    return Error(id=request_id, code="internal", message=f"internal error: {type(exc).__name__} (see the agent log)")


def _peek_id(payload: bytes) -> int | str | None:
    """Best effort: the ``id`` of an undecodable request, so the error can still be matched."""
    try:
        value = msgspec.msgpack.decode(payload)
    except Exception:
        return None
    if isinstance(value, dict):
        rid = value.get("id")
        if isinstance(rid, (int, str)) and not isinstance(rid, bool):
            return rid
    return None


def _peek_token(payload: bytes) -> bytes | None:
    """The token of a request that decodes as a msgpack map (``b""`` when it has none or it is not a
    string); ``None`` when the payload is not a readable map, which is then a ``bad_request``."""
    try:
        value = msgspec.msgpack.decode(payload)
    except Exception:
        return None
    if not isinstance(value, dict):
        return None
    token = value.get("token")
    return token.encode() if isinstance(token, str) else b""


def _explain_decode(payload: bytes, exc: Exception) -> str:
    """One line saying why a request could not be decoded, naming an unknown ``type`` plainly."""
    try:
        value = msgspec.msgpack.decode(payload)
    except Exception:
        return f"cannot decode request: not a msgpack map ({exc})"
    if not isinstance(value, dict):
        return f"cannot decode request: expected a msgpack map with a 'type' field, got {type(value).__name__}"
    kind = value.get("type")
    known = sorted(tag_of(t) for t in RESULT_TYPES)
    if kind is None:
        return "cannot decode request: missing 'type' field"
    if kind not in known:
        return f"unknown request type {kind!r}; known types: {', '.join(known)}"
    return f"invalid {kind!r} request: {exc}"
