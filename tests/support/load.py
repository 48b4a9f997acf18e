"""The load driver: concurrent streaming chats plus a steady rate of ``GET /v1/models`` on a live agent.

Shared by ``tests/reliability/test_load.py`` (a few seconds per round) and ``bench/load.py`` (the full
60 s measurement). Every request must end in a completion, or in 503/429 with ``Retry-After``;
anything else is counted under ``failed`` with why. The run is bounded: clients stop at the deadline
and wait at most ``timeout`` for what is in flight. The driver speaks HTTP/1.1 itself (``_Http``),
cheaply enough that on a 2-core machine it leaves the CPU to the agent; ``client_cpu_s`` in the
summary shows what it used.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    seconds: float
    streams: int
    rate: float
    completed: int = 0
    refused: int = 0
    """503/429 with Retry-After: the agent said "later", as it promises under overload."""
    failed: list[str] = field(default_factory=list)
    models_ok: int = 0
    models_skipped: int = 0
    """Ticks of the models clock skipped because too many were still in flight (client-side limit)."""
    client_cpu_s: float = 0.0
    """CPU the driver itself used: with it well under ``seconds`` the driver was not the limit."""
    stream_latency_s: list[float] = field(default_factory=list)
    models_latency_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return round(statistics.quantiles(values, n=100)[int(q) - 1], 4) if len(values) >= 2 else None

        out = asdict(self)
        del out["stream_latency_s"], out["models_latency_s"]
        out["failed_kinds"] = dict(Counter(f.split(":", 1)[0] for f in self.failed))
        out["failed"] = self.failed[:20]
        out["models_per_s"] = round(self.models_ok / self.seconds, 1)
        out["completions_per_s"] = round(self.completed / self.seconds, 1)
        out["stream_p50_s"], out["stream_p99_s"] = pct(self.stream_latency_s, 50), pct(self.stream_latency_s, 99)
        out["models_p50_s"], out["models_p99_s"] = pct(self.models_latency_s, 50), pct(self.models_latency_s, 99)
        return out


class TransportError(Exception):
    """The connection failed, closed early or sent something that is not HTTP/1.1."""


class _Http:
    """A minimal HTTP/1.1 keep-alive client for loopback load, so that the load is not the bottleneck.

    httpx cost ~2.3 ms of client CPU per ``GET /v1/models``: on a 2-core machine the driver, not the
    agent, capped the rate. This sends a request line and headers, and reads the status, the headers
    and a ``Content-Length`` or chunked body, nothing more; a connection goes back to the idle list
    only after a complete response without ``Connection: close``.
    """

    def __init__(self, url: str, headers: dict[str, str] | None, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"an http:// URL is needed, not {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {parts.netloc}\r\n{extra}"
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._open: set[asyncio.StreamWriter] = set()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._open.add(writer)
        return reader, writer

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        writer.close()

    async def close(self) -> None:
        for writer in list(self._open):
            self._drop(writer)
        self._idle.clear()

    @asynccontextmanager
    async def request(self, method: str, path: str, body: bytes | None = None
                      ) -> AsyncIterator[tuple[int, dict[str, str], AsyncIterator[bytes]]]:
        """``async with http.request(...) as (status, headers, chunks)``: the body comes from
        ``chunks`` (it must be read to the end for the connection to be reused). Raises
        ``TransportError`` (or ``TimeoutError`` after ``timeout`` without the whole response)."""
        head = f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = (head + "\r\n").encode("latin-1") + (body or b"")
        async with asyncio.timeout(self.timeout):
            for attempt in (0, 1):
                reused = bool(self._idle) and attempt == 0
                reader, writer = self._idle.pop() if reused else await self._connect()
                try:
                    writer.write(data)
                    raw = await reader.readuntil(b"\r\n\r\n")
                    break
                except (OSError, asyncio.IncompleteReadError) as exc:
                    self._drop(writer)
                    if not reused:  # a kept-alive connection the server had closed: one more try
                        raise TransportError(f"{type(exc).__name__} {exc}") from exc
                except BaseException:
                    self._drop(writer)
                    raise
            ok = False
            try:
                lines = raw.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ", 2)[1])
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                state = {"done": False}
                yield status, headers, self._body(reader, headers, state)
                ok = state["done"] and headers.get("connection", "").lower() != "close"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
                raise TransportError(f"{type(exc).__name__} {exc}") from exc
            finally:
                if ok:
                    self._idle.append((reader, writer))
                else:
                    self._drop(writer)

    @staticmethod
    async def _body(
        reader: asyncio.StreamReader, headers: dict[str, str], state: dict[str, bool]
    ) -> AsyncIterator[bytes]:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                chunk = await reader.readexactly(size + 2)
                yield chunk[:-2]
        elif "content-length" in headers:
            yield await reader.readexactly(int(headers["content-length"]))
        else:
            yield await reader.read()
            return  # read to EOF: not reusable
        state["done"] = True

    async def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        async with self.request("GET", path) as (status, headers, chunks):
            return status, headers, b"".join([c async for c in chunks])


def _refusal(status: int, headers: dict[str, str]) -> bool:
    return status in (429, 503) and "retry-after" in headers


async def _streamer(http: _Http, deadline: float, result: LoadResult, max_tokens: int) -> None:
    request = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens, "stream": True}
    body = json.dumps(request).encode()
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            async with http.request("POST", "/v1/chat/completions", body) as (status, headers, chunks):
                if status != 200:
                    text = b"".join([c async for c in chunks]).decode(errors="replace")
                    if _refusal(status, headers):
                        result.refused += 1
                        await asyncio.sleep(min(float(headers["retry-after"]), 1.0))
                    else:
                        result.failed.append(f"status {status}: {text[:200]}")
                    continue
                last = ""
                errored = False
                pending = b""
                async for chunk in chunks:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.startswith(b"data: "):
                            last = line.decode(errors="replace")
                            if '"error"' in last:
                                result.failed.append(f"error event: {last[:200]}")
                                errored = True
                if last == "data: [DONE]":
                    result.completed += 1
                    result.stream_latency_s.append(time.monotonic() - start)
                elif not errored:
                    result.failed.append(f"truncated: stream ended with {last[:100]!r}")
        except (TransportError, TimeoutError) as exc:
            result.failed.append(f"transport: {type(exc).__name__} {exc}")


async def _models(http: _Http, deadline: float, result: LoadResult, rate: float, max_in_flight: int = 64) -> None:
    in_flight: set[asyncio.Task[None]] = set()

    async def one() -> None:
        start = time.monotonic()
        try:
            status, headers, body = await http.get("/v1/models")
        except (TransportError, TimeoutError) as exc:
            result.failed.append(f"transport: /v1/models {type(exc).__name__} {exc}")
            return
        if status == 200 and json.loads(body).get("object") == "list":
            result.models_ok += 1
            result.models_latency_s.append(time.monotonic() - start)
        elif _refusal(status, headers):
            result.refused += 1
        else:
            result.failed.append(f"status {status}: /v1/models {body[:200].decode(errors='replace')}")

    tick = time.monotonic()
    while tick < deadline:
        if len(in_flight) < max_in_flight:
            task = asyncio.ensure_future(one())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        else:
            result.models_skipped += 1
        tick += 1.0 / rate
        await asyncio.sleep(max(0.0, tick - time.monotonic()))
    if in_flight:
        await asyncio.gather(*in_flight)


async def run_load_async(url: str, seconds: float, *, streams: int = 32, rate: float = 200.0, max_tokens: int = 16,
                         timeout: float = 120.0, headers: dict[str, str] | None = None) -> LoadResult:
    result = LoadResult(seconds=seconds, streams=streams, rate=rate)
    cpu_start = time.process_time()
    http = _Http(url, headers, timeout)
    try:
        deadline = time.monotonic() + seconds
        await asyncio.wait_for(asyncio.gather(
            _models(http, deadline, result, rate),
            *(_streamer(http, deadline, result, max_tokens) for _ in range(streams)),
        ), seconds + timeout)
    finally:
        await http.close()
        result.client_cpu_s = round(time.process_time() - cpu_start, 2)
    return result


def run_load(url: str, seconds: float, **options: Any) -> LoadResult:
    """Run the load against ``url`` for ``seconds`` (bounded: see the module docstring)."""
    return asyncio.run(run_load_async(url, seconds, **options))
