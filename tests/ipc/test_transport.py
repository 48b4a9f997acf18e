"""The request server and clients over real sockets: round trips, bad frames, restarts, events."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from ipc.client import AsyncClient, CallTimeout, Client, RemoteError
from ipc.connection import ConnectionInfo
from ipc.events import AsyncEventSubscriber, EventPublisher, EventSubscriber
from ipc.messages import (
    MAX_REQUEST_BYTES,
    DownloadProgress,
    Message,
    Ping,
    PingResult,
    Request,
    Search,
    SearchResult,
    encode,
)
from ipc.server import BindError, RequestServer

TOKEN = "s3cret-token"


class Boom(Exception):
    code = "not_found"


async def toy_handler(request: Request) -> Message:
    """A handler with one of each behaviour the server must cope with."""
    if isinstance(request, Ping):
        return PingResult(session="toy", pid=1)
    if isinstance(request, Search):
        if request.query == "slow":
            await asyncio.sleep(1.0)
        if request.query == "boom":
            raise Boom("no such thing")
        if request.query == "crash":
            raise RuntimeError("secret internal detail")
        return SearchResult(query=request.query, models=[])
    raise ValueError("unsupported here")


class ServerThread:
    """A RequestServer + EventPublisher on their own loop in a thread, like the worker runs them."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:0", events: str = "tcp://127.0.0.1:0") -> None:
        self.ready = threading.Event()
        self._endpoints = (endpoint, events)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        ctx = zmq.asyncio.Context()
        self.server = RequestServer(ctx, self._endpoints[0], TOKEN, toy_handler)
        self.publisher = EventPublisher(ctx, self._endpoints[1], "toy-session")
        self.endpoint = self.server.endpoint
        self.ready.set()
        await self.server.run(self.stop_event)
        self.publisher.close()
        ctx.term()

    def info(self) -> ConnectionInfo:
        return ConnectionInfo(
            http_url="http://127.0.0.1:1",
            request_endpoint=self.endpoint,
            event_endpoint=self.publisher.endpoint,
            token=TOKEN,
            pid=1,
            session="toy",
        )

    def stop(self) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def server() -> Iterator[ServerThread]:
    srv = ServerThread()
    yield srv
    srv.stop()


def _mp_str(s: str) -> bytes:
    data = s.encode()
    if len(data) < 32:
        return bytes([0xA0 | len(data)]) + data
    return b"\xd9" + bytes([len(data)]) + data


def hand_msgpack(fields: dict[str, Any]) -> bytes:
    """msgpack written byte by byte, as a client in another language without a library might."""
    out = bytes([0x80 | len(fields)])
    for key, value in fields.items():
        out += _mp_str(key)
        if isinstance(value, int):
            out += b"\xcd" + struct.pack(">H", value) if value > 127 else bytes([value])
        else:
            out += _mp_str(value)
    return out


def raw_req(endpoint: str, payload: bytes | list[bytes]) -> dict[str, Any]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        if isinstance(payload, list):
            sock.send_multipart(payload)
        else:
            sock.send(payload)
        assert sock.poll(5000), "no reply within 5 s"
        frames = sock.recv_multipart()
    finally:
        sock.close()
    assert len(frames) == 1
    reply = msgspec.msgpack.decode(frames[0])
    assert isinstance(reply, dict)
    return reply


def test_plain_req_client_with_hand_built_msgpack(server: ServerThread) -> None:
    reply = raw_req(server.endpoint, hand_msgpack({"type": "ping", "token": TOKEN, "id": 300}))
    assert reply["type"] == "ok"
    assert reply["id"] == 300
    assert reply["result"]["session"] == "toy"
    assert reply["result"]["protocol"] == 1


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (b"\xc1\xc1garbage", "bad_request", "msgpack"),
        (msgspec.msgpack.encode([1, 2, 3]), "bad_request", "map"),
        (msgspec.msgpack.encode({"token": TOKEN}), "bad_request", "type"),
        (msgspec.msgpack.encode({"type": "fly", "token": TOKEN}), "bad_request", "unknown request type 'fly'"),
        (msgspec.msgpack.encode({"type": "search", "token": TOKEN, "limit": "ten"}), "bad_request", "search"),
        (msgspec.msgpack.encode({"type": "ping", "token": "wrong"}), "unauthorized", "token"),
        (msgspec.msgpack.encode({"type": "ping"}), "unauthorized", "token"),
        (msgspec.msgpack.encode({"type": "ping", "token": TOKEN, "protocol": 99}), "protocol_mismatch", "99"),
        (b"x" * (MAX_REQUEST_BYTES + 1), "too_large", "exceeds"),
    ],
)
def test_bad_frames_get_an_error_and_the_server_keeps_serving(
    server: ServerThread, payload: bytes, code: str, words: str
) -> None:
    reply = raw_req(server.endpoint, payload)
    assert reply["type"] == "error"
    assert reply["code"] == code
    assert words in reply["message"]
    again = raw_req(server.endpoint, hand_msgpack({"type": "ping", "token": TOKEN}))
    assert again["type"] == "ok"


