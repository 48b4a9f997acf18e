"""Test parts for the pool and the HTTP API: a catalog over tiny model folders, the real engine's
loader with knobs (load delay, per-step delay, failures), and a real Hypercorn server in a thread.

The models are the real engine (``agent.engine.model.load_model``) on tiny ONNX models built by
``tests.fakes.tiny_model``. The only thing not real is ``Throttled``: it paces the real engine's
steps so that a test can disconnect mid-stream or fill a queue; cancellation still goes through
the engine's own cancel check.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from quart.testing.connections import TestHTTPConnection as StreamConnection
from quart.typing import TestClientProtocol as Client

from agent.engine.loader import load_variant
from agent.engine.model import load_model
from agent.engine.types import EngineError, LoadedModel, ModelInfo, SamplingParams, Step, TokenChoice
from agent.http import create_app, serve_http
from agent.pool import ModelPool, ResolvedVariant, UnknownModelError
from agent.settings import HttpSettings, ModelSettings, Settings
from agent.variants import VariantKey
from ipc.messages import Event, topic_of

T = TypeVar("T")


def variant_for(model_id: str, path: Path, quantization: str = "fp32", device: str = "cpu",
                kind: str = "chat") -> ResolvedVariant:
    key = str(VariantKey.make(model_id, quantization, device))
    return ResolvedVariant(key=key, model_id=model_id, path=path, quantization=quantization,
                           device=device, created=1_700_000_000, kind=kind)


class DictCatalog:
    """The store's answers, from a dict: variant keys and bare model ids; remembers the active key."""

    def __init__(self, variants: list[ResolvedVariant], active: str | None = None) -> None:
        self.variants = {v.key: v for v in variants}
        self.active = active

    def resolve(self, name: str) -> ResolvedVariant:
        if name in self.variants:
            return self.variants[name]
        for variant in self.variants.values():
            if variant.model_id == name:
                return variant
        raise UnknownModelError(name)

    def installed(self) -> list[ResolvedVariant]:
        return list(self.variants.values())

    def set_active(self, key: str) -> None:
        self.active = key


class Throttled:
    """A real loaded model whose steps are paced by ``loader.step_s`` (read at every step)."""

    def __init__(self, inner: LoadedModel, loader: Loader) -> None:
        self.inner = inner
        self.loader = loader
        self.info: ModelInfo = inner.info

    def encode_chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                    add_generation_prompt: bool = True) -> list[int]:
        return self.inner.encode_chat(messages, tools=tools, add_generation_prompt=add_generation_prompt)

    def encode_text(self, text: str) -> list[int]:
        return self.inner.encode_text(text)

    def generate(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[Step]:
        self.loader.generations.append(self.info.path.name)
        steps = self.inner.generate(prompt_ids, params, cancel)
        if self.loader.script is not None:
            steps.close()  # type: ignore[attr-defined]
            steps = scripted_steps(self.loader.script)
        try:
            for n, step in enumerate(steps):
                if self.loader.fail_after is not None and n >= self.loader.fail_after:
                    raise EngineError("the session failed (a test fault)")
                yield step
                if step.finish_reason is None and self.loader.step_s:
                    cancel.wait(self.loader.step_s)
        finally:
            steps.close()  # type: ignore[attr-defined]
            self.loader.finished.append(self.info.path.name)

    def close(self) -> None:
        self.loader.closed.append(self.info.path.name)
        self.inner.close()


def scripted_steps(text: str) -> Iterator[Step]:
    """Steps spelling ``text`` three characters per token: for output no tiny model can produce
    (a scripted tiny model cannot repeat a token, and tool calls repeat quotes and braces)."""
    pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
    for n, piece in enumerate(pieces):
        token = TokenChoice(token_id=n, token=piece, logprob=-0.1, bytes=list(piece.encode()))
        yield Step(piece, [token], "stop" if n == len(pieces) - 1 else None)


@dataclass
class Loader:
    """``load_model`` with a recorded call list, an optional delay, and optional pacing."""

    load_s: float = 0.0
    step_s: float = 0.0
    script: str | None = None
    """If set, generations emit this text instead of the model's (see ``scripted_steps``)."""
    fail_after: int | None = None
    """If set, generations raise an ``EngineError`` after this many steps."""
    loads: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)

    def __call__(self, path: Path, *, quantization: str, device: str, threads: int = 0,
                 kind: str = "chat") -> LoadedModel:
        self.loads.append(Path(path).name)
        if self.load_s:
            time.sleep(self.load_s)
        if kind != "chat":  # not paced: embedding models take the pool's turn without generating
            return load_variant(path, quantization=quantization, device=device, threads=threads, kind=kind)
        return Throttled(load_model(path, quantization=quantization, device=device, threads=threads), self)


