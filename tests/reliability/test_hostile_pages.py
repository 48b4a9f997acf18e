"""What a web page in the user's browser, a slow or abusive HTTP client and another local user can do
to a running agent (issue 14, the HTTP and socket half). Each against a real ``hflocal serve``.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
import msgspec
import psutil
import pytest
import zmq

from agent.http.listener import LIMITS
from tests.fakes.tiny_model import TinyModel, build_tiny_repo
from tests.hubserver import HubRepos, HubServer
from tests.reliability.support import MIB, assert_memory_returns, case, rss
from tests.support.agentproc import AgentProcess, cli, start_agent
from tests.support.worker import TINY, publish, repo_files, variant_key, wait_until

RAND = "onnx-community/Tiny-Rand-Long"
"""Random weights with a 4096-token context: long output that, greedy, does not end by itself."""
STREAM_BYTES = 4_500_000
"""At least this much SSE in the slow reader's stream: more than the kernel's socket buffers take
(about 3 MB on loopback with autotuning: a smaller stream would fit in them, fix or no fix), less
than the stream's own buffer plus those (``agent.http.sse.BUFFER_BYTES``)."""
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def page_agent(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> Iterator[AgentProcess]:
    """One agent with ``TINY`` (q4 active, fp32 installed too) and ``RAND`` installed."""
    root = tmp_path_factory.mktemp("hostile")
    repos = HubRepos(root / "hub")
    publish(repos, TINY, repo_files(tiny_model.path))
    rand = build_tiny_repo(root / "rand", ("q4",), context=4096)
    publish(repos, RAND, repo_files(rand.path))
    hub = HubServer(repos.root).start()
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(root / "hf"), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost"}
    started: AgentProcess | None = None
    try:
        started = start_agent(root / "home", env=env)
        for args in (("pull", TINY, "--quant", "fp32"), ("pull", RAND, "--quant", "q4"),
                     ("pull", TINY, "--quant", "q4"), ("use", variant_key(TINY, "q4"))):
            done = cli(*args, home=started.home, env=env)
            assert done.returncode == 0, (args, done.stderr)
        yield started
    finally:
        if started is not None:
            started.stop()
        hub.stop()


def _active(agent: AgentProcess) -> tuple[str | None, list[str]]:
    health = httpx.get(agent.http_url + "/health", timeout=30).json()
    return health["model"], health["loaded"]


@case(area="security", case="a web page POSTs to /v1 (CSRF), whatever its Content-Type",
      did="text/plain and JSON POSTs with Origin: http://evil.example to chat completions, completions, Messages and "
          "Responses, each naming another installed model; a preflight; POST /api/activate (with the token); then "
          "the agent's own origin and no Origin",
      outcome="403 before anything runs (OpenAI-shaped forbidden_origin on /v1, Anthropic permission_error on "
              "/v1/messages, forbidden on /api); the active and loaded models unchanged; the agent's own page and "
              "clients without Origin are served")
def test_a_web_page_cannot_generate_or_switch_models(page_agent: AgentProcess) -> None:
    other = variant_key(TINY, "fp32")
    before = _active(page_agent)
    assert before[0] == variant_key(TINY, "q4"), before
    chat = {"model": other, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    bodies = {
        "/v1/chat/completions": chat,
        "/v1/completions": {"model": other, "prompt": "Hi", "max_tokens": 4},
        "/v1/messages": {**chat, "max_tokens": 4},
        "/v1/responses": {"model": other, "input": "Hi", "max_output_tokens": 16},
    }
    with httpx.Client(base_url=page_agent.http_url, timeout=60) as http:
        for path, body in bodies.items():
            for content_type in ("text/plain", "application/json", "application/x-www-form-urlencoded"):
                answer = http.post(path, content=json.dumps(body), headers={"Origin": EVIL, "Content-Type": content_type})
                assert answer.status_code == 403, (path, content_type, answer.text)
                assert "\n" not in answer.text.strip()
                error = answer.json()
                if path == "/v1/messages":
                    assert error["error"]["type"] == "permission_error", error
                else:
                    assert error["error"]["code"] == "forbidden_origin", error
                assert EVIL in answer.text and "cors_origins" in answer.text
        preflight = http.options("/v1/chat/completions", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
        assert http.get("/v1/models", headers={"Origin": "null"}).status_code == 403
        token = f"Bearer {page_agent.info.token}"  # even with the token, /api is for the agent's own page only
        api = http.post("/api/activate", content=json.dumps({"key": other}),
                        headers={"Origin": EVIL, "Content-Type": "text/plain", "Authorization": token})
        assert api.status_code == 403 and api.json()["code"] == "forbidden", api.text
        assert _active(page_agent) == before  # nothing loaded, nothing unloaded

        own = f"http://127.0.0.1:{page_agent.ports[0]}"
        mine = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        answer = http.post("/v1/chat/completions", content=json.dumps(mine), headers={"Origin": own, "Content-Type": "text/plain"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == before[0]
        assert http.post("/v1/chat/completions", json=mine).json()["choices"][0]["message"]["content"]
    assert _active(page_agent)[0] == before[0]


@case(area="security", case="origins listed in http.cors_origins, and only those",
      did="an agent with cors_origins = ['http://app.example/']: GET /v1/models with Origin http://app.example, "
          "HTTP://APP.EXAMPLE, http://app.example.evil.example, https://app.example",
      outcome="the listed origin (compared without case and trailing slash) is served with CORS headers; the others 403")
def test_listed_origins_are_served(tiny_hub: HubServer, agents: list[AgentProcess], hermetic_home: Path) -> None:
    hermetic_home.mkdir(parents=True, exist_ok=True)
    (hermetic_home / "settings.toml").write_text('[http]\ncors_origins = ["http://app.example/"]\n')
    started = start_agent(hermetic_home)
    agents.append(started)
    with httpx.Client(base_url=started.http_url, timeout=30) as http:
        for origin in ("http://app.example", "HTTP://APP.EXAMPLE"):
            answer = http.get("/v1/models", headers={"Origin": origin})
            assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == origin, answer.text
        for origin in ("http://app.example.evil.example", "https://app.example", EVIL):
            assert http.get("/v1/models", headers={"Origin": origin}).status_code == 403, origin


def _slow_stream(port: int, body: bytes, received: list[int], done: threading.Event, resume: threading.Event,
                 out: dict[str, Any]) -> None:
    """A client with a tiny receive buffer: reads the head of the answer, stops reading until
    ``resume``, then reads the rest a little at a time (bounded)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(120)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        data = bytearray()
        while b"data: " not in data:
            chunk = sock.recv(512)
            if not chunk:
                break
            data += chunk
        received.append(len(data))
        done.set()  # the stream has started: the generation holds (or held) the model
        resume.wait(180)
        for _ in range(2_000_000):  # bounded: several MB in reads of up to 4 KB
            if data.endswith(b"0\r\n\r\n"):
                break
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
            time.sleep(0.0005)
        out["data"] = bytes(data)


@case(area="load", case="a client that reads its SSE stream slowly",
      did="stream 4000 tokens with top-20 logprobs (over 4.5 MB, more than the socket buffers hold) to a raw socket "
          "with SO_RCVBUF 4 KB that stops reading after the first event; meanwhile a second request to the same model",
      outcome="the second request is answered while the slow client has still read only the first event (the "
              "generation ran ahead into the stream's buffer and gave the model's turn back); the slow client then "
              "reads its whole stream, every event, to [DONE]")
def test_a_slow_reader_does_not_keep_the_model(page_agent: AgentProcess) -> None:
    model = variant_key(RAND, "q4")
    port = page_agent.ports[0]
    body = json.dumps({"model": model, "stream": True, "max_tokens": 4000, "logprobs": True, "top_logprobs": 20,
                       "temperature": 0, "messages": [{"role": "user", "content": "Tell me everything"}]}).encode()
    received: list[int] = []
    started, resume = threading.Event(), threading.Event()
    out: dict[str, Any] = {}
    reader = threading.Thread(target=_slow_stream, args=(port, body, received, started, resume, out), daemon=True)
    reader.start()
    try:
        assert started.wait(180), "the slow stream did not start"
        second = httpx.post(page_agent.http_url + "/v1/chat/completions", timeout=120, json={
            "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
        assert second.status_code == 200 and second.json()["usage"]["completion_tokens"] == 4, second.text
    finally:
        resume.set()
        reader.join(180)
    data = out["data"]
    assert len(received) == 1 and received[0] < len(data) // 10, (received, len(data))
    assert len(data) > STREAM_BYTES, len(data)
    head, _, chunked = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    events = _dechunk(chunked).split(b"\n\n")
    assert events[-2] == b"data: [DONE]" and events[-1] == b"", events[-3:]
    payloads = [msgspec.json.decode(e[6:]) for e in events[:-2]]
    assert all("choices" in p for p in payloads), [p for p in payloads if "choices" not in p][:1]
    assert payloads[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def _dechunk(data: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 answer."""
    body = bytearray()
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        body += rest[:size]
        data = rest[size + 2:]


def _count_events(endpoint: str, subscription: bytes, stop: threading.Event, counts: dict[bytes, int]) -> None:
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, subscription)
    sub.connect(endpoint)
    try:
        while not stop.is_set():
            if sub.poll(100):
                sub.recv_multipart()
                counts[subscription] = counts.get(subscription, 0) + 1
    finally:
        sub.close()


@case(area="security", case="another local user subscribes to the events socket",
      did="raw SUB sockets on event_endpoint subscribed to '', 'worker.', 'model.', a wrong key of the right length and "
          "the first half of the key, next to one subscribed with agent.json's event_key; then a model switch",
      outcome="only the keyed subscriber receives anything (heartbeats, model events); the others receive nothing; "
              "agent.json, which holds the key, is user-only (0600)")
def test_events_need_the_key_from_agent_json(page_agent: AgentProcess) -> None:
    info = json.loads((page_agent.home / "agent.json").read_text())
    assert stat.S_IMODE((page_agent.home / "agent.json").stat().st_mode) == 0o600
    key = info["event_key"].encode()
    assert len(key) >= 16
    wrong = bytes(b ^ 1 for b in key)
    subscriptions = [b"", b"worker.", b"model.", wrong, key[: len(key) // 2], key]
    counts: dict[bytes, int] = {}
    stop = threading.Event()
    threads = [threading.Thread(target=_count_events, args=(info["event_endpoint"], s, stop, counts), daemon=True)
               for s in subscriptions]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: counts.get(key, 0) >= 1, 60, "a heartbeat for the keyed subscriber")
        done = cli("use", variant_key(TINY, "fp32"), home=page_agent.home)
        assert done.returncode == 0, done.stderr
        done = cli("use", variant_key(TINY, "q4"), home=page_agent.home)
        assert done.returncode == 0, done.stderr
        seen = counts[key]
        wait_until(lambda: counts[key] >= seen + 2, 60, "two more heartbeats")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert {s: n for s, n in counts.items() if s != key} == {}, counts
    assert counts[key] >= 5, counts  # heartbeats and the model events of both switches


@case(area="bad input", case="an encoded path as an installed key",
      did="DELETE /api/installed/%2Fetc%2Fpasswd, /api/installed/..%2F..%2Fetc%2Fpasswd and //api/installed with the token",
      outcome="a one-line JSON error (404 not_found / 400), never a 308 redirect or HTML; the installed models unchanged")
def test_an_encoded_path_is_not_a_redirect(page_agent: AgentProcess) -> None:
    auth = {"Authorization": f"Bearer {page_agent.info.token}"}
    with httpx.Client(base_url=page_agent.http_url, timeout=30, headers=auth) as http:
        before = http.get("/api/installed").json()
        for path in ("/api/installed/%2Fetc%2Fpasswd", "/api/installed/..%2F..%2Fetc%2Fpasswd", "/api/installed/%2F"):
            answer = http.delete(path)
            assert answer.status_code in (400, 404), (path, answer.status_code, answer.text[:200])
            assert answer.headers["content-type"].startswith("application/json"), (path, answer.headers)
            assert "\n" not in answer.text.strip() and answer.json()["code"] in ("not_found", "bad_request"), answer.text
        assert http.get("/api/installed").json() == before


def _rapid_reset(port: int, streams: int) -> tuple[int, int | None]:
    """Open and at once reset ``streams`` HTTP/2 streams on one h2c connection, in batches of 10,
    each batch followed by a PING (its ACK means the server has read the batch); (streams sent,
    the last stream id of the server's GOAWAY, or ``None`` if the server never sent one)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    headers = [(":method", "GET"), (":path", "/v1/models"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}")]
    opened = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        try:
            while opened < streams:
                for _ in range(10):
                    stream_id = conn.get_next_available_stream_id()
                    conn.send_headers(stream_id, headers, end_stream=True)
                    conn.reset_stream(stream_id)
                    opened += 1
                conn.ping(b"hflocal!")
                sock.sendall(conn.data_to_send())
                acked = False
                for _ in range(1000):  # bounded: the socket timeout ends a silent wait
                    data = sock.recv(65536)
                    if not data:
                        return opened, None
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.ConnectionTerminated):
                            return opened, int(event.last_stream_id)
                        acked = acked or isinstance(event, h2.events.PingAckReceived)
                    sock.sendall(conn.data_to_send())
                    if acked:
                        break
        except (h2.exceptions.ProtocolError, OSError):
            return opened, None
    return opened, None


@case(area="load", case="HTTP/2 rapid reset (h2c)",
      did="4 h2c connections at once, each opening and at once resetting up to 1000 streams (GET /v1/models) in "
          "batches of 10 (a PING after each), while another client asks /health 20 times",
      outcome="every /health answered 200 during the bursts; each connection gets GOAWAY in the batch after it has opened "
              "keep_alive_max_requests streams (200), the rest never run; the API serves afterwards")
def test_rapid_reset_costs_the_client_its_connection(page_agent: AgentProcess) -> None:
    port = page_agent.ports[0]
    results: list[tuple[int, int | None]] = []
    attackers = [threading.Thread(target=lambda: results.append(_rapid_reset(port, 1000)), daemon=True) for _ in range(4)]
    for thread in attackers:
        thread.start()
    statuses = []
    with httpx.Client(base_url=page_agent.http_url, timeout=60) as http:
        for _ in range(20):
            statuses.append(http.get("/health").status_code)
        for thread in attackers:
            thread.join(120)
        assert http.get("/v1/models").status_code == 200
    assert statuses == [200] * 20, statuses
    assert len(results) == 4, results
    # Stream ids are odd, the n-th is 2n - 1; the GOAWAY comes in the batch that passed the limit.
    most = 2 * (LIMITS.keep_alive_max_requests + 10) - 1
    assert all(last is not None and last <= most and opened < 1000 for opened, last in results), results


def _agent_connection_limit(pid: int) -> int:
    soft, _ = psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)
    return LIMITS.max_connections if soft == resource.RLIM_INFINITY else max(16, min(LIMITS.max_connections, soft // 2))


def _idle_flood(port: int, socks: list[socket.socket], count: int, refusals: int) -> int:
    """Open ``count`` connections (into ``socks``) that send nothing; wait (bounded) until
    ``refusals`` of them got the one-line 503 and were closed; how many did."""
    refused = 0
    with selectors.DefaultSelector() as selector:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            socks.append(sock)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + 120  # a guard against hanging, not the property under test
        while refused < refusals and time.monotonic() < deadline:
            for key, _events in selector.select(0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                data = sock.recv(4096)
                if data.startswith(b"HTTP/1.1 503") and b"too_many_connections" in data:
                    refused += 1
                selector.unregister(sock)
    return refused


@case(area="load", case="a flood of idle connections",
      did="3 rounds of: 2000 connections to the HTTP port that send nothing, /health meanwhile, then all closed; "
          "agent RSS after each round",
      outcome="connections over the limit (1000, or half the open-file limit) get a one-line 503 too_many_connections "
              "and are closed; a connection the client closed is let go at once, so /health is answered again right "
              "after; RSS stays within bounds and does not grow from round to round")
def test_idle_connections_are_bounded(page_agent: AgentProcess) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4500, hard), hard))  # this test process holds 2000 sockets
    limit = _agent_connection_limit(page_agent.info.pid)
    flood = max(2000, limit + 200)
    port = page_agent.ports[0]
    assert httpx.get(page_agent.http_url + "/health", timeout=30).status_code == 200
    samples = [rss(page_agent.info.pid)]
    for _ in range(3):
        socks: list[socket.socket] = []
        try:
            refused = _idle_flood(port, socks, flood, flood - limit)
            assert refused >= flood - limit, (refused, flood, limit)
            busy = httpx.get(page_agent.http_url + "/health", timeout=30)
            assert busy.status_code == 503 and busy.json()["error"]["code"] == "too_many_connections", busy.text
        finally:
            for sock in socks:
                sock.close()
        wait_until(lambda: httpx.get(page_agent.http_url + "/health", timeout=30).status_code == 200, 60,
                   "/health once the idle connections closed")
        samples.append(rss(page_agent.info.pid))
    print("agent RSS (MiB) before and after each flood:", [round(s / MIB, 1) for s in samples])
    assert_memory_returns(samples, "idle connection floods")
