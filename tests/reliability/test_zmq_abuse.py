"""Garbage on both ZeroMQ sockets, against a live worker (ROUTER) and real subscribers (SUB).

The request socket gets truncated msgpack, invalid UTF-8, 10 MB frames and bursts of thousands of
frames from several peers; every well-formed-enough request gets one error reply, the worker keeps
answering pings, and its memory comes back. On the event side the worker's PUB cannot receive, so
the risk is on the client side: a subscriber fed garbage by a rogue publisher must keep working.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from ipc.events import AsyncEventSubscriber, EventSubscriber
from ipc.messages import ModelReady, encode
from tests.reliability.support import MIB, assert_memory_returns, case, rss
from tests.support.agentproc import AgentProcess
from tests.support.worker import hand_msgpack, raw_req

BURST = 3000


def _garbage(token: str) -> list[tuple[str, list[bytes], str | None]]:
    ping = hand_msgpack({"type": "ping", "token": token, "id": 7})
    return [
        ("truncated ping", [ping[: len(ping) // 2]], "bad_request"),
        ("one byte", [b"\xc1"], "bad_request"),
        ("msgpack array", [msgspec.msgpack.encode([1, 2, 3])], "bad_request"),
        ("invalid UTF-8 token", [ping.replace(token.encode(), b"\xff" * len(token))], "bad_request"),
        ("unknown type", [hand_msgpack({"type": "format_disk", "token": token})], "bad_request"),
        ("wrong token", [hand_msgpack({"type": "ping", "token": "x" * len(token)})], "unauthorized"),
        ("10 MB frame", [b"\x81" + b"\xa1a" * (5 * MIB)], "too_large"),
        ("10 MB ping", [msgspec.msgpack.encode({"type": "ping", "token": token, "pad": "p" * (10 * MIB)})], "too_large"),
        ("nested 100k deep", [b"\x91" * 100_000 + b"\xc0"], "bad_request"),
        ("two body frames", [ping, ping], "bad_request"),
    ]


def _round(live: AgentProcess) -> None:
    token = live.info.token
    with raw_req(live.info.request_endpoint) as req:
        for name, frames, code in _garbage(token):
            reply = req.send_raw(frames if len(frames) > 1 else frames[0], timeout=30)
            assert reply is not None, f"{name}: no reply"
            assert reply["type"] == "error" and reply["code"] == code, (name, reply)
            assert req.call({"type": "ping", "token": token})["type"] == "ok", name
    ctx = zmq.Context.instance()
    dealers = [ctx.socket(zmq.DEALER) for _ in range(4)]
    try:
        for d in dealers:
            d.setsockopt(zmq.LINGER, 0)
            d.connect(live.info.request_endpoint)
        for i in range(BURST):  # half garbage, half pings, from four peers, as fast as they go
            body = encode({"type": "ping", "token": token, "id": i}) if i % 2 else b"\x93garbage" + bytes([i % 256])
            dealers[i % 4].send_multipart([b"", body])
        replies = 0
        deadline = time.monotonic() + 120
        while replies < BURST and time.monotonic() < deadline:
            for d in dealers:
                while d.poll(0):
                    d.recv_multipart()
                    replies += 1
            time.sleep(0.01)
        # "busy" replies count too: every frame got exactly one answer
        assert replies == BURST, f"{replies} replies to {BURST} frames"
    finally:
        for d in dealers:
            d.close(linger=0)
    with raw_req(live.info.request_endpoint) as req:
        assert req.call({"type": "ping", "token": token})["type"] == "ok"


@case(area="bad input", case="garbage, truncated, oversize and burst frames on the ROUTER socket (live worker)",
      did="truncated msgpack, a lone 0xc1, invalid UTF-8, unknown type, wrong token, two 10 MB frames, 100k-deep nesting, two body frames; then 3000 frames from 4 DEALERs at once; 4 rounds",
      outcome="one error reply each (bad_request / unauthorized / too_large, or busy under the burst), pings answered between them; RSS back within bounds")
def test_garbage_on_the_request_socket(live: AgentProcess) -> None:
    samples: list[int] = []
    for _ in range(4):
        _round(live)
        samples.append(rss(live.proc.pid))
    assert_memory_returns(samples, "ZeroMQ garbage rounds")


@case(area="bad input", case="garbage on the event (SUB) side",
      did="a rogue PUB sends one-frame, three-frame, truncated, non-msgpack, invalid-UTF-8 and unknown-topic messages to the sync and asyncio subscribers",
      outcome="subscribers skip what they cannot read and return the next valid event; nothing raises")
def test_subscribers_survive_a_garbage_publisher() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    good = ModelReady(key="huggingface-local/o/n::q4::cpu", provider="CPUExecutionProvider")
    payload = encode(good)
    garbage: list[list[bytes]] = [
        [b"model.ready"], [b"model.ready", payload, b"extra"], [b"model.ready", payload[:7]], [b"model.ready", b"\xc1\xc1"],
        [b"model.ready", payload.replace(b"CPUExecutionProvider", b"\xff" * 20)], [b"model.ready", b"\x00" * (2 * MIB)],
        [b"zzz.unknown", encode({"topic": "zzz.unknown", "x": 1})], [b"", b""],
    ]

    def flood() -> None:
        for frames in garbage:
            pub.send_multipart(frames)
        pub.send_multipart([b"model.ready", payload])

    try:
        with EventSubscriber(endpoint, ctx=ctx) as sub:
            got: Any = None
            deadline = time.monotonic() + 30
            while got is None and time.monotonic() < deadline:  # slow joiner: repeat until connected
                flood()
                got = sub.recv(0.2)
            assert isinstance(got, ModelReady) and got.key == good.key

        async def async_side() -> Any:
            actx = zmq.asyncio.Context()
            asub = AsyncEventSubscriber(endpoint, ctx=actx)
            try:
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    flood()
                    event = await asub.recv(0.2)
                    if event is not None:
                        return event
                return None
            finally:
                asub.close()
                actx.term()

        event = asyncio.run(async_side())
        assert isinstance(event, ModelReady) and event.provider == "CPUExecutionProvider"
    finally:
        pub.close(linger=0)
        ctx.term()
