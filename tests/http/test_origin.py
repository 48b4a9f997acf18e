"""``/v1`` and browser origins: a request with an ``Origin`` that is not allowed is refused before it
reaches the pool (no generation, no model load), whatever its ``Content-Type``."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from quart import Quart

from agent.http.app import v1_origin_allowed
from tests.http.conftest import Models
from tests.http.support import World

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

AppFor = Callable[..., tuple[Quart, World]]
HI = [{"role": "user", "content": "Where?"}]


async def test_a_foreign_origin_never_reaches_the_pool(app_for: AppFor, models: Models) -> None:
    app, world = app_for(active=None)
    client = app.test_client()
    body = json.dumps({"model": models.b.key, "messages": HI, "max_tokens": 2})
    for content_type in ("text/plain", "application/json"):
        response = await client.post("/v1/chat/completions", data=body,
                                     headers={"Origin": "http://evil.example", "Content-Type": content_type})
        assert response.status_code == 403
        error = (await response.get_json())["error"]
        assert error["code"] == "forbidden_origin" and "http://evil.example" in error["message"]
    assert world.loader.loads == [] and world.loader.generations == []
    own = f"http://127.0.0.1:{app.extensions['hflocal'].port}"
    answer = await client.post("/v1/chat/completions", data=body, headers={"Origin": own, "Content-Type": "text/plain"})
    assert answer.status_code == 200, await answer.get_data()
    assert len(world.loader.loads) == 1 and answer.headers["Content-Type"] == "application/json"


def test_which_origins_may_use_v1() -> None:
    assert not v1_origin_allowed("http://evil.example", [], 9231, "127.0.0.1")
    assert not v1_origin_allowed("null", [], 9231, "127.0.0.1")
    assert not v1_origin_allowed("http://127.0.0.1:8000", [], 9231, "127.0.0.1")  # another local port
    assert v1_origin_allowed("http://127.0.0.1:9231", [], 9231, "127.0.0.1")
    assert v1_origin_allowed("http://localhost:9231", [], 9231, "127.0.0.1")
    assert v1_origin_allowed("http://localhost:3000", ["http://localhost:3000/"], 9231, "127.0.0.1")
    assert v1_origin_allowed("HTTP://LOCALHOST:3000", ["http://localhost:3000"], 9231, "127.0.0.1")
    assert not v1_origin_allowed("https://localhost:3000", ["http://localhost:3000"], 9231, "127.0.0.1")
    assert v1_origin_allowed("http://anything.example", ["*"], 9231, "127.0.0.1")