@pytest.mark.parametrize(
    "fields",
    [{"type": "fly"}, {"type": "ping", "token": 5}, {"type": "search", "limit": "ten", "token": "wrong"},
     {"token": "wrong"}, {"type": "download", "id": 9}],
    ids=["unknown type", "token not a string", "invalid field", "no type", "missing field"],
)
def test_without_the_token_a_client_learns_nothing_but_unauthorized(
    server: ServerThread, fields: dict[str, object]
) -> None:
    """The token is checked before the type and the fields: no request types, no field names."""
    reply = raw_req(server.endpoint, msgspec.msgpack.encode(fields))
    assert (reply["type"], reply["code"]) == ("error", "unauthorized"), reply
    assert reply["message"] == "missing or wrong token (see agent.json)"
    assert reply["id"] == fields.get("id")


def test_extra_frames_are_refused(server: ServerThread) -> None:
    ping = encode(Ping(token=TOKEN))
    reply = raw_req(server.endpoint, [ping, ping])
    assert reply == {**reply, "type": "error", "code": "bad_request"}


def test_handler_errors_become_codes_and_internal_details_stay_inside(server: ServerThread) -> None:
    with Client(connection=server.info()) as client:
        with pytest.raises(RemoteError) as err:
            client.call(Search(query="boom"))
        assert (err.value.code, err.value.message) == ("not_found", "no such thing")
        with pytest.raises(RemoteError) as err:
            client.call(Search(query="crash"))
        assert err.value.code == "internal"
        assert "secret internal detail" not in err.value.message
        assert isinstance(client.call(Ping()), PingResult)


def test_slow_request_does_not_delay_ping(server: ServerThread) -> None:
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(server.endpoint)
    try:
        dealer.send_multipart([b"", encode(Search(query="slow", token=TOKEN, id="slow"))])
        dealer.send_multipart([b"", encode(Ping(token=TOKEN, id="fast"))])
        order = []
        for _ in range(2):
            assert dealer.poll(5000)
            order.append(msgspec.msgpack.decode(dealer.recv_multipart()[-1])["id"])
        assert order == ["fast", "slow"]
    finally:
        dealer.close()


def test_client_deadline_then_recovers_after_restart() -> None:
    first = ServerThread()
    info = first.info()
    endpoint = first.endpoint
    client = Client(connection=info, timeout=0.5)
    try:
        assert client.call(Ping()).session == "toy"
        first.stop()
        with pytest.raises(CallTimeout):
            client.call(Ping())
        second = ServerThread(endpoint=endpoint)  # a restarted worker on the same endpoint
        try:
            assert client.call(Ping(), timeout=5).session == "toy"
        finally:
            second.stop()
    finally:
        client.close()


def test_bind_conflict_is_a_clear_error(server: ServerThread) -> None:
    async def try_bind() -> None:
        ctx = zmq.asyncio.Context()
        try:
            RequestServer(ctx, server.endpoint, TOKEN, toy_handler)
        finally:
            ctx.term()

    with pytest.raises(BindError, match="already|in use|another"):
        asyncio.run(try_bind())


def test_async_client(server: ServerThread) -> None:
    async def main() -> str:
        client = AsyncClient(connection=server.info(), timeout=5)
        try:
            result = await client.call(Ping())
            with pytest.raises(RemoteError):
                await client.call(Search(query="boom"))
            return str(result.session)
        finally:
            client.close()

    assert asyncio.run(main()) == "toy"


def test_events_by_prefix_from_any_thread(server: ServerThread) -> None:
    def progress(n: int) -> DownloadProgress:
        return DownloadProgress(job_id="j", key="k", done_bytes=n, total_bytes=10, rate_bps=1.0, eta_s=None, current_file="f")

    with EventSubscriber(server.publisher.endpoint, ("download.",), key=server.publisher.key) as sub:
        seen = None
        for n in range(50):  # bounded: the subscription takes a moment to reach the publisher
            server.publisher.publish(progress(n))  # from this (foreign) thread
            seen = sub.recv(0.1)
            if seen is not None:
                break
        assert isinstance(seen, DownloadProgress)
        assert seen.session == "toy-session"
        assert seen.time > 0


def test_async_subscriber(server: ServerThread) -> None:
    async def main() -> Any:
        sub = AsyncEventSubscriber(server.publisher.endpoint, ("download.",), key=server.publisher.key)
        try:
            for n in range(50):
                server.publisher.publish(
                    DownloadProgress(job_id="j", key="k", done_bytes=n, total_bytes=1, rate_bps=0, eta_s=None, current_file="")
                )
                event = await sub.recv(0.1)
                if event is not None:
                    return event
            return None
        finally:
            sub.close()

    assert isinstance(asyncio.run(main()), DownloadProgress)