@dataclass
class World:
    """A pool over a catalog, with its loader and the events it published."""

    catalog: DictCatalog
    loader: Loader
    settings: ModelSettings
    events: list[Event]
    pool: ModelPool

    def topics(self, key: str | None = None) -> list[str]:
        return [topic_of(e) for e in self.events if key is None or getattr(e, "key", None) == key]


def make_world(variants: list[ResolvedVariant], active: str | None, **settings: Any) -> World:
    catalog = DictCatalog(variants, active)
    loader = Loader()
    model_settings = ModelSettings(**{"max_loaded": 2, "queue_size": 4, "load_wait_s": 30.0,
                                      "default_max_tokens": 64, **settings})
    events: list[Event] = []
    pool = ModelPool(catalog, loader, model_settings, events.append, active=active, on_active=catalog.set_active)
    return World(catalog, loader, model_settings, events, pool)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """``create_app`` + ``serve_http`` on a free loopback port, in a thread with its own loop."""

    def __init__(self, world: Callable[[], World], http: HttpSettings | None = None) -> None:
        self._make_world = world
        self._http = http or HttpSettings()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.world: World | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-server", daemon=True)

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._error is not None:
                raise self._error
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError("the HTTP server did not come up")

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start() / stop()
            self._error = exc

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.world = self._make_world()
        app = create_app(self.world.pool, Settings(http=self._http, models=self.world.settings))
        try:
            await serve_http(app, "127.0.0.1", self.port, self._stop, graceful_timeout=2)
        finally:
            await self.world.pool.close()

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30) -> T:
        """Run a coroutine on the server's loop (e.g. ``pool.activate``) and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        assert not self._thread.is_alive(), "the HTTP server did not stop"
        if self._error is not None:
            raise self._error


# --------------------------------------------------------------------------- SSE through the test client


async def open_stream(client: Client, path: str, payload: Any) -> StreamConnection:
    conn = client.request(path, method="POST", headers={"Content-Type": "application/json"})
    await conn.__aenter__()
    await conn.send(json.dumps(payload).encode())
    await conn.send_complete()
    return conn  # type: ignore[return-value]


async def close(conn: StreamConnection) -> None:
    await conn.__aexit__(None, None, None)  # type: ignore[arg-type]


async def next_event(conn: StreamConnection) -> Any:
    """The next SSE event: its JSON payload, or the string ``[DONE]``. The body is read as the byte
    stream it is: one chunk may carry several events (the server writes the events of the steps
    that were ready together at once), and what is left waits on ``conn`` for the next call."""
    buffer: bytes = getattr(conn, "sse_pending", b"")
    while b"\n\n" not in buffer:
        buffer += await asyncio.wait_for(conn.receive(), 10)
    event, _, conn.sse_pending = buffer.partition(b"\n\n")  # type: ignore[attr-defined]
    text = event.decode()
    assert text.startswith("data: ") and "\n" not in text, text
    body = text[len("data: "):]
    return body if body == "[DONE]" else json.loads(body)


async def read_stream(client: Client, path: str, payload: Any) -> list[Any]:
    conn = await open_stream(client, path, payload)
    events = []
    while True:
        event = await next_event(conn)
        events.append(event)
        if event == "[DONE]" or "error" in event:
            break
    await close(conn)
    assert conn.status_code == 200
    assert conn.headers is not None and conn.headers["Content-Type"].startswith("text/event-stream")
    return events
