"""Fixtures for the pool and HTTP tests: tiny real models, worlds (catalog + loader + pool), servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from agent.http import create_app
from agent.pool import ResolvedVariant
from agent.settings import HttpSettings, Settings
from tests.fakes.tiny_model import TinyModel, build_tiny_repo
from tests.http.support import LiveServer, World, make_world, variant_for

REPLY_A = "Paris is the capital of France."
REPLY_B = "Hello world! How are you today?"


@dataclass(frozen=True)
class Models:
    """Three installed variants: two scripted (known greedy replies) and one with random weights
    (long, varied output that rarely ends by itself)."""

    a: ResolvedVariant
    b: ResolvedVariant
    rand: ResolvedVariant
    tiny_a: TinyModel
    tiny_b: TinyModel
    broken: ResolvedVariant
    """Installed according to the catalog, but its folder has no model: loading fails."""

    @property
    def all(self) -> list[ResolvedVariant]:
        return [self.a, self.b, self.rand, self.broken]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("tiny-models")
    tiny_a = build_tiny_repo(root / "tiny-a", ("fp32",), reply=REPLY_A, context=2048)
    tiny_b = build_tiny_repo(root / "tiny-b", ("fp32",), reply=REPLY_B, context=2048)
    build_tiny_repo(root / "tiny-rand", ("fp32",), context=2048)
    (root / "tiny-broken").mkdir()
    return Models(
        a=variant_for("test-org/tiny-a", root / "tiny-a"),
        b=variant_for("test-org/tiny-b", root / "tiny-b"),
        rand=variant_for("test-org/tiny-rand", root / "tiny-rand"),
        tiny_a=tiny_a,
        tiny_b=tiny_b,
        broken=variant_for("test-org/tiny-broken", root / "tiny-broken"),
    )


@pytest.fixture
async def worlds(models: Models) -> AsyncIterator[Callable[..., World]]:
    """``worlds(active=key, **model_settings)`` → a new World; every pool is closed afterwards."""
    made: list[World] = []

    def make(active: str | None = "a", **settings: Any) -> World:
        key = getattr(models, active).key if active in ("a", "b", "rand", "broken") else active
        world = make_world(models.all, key, **settings)
        made.append(world)
        return world

    yield make
    for world in made:
        await world.pool.close()


@pytest.fixture
def app_for(worlds: Callable[..., World]) -> Callable[..., tuple[Quart, World]]:
    """``app_for(http=HttpSettings(...), **world_args)`` → (app, world) for ``app.test_client()``."""

    def make(http: HttpSettings | None = None, **world_args: Any) -> tuple[Quart, World]:
        world = worlds(**world_args)
        app = create_app(world.pool, Settings(http=http or HttpSettings(), models=world.settings))
        return app, world

    return make


@pytest.fixture
async def client(app_for: Callable[..., tuple[Quart, World]]) -> Client:
    app, _ = app_for()
    return app.test_client()


@pytest.fixture
def live(models: Models) -> Iterator[Callable[..., LiveServer]]:
    """``live(http=..., **world_args)`` → a started real server; all are stopped afterwards."""
    servers: list[LiveServer] = []

    def start(http: HttpSettings | None = None, active: str | None = "a", **settings: Any) -> LiveServer:
        key = getattr(models, active).key if active else None
        server = LiveServer(lambda: make_world(models.all, key, **settings), http)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


