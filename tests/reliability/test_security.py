"""Security: who may talk to the agent, and what a name from outside can reach.

Constant-time token checks, the optional API key end to end, Host/Origin/CORS against DNS rebinding
and other sites, no path out of the store from a model id, a key or a file name a hub lists,
user-only files, and binding beyond loopback only when asked for, with a key.
"""

from __future__ import annotations

import ast
import json
import re
import socket
import stat
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from agent.settings import HttpSettings, Settings
from agent.worker import StartupError, _check_exposure
from ipc.client import Client, RemoteError
from ipc.messages import Activate, Delete, Download, ModelFiles
from tests.hubserver import HubRepos, HubServer
from tests.reliability.support import REPO_ROOT, case, make_ready
from tests.support.agentproc import AgentProcess, cli, run_serve, start_agent
from tests.support.worker import TINY, publish, repo_files

TOKEN_MODULES = ["ipc/server.py", "agent/http/access.py"]
"""Where tokens and API keys are compared."""
TOKEN_READERS = ["agent/http/app.py", "agent/http/manage.py"]
"""Where the HTTP side takes a token or API key from a request and hands it to ``access.token_matches``."""


def _token_comparisons(source: str) -> list[str]:
    """``==``/``!=`` comparisons whose operands name a token, key or secret (should be none)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            text = ast.unparse(node)
            if any(word in text.lower() for word in ("token", "api_key", "secret")) and "None" not in text:
                found.append(text)
    return found


@case(area="security", case="tokens and API keys compared in constant time",
      did="parse ipc/server.py and agent/http/access.py (which compare tokens), agent/http/app.py and "
          "agent/http/manage.py (which read them from requests)",
      outcome="every token/key check uses hmac.compare_digest; no == on a secret")
def test_tokens_are_compared_in_constant_time() -> None:
    for module in TOKEN_MODULES:
        source = (REPO_ROOT / module).read_text()
        assert "compare_digest" in source, module
        assert _token_comparisons(source) == [], module
    for module in TOKEN_READERS:
        source = (REPO_ROOT / module).read_text()
        assert "token_matches" in source, module
        assert _token_comparisons(source) == [], module


@case(area="security", case="API key for /v1 from HFLOCAL_API_KEY, end to end",
      did="start hflocal serve with HFLOCAL_API_KEY; call /v1 with no key, a wrong key, a key differing in the last byte, the right key",
      outcome="401 invalid_api_key (OpenAI-shaped) until the right key; /health stays open; the page/ZeroMQ still use the agent token")
def test_api_key_from_the_environment_end_to_end(tiny_hub: HubServer, agents: list[AgentProcess], hermetic_home: Path) -> None:
    secret = "sk-local-" + "x" * 30
    started = start_agent(hermetic_home, env={"HFLOCAL_API_KEY": secret})
    agents.append(started)
    make_ready(started)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    with httpx.Client(base_url=started.http_url, timeout=60) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {secret[:-1]}y"},
                        {"Authorization": secret}):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
                answer = http.request(method, path, headers=headers, json=body if method == "POST" else None)
                assert answer.status_code == 401, (headers, path, answer.text)
                assert answer.json()["error"]["code"] == "invalid_api_key"
        ok = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"}, json=body)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
        assert http.get("/health").status_code == 200
    with Client(hermetic_home, timeout=10) as client:  # ZeroMQ: the agent token, not the API key
        assert client.call(ModelFiles(model_id=TINY)).options


@case(area="security", case="DNS rebinding and other sites on /v1 and /health",
      did="Host: evil.example (and evil.example:port, 127.0.0.1.evil.example, empty-port tricks) on /v1/models, chat, /health, /openapi.json",
      outcome="403 naming the Host (OpenAI-shaped forbidden_host on /v1, /health, /openapi.json; forbidden on /api), nothing generated; loopback names pass")
def test_a_rebinding_host_never_reaches_the_api(live: AgentProcess) -> None:
    port = live.ports[0]
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    with httpx.Client(base_url=live.http_url, timeout=30) as http:
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", "attacker.localhost.example",
                     f"0x7f.evil:{port}", "[::2]", "evil.example:"):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/health"),
                                 ("GET", "/openapi.json"), ("GET", "/api/status")):
                answer = http.request(method, path, headers={"Host": host}, json=chat if method == "POST" else None)
                assert answer.status_code == 403, (host, path, answer.status_code, answer.text[:200])
                assert "Host" in answer.text
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", f"127.0.0.2:{port}"):
            assert http.get("/v1/models", headers={"Host": host}).status_code == 200, host


def _raw_http(port: int, data: bytes, *, then: bytes = b"", answers: int = 1) -> list[bytes]:
    """Send ``data`` (then, after a pause, ``then``) on one connection; the raw answers, in order."""
    found: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        if then:
            time.sleep(0.3)  # lets an answer to the headers alone go out first (it must not, see below)
            sock.sendall(then)
        buffer = b""
        while len(found) < answers:
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            if sep:
                length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                if len(rest) >= length:
                    found.append(head + sep + rest[:length])
                    buffer = rest[length:]
                    continue
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
    return found


@case(area="security", case="a refused request with a body keeps its connection usable",
      did="POST /v1/chat/completions with Host: evil.example, its body sent 0.3 s after the headers, then GET /health "
          "on the same keep-alive connection; a refused POST whose Content-Length exceeds http.max_body_bytes",
      outcome="403 once the body is in, then the next request's answer on the same connection (Hypercorn used to close "
              "it right after an early 403, and the client's next request got no answer); an unreadable body gets "
              "Connection: close with its 403")
def test_a_refused_request_does_not_cost_the_connection(live: AgentProcess) -> None:
    port = live.ports[0]
    body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: evil.example:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    health = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    answers = _raw_http(port, head, then=body + health, answers=2)
    assert len(answers) == 2, answers
    assert answers[0].startswith(b"HTTP/1.1 403") and b"forbidden_host" in answers[0], answers[0][:300]
    assert answers[1].startswith(b"HTTP/1.1 200") and b'"status":"ok"' in answers[1].replace(b" ", b""), answers[1][:300]

    huge = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n"
            f"Content-Length: {1 << 40}\r\n\r\n").encode()
    (refused,) = _raw_http(port, huge + b"{")
    assert refused.startswith(b"HTTP/1.1 403") and re.search(rb"(?im)^connection:\s*close", refused), refused[:300]


@case(area="security", case="CORS only for configured origins",
      did="preflight and GET /v1/models with Origin: a configured origin, another origin, 'null'; agents with no origins and with one",
      outcome="Access-Control-Allow-Origin only echoes the configured origin; never '*' unless configured; other origins get no CORS headers")
def test_cors_only_for_configured_origins(tiny_hub: HubServer, agents: list[AgentProcess], hermetic_home: Path) -> None:
    (hermetic_home / "settings.toml").write_text('[http]\ncors_origins = ["http://app.example"]\n')
    started = start_agent(hermetic_home)
    agents.append(started)
    with httpx.Client(base_url=started.http_url, timeout=30) as http:
        good = http.options("/v1/chat/completions", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
        assert good.headers.get("access-control-allow-origin") == "http://app.example"
        for origin in ("http://evil.example", "null", "http://app.example.evil.example", "https://app.example"):
            for answer in (http.get("/v1/models", headers={"Origin": origin}),
                           http.options("/v1/models", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})):
                assert "access-control-allow-origin" not in answer.headers, (origin, answer.headers)
    started.stop()
    (hermetic_home / "settings.toml").unlink()
    plain = start_agent(hermetic_home)
    agents.append(plain)
    answer = httpx.get(plain.http_url + "/v1/models", headers={"Origin": "http://app.example"}, timeout=30)
    assert answer.status_code == 403 and "access-control-allow-origin" not in answer.headers  # not listed: refused


@case(area="security", case="names from outside cannot reach outside the store",
      did="model ids and keys with '..', absolute paths, encoded slashes over ZeroMQ, /api and /v1; a hub repo listing siblings '../../x' and 'onnx/../../../escape.onnx'",
      outcome="invalid ids refused (bad_request/404); the malicious repo installs only its known files inside the cache; nothing written outside the home")
def test_no_name_reaches_outside_the_store(tiny_hub: HubServer, hub_repos: HubRepos, tiny_model: object,
                                           agents: list[AgentProcess], hermetic_home: Path, tmp_path: Path) -> None:
    evil = "evil-org/Tiny-Evil"
    publish(hub_repos, evil, repo_files(tiny_model.path))  # type: ignore[attr-defined]
    record = hub_repos.root / "repos" / "evil-org" / "Tiny-Evil.json"
    data = json.loads(record.read_text())
    for commit in data["commits"].values():
        files = commit["files"]
        some = next(iter(files.values()))
        for name in ("../../x", "onnx/../../../escape.onnx", "/abs/evil", "onnx/model_q4.onnx_data/../../../y"):
            files[name] = some
    record.write_text(json.dumps(data))
    started = start_agent(hermetic_home)
    agents.append(started)
    before = {p for p in tmp_path.rglob("*") if hermetic_home not in p.parents and p != hermetic_home}
    with Client(hermetic_home, timeout=30) as client:
        for bad in ("../../etc", "org/../../x", "/etc/passwd", "org/name/../../x", "..", "org/..", "a/b/c"):
            for request in (Download(model_id=bad), ModelFiles(model_id=bad), Activate(key=bad), Delete(key=bad),
                            Delete(key=f"huggingface-local/{bad}::q4::cpu")):
                with pytest.raises(RemoteError) as refused:
                    client.call(request)
                assert refused.value.code in {"bad_request", "invalid_name", "not_found"}, (bad, refused.value.code)
    with httpx.Client(base_url=started.http_url, timeout=30) as http:
        for path in ("/v1/models/..%2F..%2Fetc%2Fpasswd", "/v1/models/../../etc/passwd", "/v1/models/%2e%2e/%2e%2e/x"):
            assert http.get(path).status_code == 404, path
        headers = {"Authorization": f"Bearer {started.info.token}"}
        for path in ("/api/models/..%2F..%2Fetc/files", "/api/installed/..%2F..%2Fx", "/assets/..%2F..%2Fapp.py"):
            answer = http.request("DELETE" if "installed" in path else "GET", path, headers=headers)
            assert answer.status_code in (400, 404), (path, answer.status_code)
    done = cli("pull", evil, "--quant", "q4", home=hermetic_home)
    assert done.returncode == 0, done.stderr
    installed = json.loads(cli("ls", "--json", home=hermetic_home).stdout)["models"]
    entry = next(m for m in installed if m["model_id"] == evil)
    assert not any(".." in f or f.startswith("/") for f in entry["files"])
    after = {p for p in tmp_path.rglob("*") if hermetic_home not in p.parents and p != hermetic_home}
    new = {p for p in after - before if "hub" not in p.relative_to(tmp_path).parts[:1]}
    assert not new, f"written outside the home: {sorted(map(str, new))[:5]}"
    assert not (hermetic_home.parent / "x").exists() and not (hermetic_home.parent.parent / "x").exists()


@case(area="security", case="private files are user-only",
      did="run a worker, download a model, write settings; check modes of agent.json, manifest.json, logs/, the agent log and settings.toml",
      outcome="home and logs/ 0700, agent.json and manifest.json 0600, nothing group/world-writable")
def test_state_files_are_user_only(agent: AgentProcess) -> None:
    make_ready(agent)
    home = agent.home
    for name in ("agent.json", "manifest.json"):
        mode = stat.S_IMODE((home / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    for folder in (home, home / "logs"):  # what is inside is out of others' reach, whatever its own mode
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in home.rglob("*"):
        if path.is_symlink():
            continue
        assert not stat.S_IMODE(path.stat().st_mode) & 0o022, (path, oct(path.stat().st_mode))


@case(area="security", case="binding beyond loopback",
      did="hflocal serve --host 0.0.0.0 / a LAN address without settings, with allow_non_loopback but no key; the policy with both",
      outcome="refuses to start with one line naming the setting; starts only with allow_non_loopback and an API key (setting or HFLOCAL_API_KEY)")
def test_non_loopback_needs_the_setting_and_a_key(hermetic_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        done = run_serve(hermetic_home, extra_args=("--host", host))
        assert done.returncode == 1 and "allow_non_loopback" in done.stderr, done.stderr
        assert done.stderr.strip().count("\n") == 0 and not (hermetic_home / "agent.json").exists()
    (hermetic_home / "settings.toml").write_text("[http]\nallow_non_loopback = true\n")
    done = run_serve(hermetic_home, extra_args=("--host", "0.0.0.0"))
    assert done.returncode == 1 and "API key" in done.stderr, done.stderr
    wide = Settings(http=HttpSettings(host="0.0.0.0", allow_non_loopback=True))
    with pytest.raises(StartupError):
        _check_exposure(wide)
    _check_exposure(msgspec.structs.replace(wide, http=msgspec.structs.replace(wide.http, api_key="k")))
    monkeypatch.setenv("HFLOCAL_API_KEY", "k")
    _check_exposure(wide)
    for loopback in ("127.0.0.1", "127.0.0.5", "::1", "localhost"):
        _check_exposure(Settings(http=HttpSettings(host=loopback)))
