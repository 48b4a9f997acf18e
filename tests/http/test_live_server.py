"""A real Hypercorn server on a free loopback port, driven by the official ``openai`` client and httpx."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.http.conftest import REPLY_A, REPLY_B, Models
from tests.http.support import LiveServer

pytestmark = pytest.mark.timeout(90)

Live = Callable[..., LiveServer]
HI = [{"role": "user", "content": "Where?"}]


def client_for(server: LiveServer, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=30, **kw)  # type: ignore[arg-type]


def test_openai_client_chat_completions_and_models(live: Live, models: Models) -> None:
    server = live()
    with client_for(server) as client:
        listed = [m.id for m in client.models.list()]
        assert listed == [v.key for v in models.all]
        assert client.models.retrieve(models.b.key).id == models.b.key

        answer = client.chat.completions.create(model=models.a.key, messages=HI)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == REPLY_A
        assert answer.choices[0].finish_reason == "stop"
        assert answer.usage is not None and answer.usage.completion_tokens == len(models.tiny_a.reply_ids or ())
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

        stream = client.chat.completions.create(  # type: ignore[call-overload]
            model=models.a.key, messages=HI, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == answer.choices[0].message.content
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices == [] and chunks[-1].usage == answer.usage

        completion = client.completions.create(model=models.rand.key, prompt="Hello", max_tokens=8, temperature=0)
        streamed = client.completions.create(model=models.rand.key, prompt="Hello", max_tokens=8, temperature=0,
                                             stream=True)
        assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text
        assert completion.usage is not None and completion.usage.completion_tokens == 8


def test_openai_client_sees_openai_errors(live: Live) -> None:
    server = live()
    with client_for(server) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="gpt-4o", messages=HI)  # type: ignore[arg-type]
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="gpt-4o", messages=HI, temperature=5)  # type: ignore[arg-type]
        assert bad.value.param == "temperature"


def test_models_answer_while_a_client_streams(live: Live, models: Models) -> None:
    server = live(active="rand")
    assert server.world is not None
    loader = server.world.loader
    loader.step_s = 0.05
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        with http.stream("POST", "/chat/completions",
                         json={"messages": HI, "stream": True, "max_tokens": 200}) as response:
            lines = response.iter_lines()
            for _ in range(4):
                next(line for line in lines if line.startswith("data: "))
            # Park the generation: its next step waits a minute unless it is cancelled. Whatever
            # answers now was served while the stream was open and unfinished.
            loader.step_s = 60
            for _ in range(3):
                assert http.get("/models").status_code == 200
                assert httpx.get(server.url + "/health", timeout=5).json()["model_state"] == "ready"
                assert loader.finished == []
        # Leaving the block closed the connection mid-stream. The parked generation can only end by
        # being cancelled, so a second request answered well within its minute-long step proves the
        # disconnect freed the model (the 30 s client timeout only keeps a failure from hanging).
        loader.step_s = 0
        answer = http.post("/chat/completions", json={"messages": HI, "max_tokens": 3}).json()
        assert answer["usage"]["completion_tokens"] == 3
        assert loader.finished[0] == "tiny-rand"
    deadline = time.monotonic() + 5
    while server.world.loader.finished.count("tiny-rand") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.world.loader.finished == ["tiny-rand", "tiny-rand"]


def test_queue_overflow_gives_503_with_retry_after(live: Live) -> None:
    server = live(active="rand", queue_size=1)
    assert server.world is not None
    server.world.loader.step_s = 0.02
    payload = {"messages": HI, "stream": True, "max_tokens": 40}

    def stream_all() -> int:
        with httpx.stream("POST", server.base_url + "/chat/completions", json=payload, timeout=30) as response:
            return sum(1 for line in response.iter_lines() if line.startswith("data: "))

    def wait_for(predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not predicate():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    world = server.world
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(stream_all)
        wait_for(lambda: len(world.loader.generations) == 1)
        queued = pool.submit(stream_all)
        wait_for(lambda: httpx.get(server.url + "/health").json()["queue_depth"] == 1)
        refused = httpx.post(server.base_url + "/chat/completions", json=payload, timeout=30)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        assert running.result() > 3 and queued.result() > 3


def test_switching_the_active_model_during_traffic_loses_no_request(live: Live, models: Models) -> None:
    server = live(max_loaded=1, queue_size=16)
    assert server.world is not None
    server.world.loader.step_s = 0.01
    results: list[tuple[str, str]] = []
    lock = threading.Lock()

    def ask(stream: bool) -> None:
        with client_for(server) as client:
            if stream:
                chunks = list(client.chat.completions.create(model=None, messages=HI, stream=True))  # type: ignore[call-overload]
                got = (chunks[0].model, "".join(c.choices[0].delta.content or "" for c in chunks))
            else:
                answer = client.chat.completions.create(model=None, messages=HI)  # type: ignore[call-overload]
                got = (answer.model, answer.choices[0].message.content or "")
        with lock:
            results.append(got)

    with ThreadPoolExecutor(8) as pool:
        first = [pool.submit(ask, i % 2 == 0) for i in range(6)]
        # Switch only once A is generating, so that some requests are served by A while B loads.
        deadline = time.monotonic() + 30
        while "tiny-a" not in server.world.loader.generations:
            assert time.monotonic() < deadline, "no request reached model A"
            time.sleep(0.01)
        server.call(lambda: server.world.pool.activate(models.b.key))  # type: ignore[union-attr]
        second = [pool.submit(ask, i % 2 == 0) for i in range(6)]
        for future in first + second:
            future.result()
    assert len(results) == 12
    expected = {models.a.key: REPLY_A, models.b.key: REPLY_B}
    assert all(expected[model] == text for model, text in results), results
    assert sum(model == models.b.key for model, _ in results) >= 6
    assert sum(model == models.a.key for model, _ in results) >= 1  # some ran on A while B loaded
    assert httpx.get(server.url + "/health").json()["model"] == models.b.key


def test_server_stops_promptly_during_a_stream(live: Live) -> None:
    server = live(active="rand")
    assert server.world is not None
    server.world.loader.step_s = 0.05
    with httpx.stream("POST", server.base_url + "/chat/completions",
                      json={"messages": HI, "stream": True, "max_tokens": 200}, timeout=30) as response:
        next(line for line in response.iter_lines() if line.startswith("data: "))
        server.world.loader.step_s = 60  # parked: it can only end by being cancelled
        server.stop()  # asserts the server thread ended (a bounded join, not a speed check)
    assert server.world.loader.finished == ["tiny-rand"]  # the shutdown cancelled the generation


def test_a_client_that_gives_up_on_a_non_streaming_answer_frees_the_model(live: Live) -> None:
    server = live(active="rand")
    assert server.world is not None
    # Every step waits a minute unless the generation is cancelled, so it cannot end by itself.
    server.world.loader.step_s = 60
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/chat/completions", json={"messages": HI, "max_tokens": 200}, timeout=0.5)
    server.world.loader.step_s = 0
    answer = httpx.post(server.base_url + "/chat/completions", json={"messages": HI, "max_tokens": 2}, timeout=30)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2
    # The parked generation ended (it was cancelled) before the second one ran.
    assert server.world.loader.finished[0] == "tiny-rand"
    assert server.world.loader.generations == ["tiny-rand", "tiny-rand"]


def test_oversized_body_and_unknown_routes_over_the_wire(live: Live) -> None:
    from agent.settings import HttpSettings

    server = live(http=HttpSettings(max_body_bytes=2048))
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    response = httpx.post(server.base_url + "/chat/completions", json=big, timeout=10)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    response = httpx.delete(server.base_url + "/models", timeout=10)
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
    response = httpx.get(server.url + "/v2/anything", timeout=10)
    assert response.status_code == 404 and response.headers["content-type"] == "application/json"
