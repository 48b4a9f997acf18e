"""The management API over real HTTP against a real ``hflocal serve`` and the local hub: the same
handlers as the ZeroMQ door, the JSON shapes of the protocol's structs, ``{code, message}`` errors
with fitting statuses, and the event stream (SSE)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest

from ipc.messages import (
    Deleted,
    HardwareInfo,
    InstalledResult,
    JobAccepted,
    ListInstalled,
    ModelFilesResult,
    SearchResult,
    StatusResult,
)
from tests.hubserver import HubServer
from tests.support.agentproc import AgentProcess
from tests.support.worker import EventRecorder
from tests.web.conftest import BIG, TINY, TINY_REPLY, Api, variant_key


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The ``data:`` payloads of a text/event-stream, decoded (comments and ``retry:`` skipped)."""
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line[len("data: "):])


def collect(events: Iterator[dict[str, Any]], until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Events until ``until(events so far)`` is true."""
    seen: list[dict[str, Any]] = []
    for event in events:
        seen.append(event)
        if until(seen):
            return seen
    raise AssertionError(f"the event stream ended first; got {[e['topic'] for e in seen]}")


def test_download_activate_chat_and_delete_over_http(agent: AgentProcess, api: Api, tiny_on_hub: HubServer) -> None:
    key = variant_key(TINY, "q4")
    found = msgspec.convert(api.get("/api/search", params={"q": "tiny-chat"}).json(), SearchResult)
    assert TINY in [m.id for m in found.models]
    files = msgspec.convert(api.get(f"/api/models/{TINY}/files").json(), ModelFilesResult)
    sizes = {o.quantization: o.size for o in files.options}
    assert set(sizes) == {"q4", "fp32"} and not any(o.installed for o in files.options)

    with api.client.stream("GET", "/api/events", headers=api.headers(), timeout=60) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-store"
        lines = stream.iter_lines()
        assert next(lines) == "retry: 3000"  # the stream is subscribed from here on
        events = sse_events(lines)

        accepted = api.post("/api/downloads", {"model_id": TINY, "quantization": "q4"})
        assert accepted.status_code == 202, accepted.text
        job = msgspec.convert(accepted.json(), JobAccepted)
        assert job.key == key and not job.existing
        seen = collect(events, lambda seen: seen[-1]["topic"] in ("download.finished", "download.failed"))
        mine = [e for e in seen if e.get("job_id") == job.job_id]
        assert mine[0]["topic"] == "download.started"
        assert mine[-1]["topic"] == "download.finished", mine[-1]
        assert mine[0]["total_bytes"] == mine[-1]["size_bytes"] == sizes["q4"]
        done = [e["done_bytes"] for e in mine if e["topic"] == "download.progress"]
        assert done == sorted(done) and all(d <= sizes["q4"] for d in done)
        assert all(e["session"] == agent.info.session and e["time"] > 0 for e in seen)

        assert api.post("/api/activate", {"key": key}).status_code == 202
        wanted = {"model.ready", "model.activated"}
        seen = collect(events, lambda seen: seen[-1]["topic"] == "model.failed" or wanted <= {
            e["topic"] for e in seen if e.get("key") == key})
        assert wanted <= {e["topic"] for e in seen if e.get("key") == key}, seen

    status = msgspec.convert(api.get("/api/status").json(), StatusResult)
    assert status.active == key and status.model_state == "ready" and status.pid == agent.proc.pid
    installed = msgspec.convert(api.get("/api/installed").json(), InstalledResult)
    [model] = installed.models
    assert model.key == key and model.status == "ready" and model.active and model.size == sizes["q4"]
    # The ZeroMQ door sees the same store: one handler behind both.
    with agent.client() as client:
        assert client.call(ListInstalled()) == installed
    files = msgspec.convert(api.get(f"/api/models/{TINY}/files").json(), ModelFilesResult)
    assert [o.installed for o in files.options if o.quantization == "q4"] == [True]
    hardware = msgspec.convert(api.get("/api/hardware").json(), HardwareInfo)
    assert hardware.cache_size >= sizes["q4"] and "CPUExecutionProvider" in hardware.providers

    chat = openai.OpenAI(base_url=f"{agent.http_url}/v1", api_key="unused", max_retries=0)
    reply = chat.chat.completions.create(model=key, messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content == TINY_REPLY
    chat.close()

    deleted = msgspec.convert(api.delete(f"/api/installed/{key}").json(), Deleted)
    assert deleted.key == key and deleted.freed_bytes > 0
    assert api.get("/api/installed").json() == {"models": []}
    assert api.get("/api/status").json()["active"] is None


def test_cancel_over_http(api: Api, big_on_hub: HubServer) -> None:
    # Slowed so that it is still running when cancelled (cancels are noticed between chunks).
    big_on_hub.control.add_fault(f"{BIG}/onnx/model_q4.onnx_data", rate_limit_bytes_per_s=1_000_000)
    body = {"model_id": BIG, "quantization": "q4", "device": "cpu"}
    accepted = api.post("/api/downloads", body).json()
    assert accepted["key"] == variant_key(BIG, "q4", "cpu")
    [running] = api.get("/api/downloads").json()["downloads"]
    assert running["job_id"] == accepted["job_id"] and running["state"] == "running"
    assert api.post("/api/downloads", body).json() == {**accepted, "existing": True}
    cancelled = api.delete(f"/api/downloads/{accepted['job_id']}")
    assert cancelled.json() == {"job_id": accepted["job_id"], "key": accepted["key"]}
    assert api.get("/api/downloads").json() == {"downloads": []}
    gone = api.delete(f"/api/downloads/{accepted['job_id']}")
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("GET", "/api/models/org/missing/files", None, 404, "repo_not_found"),
    ("GET", "/api/models/org/Tiny-Chat-weights-only/files", None, 422, "no_onnx"),
    ("GET", "/api/models/org/bad name/files", None, 400, "bad_request"),
    ("GET", "/api/search?limit=0", None, 400, "bad_request"),
    ("GET", "/api/search?limit=many", None, 400, "bad_request"),
    ("POST", "/api/downloads", {"model_id": TINY, "quantization": "q3"}, 400, "bad_request"),
    ("POST", "/api/downloads", {"model_id": TINY, "quantization": "fp16"}, 422, "quant_not_offered"),
    ("POST", "/api/downloads", {"model_id": "org/missing"}, 404, "repo_not_found"),
    ("POST", "/api/downloads", {"quantization": "q4"}, 400, "bad_request"),
    ("POST", "/api/downloads", [1, 2], 400, "bad_request"),
    ("POST", "/api/downloads", {"model_id": TINY, "type": "delete"}, 400, "bad_request"),
    ("POST", "/api/activate", {"key": variant_key("org/none", "q4")}, 404, "not_found"),
    ("POST", "/api/activate", {}, 400, "bad_request"),
    ("DELETE", f"/api/installed/{variant_key('org/none', 'q4')}", None, 404, "not_found"),
    ("DELETE", "/api/installed/not a key", None, 400, "bad_request"),
    ("DELETE", "/api/downloads/no-such-job", None, 404, "not_found"),
])
def test_errors_are_code_and_message_with_a_fitting_status(
    api: Api, method: str, path: str, body: Any, status: int, code: str
) -> None:
    response = api.client.request(method, path, headers=api.headers(), json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code and error["message"] and "\n" not in error["message"]
    assert api.get("/api/downloads").json() == {"downloads": []}


def test_a_body_that_is_not_json(api: Api) -> None:
    response = api.post("/api/downloads", None, content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["code"] == "bad_request"
    assert "not valid JSON" in response.json()["message"]


def test_hub_unreachable_is_a_network_error(api: Api, tiny_on_hub: HubServer) -> None:
    tiny_on_hub.stop()
    response = api.get("/api/search", params={"q": "tiny"})
    assert response.status_code == 502 and response.json()["code"] == "network"
    # What does not need the Hub still answers.
    assert api.get("/api/installed").status_code == 200
    empty = api.get("/api/search")  # the curated list appears even offline
    assert empty.status_code == 200 and all(m["curated"] for m in empty.json()["models"])


def test_the_event_stream_can_be_filtered_and_ends_when_the_agent_stops(agent: AgentProcess, api: Api) -> None:
    with api.client.stream("GET", "/api/events?topics=model.", headers=api.headers(), timeout=60) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "retry: 3000"
        assert api.post("/api/downloads", {"model_id": TINY, "quantization": "q4"}).status_code == 202
        events = sse_events(lines)
        first = next(events)  # download.* events are filtered out; the finished download changes the models
        assert first["topic"] == "model.installed_changed"
        assert agent.stop() == 0
        assert [line for line in lines if line] == []  # the stream ended with the worker: no hang, no error


def test_both_doors_carry_the_same_stamped_event(agent: AgentProcess, api: Api) -> None:
    """One publisher stamps each event once: the page's stream and a ZeroMQ subscriber see the same
    session and time; the heartbeat goes out on ZeroMQ only, as it always did."""
    with api.client.stream("GET", "/api/events", headers=api.headers(), timeout=60) as stream, \
            EventRecorder(agent.info, ("download.",)) as zmq_events:
        lines = stream.iter_lines()
        assert next(lines) == "retry: 3000"
        zmq_events.wait_connected()  # a heartbeat was published while the stream was open
        accepted = api.post("/api/downloads", {"model_id": TINY, "quantization": "q4"})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        seen = collect(sse_events(lines), lambda seen: seen[-1]["topic"] in ("download.finished", "download.failed"))
        zmq_events.wait_for(lambda t, e: t == "download.finished" and e["job_id"] == job_id, 30, "download.finished")
        over_zmq = [e for _, e in zmq_events.of_job(job_id)]
    over_sse = [e for e in seen if e.get("job_id") == job_id]
    assert over_sse and over_sse[-1]["topic"] == "download.finished"
    assert over_sse == over_zmq  # every field, the stamp included
    assert all(e["session"] == agent.info.session and e["time"] > 0 for e in over_sse)
    assert not [e for e in seen if e["topic"].startswith("worker.")]
    assert "worker.status" in zmq_events.topics("worker.")


def test_too_many_event_streams_are_refused(api: Api) -> None:
    from agent.http.manage import MAX_EVENT_STREAMS

    with contextlib.ExitStack() as open_streams:
        streams = []
        for _ in range(MAX_EVENT_STREAMS):
            client = open_streams.enter_context(httpx.Client(base_url=api.base, trust_env=False, timeout=30))
            stream = open_streams.enter_context(client.stream("GET", "/api/events", headers=api.headers()))
            lines = stream.iter_lines()  # kept: dropping the iterator would close the connection
            assert next(lines) == "retry: 3000"
            streams.append((stream, lines))
        refused = api.get("/api/events")
        assert refused.status_code == 503 and refused.json()["code"] == "busy"
        assert refused.headers["retry-after"]
        streams.pop()[0].close()
        # The server notices the closed stream on its own time: retry (bounded) until a slot is free.
        for _ in range(600):
            with api.client.stream("GET", "/api/events", headers=api.headers()) as again:
                if again.status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("a closed event stream never gave its slot back")
