"""Who may use the settings page and ``/api``: the token, the Host and the Origin.

First the policy functions on their own, then a real ``hflocal serve``: every refused request is
checked to have changed nothing (no download started, no byte fetched from the hub, nothing deleted,
the active model unchanged).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agent.http import access
from cli.commands import settings_url
from tests.hubserver import HubServer
from tests.support.agentproc import AgentProcess, cli
from tests.web.conftest import TINY, Api, variant_key

PORT = 9231


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize("host", [
    "127.0.0.1:9231", "localhost:9231", "LOCALHOST:9231", "[::1]:9231", "127.1.2.3:9231", "[::ffff:127.0.0.1]:9231",
])
def test_loopback_hosts_with_the_right_port_are_this_agent(host: str) -> None:
    assert access.host_allowed(host, PORT)


@pytest.mark.parametrize("host", [
    None, "", "evil.example:9231", "127.0.0.1.nip.io:9231", "localhost.evil.example:9231", "127.0.0.1:9232",
    "127.0.0.1", "localhost", "[::1]", "::1:9231", "127.0.0.1:9231:1", "user@127.0.0.1:9231", "127.0.0.1:09231x",
    "127.0.0.1:99999", "192.168.1.5:9231", "0.0.0.0:9231", "localhost.:9231", "127.0.0.1 :9231", "[::2]:9231",
])
def test_other_hosts_are_refused(host: str | None) -> None:
    assert not access.host_allowed(host, PORT)


def test_the_address_the_agent_was_explicitly_bound_to_is_accepted() -> None:
    assert access.host_allowed("192.168.1.5:9231", PORT, bound_host="192.168.1.5")
    assert not access.host_allowed("192.168.1.6:9231", PORT, bound_host="192.168.1.5")
    assert not access.host_allowed("0.0.0.0:9231", PORT, bound_host="0.0.0.0")
    assert not access.host_allowed("evil.example:9231", PORT, bound_host="0.0.0.0")


def test_default_port_80_when_the_host_has_none() -> None:
    assert access.host_allowed("localhost", 80)
    assert not access.host_allowed("localhost", PORT)


@pytest.mark.parametrize(("origin", "allowed"), [
    (None, True),
    ("http://127.0.0.1:9231", True),
    ("http://localhost:9231", True),
    ("http://[::1]:9231", True),
    ("http://127.0.0.1:9231/", True),
    ("null", False),
    ("", False),
    ("https://127.0.0.1:9231", False),
    ("http://127.0.0.1:8000", False),
    ("http://127.0.0.1", False),
    ("http://evil.example:9231", False),
    ("http://evil.example", False),
    ("http://user@127.0.0.1:9231", False),
    ("file://", False),
    ("chrome-extension://abc", False),
])
def test_origin(origin: str | None, allowed: bool) -> None:
    assert access.origin_allowed(origin, PORT) is allowed


def test_what_a_browser_marks_as_from_another_site_is_refused() -> None:
    assert access.from_another_site("POST", "cross-site", api=False)
    assert access.from_another_site("DELETE", "same-site", api=True)  # another port on localhost: same "site"
    assert access.from_another_site("GET", "cross-site", api=True)
    assert not access.from_another_site("GET", "cross-site", api=False)  # a link to the page: sign-in page
    assert not access.from_another_site("POST", "same-origin", api=True)
    assert not access.from_another_site("POST", "none", api=True)
    assert not access.from_another_site("POST", None, api=True)


def test_tokens() -> None:
    assert access.token_matches("abc", "abc")
    assert not access.token_matches("abd", "abc")
    assert not access.token_matches("", "")
    assert not access.token_matches(None, "abc")
    assert not access.token_matches("abc", None)
    assert not access.token_matches("é", "abc")
    assert access.bearer_token("Bearer  xyz ") == "xyz"
    assert access.bearer_token("bearer xyz") == "xyz"
    assert access.bearer_token("Basic xyz") is None
    assert access.bearer_token("Bearer") is None
    assert access.presented_tokens("Bearer a", {access.cookie_name(PORT): "b", access.cookie_name(1): "c"}, PORT) == ["a", "b"]
    header = access.set_cookie_header(PORT, "tok")
    assert header == "hflocal_token_9231=tok; Path=/; HttpOnly; SameSite=Strict"


# --------------------------------------------------------------------------- a real agent


@pytest.fixture
def unchanged(api: Api, tiny_on_hub: HubServer) -> Callable[[], None]:
    """Snapshot what a refused request must not change; call the result to check it did not."""
    before = (api.get("/api/installed").json(), api.get("/api/status").json()["active"])
    served = tiny_on_hub.control.bytes_served(TINY)

    def check() -> None:
        assert api.get("/api/downloads").json() == {"downloads": []}
        assert (api.get("/api/installed").json(), api.get("/api/status").json()["active"]) == before
        assert tiny_on_hub.control.bytes_served(TINY) == served

    return check


def _refusals(api: Api) -> dict[str, dict[str, str]]:
    port = api.agent.ports[0]
    good = {"Authorization": f"Bearer {api.token}"}
    return {
        "no token": {},
        "wrong token": {"Authorization": "Bearer " + "x" * len(api.token)},
        "wrong cookie": {"Cookie": f"{access.cookie_name(port)}=nope"},
        "cookie of another agent": {"Cookie": f"{access.cookie_name(port + 1)}={api.token}"},
        "token as a query parameter": {},  # only `/?token=` signs in; see the test
        "foreign Origin": {**good, "Origin": "http://evil.example"},
        "another port's Origin": {**good, "Origin": "http://127.0.0.1:8000"},
        "null Origin": {**good, "Origin": "null"},
        "cross-site fetch": {**good, "Sec-Fetch-Site": "cross-site"},
        "rebound Host": {**good, "Host": f"evil.example:{port}"},
        "wrong port in Host": {**good, "Host": f"127.0.0.1:{port + 1}"},
    }


def test_a_refused_download_starts_nothing(api: Api, unchanged: Callable[[], None]) -> None:
    for why, headers in _refusals(api).items():
        query = f"?token={api.token}" if why == "token as a query parameter" else ""
        body = b'{"model_id": "%s", "quantization": "q4"}' % TINY.encode()
        response = api.raw("POST", f"/api/downloads{query}", {**headers, "Content-Type": "application/json"}, content=body)
        assert response.status_code in (401, 403), (why, response.status_code, response.text)
        error = response.json()
        assert error["code"] in ("unauthorized", "forbidden") and error["message"], why
        assert response.headers["content-type"] == "application/json"
    unchanged()


def test_a_form_post_from_a_web_page_is_refused(api: Api, unchanged: Callable[[], None]) -> None:
    """What an HTML form can send without CORS: a urlencoded or text/plain body, no JSON."""
    for kind, body in (("application/x-www-form-urlencoded", f"model_id={TINY}"), ("text/plain", f'{{"model_id": "{TINY}"}}')):
        response = api.raw("POST", "/api/downloads", {"Authorization": f"Bearer {api.token}", "Content-Type": kind}, content=body)
        assert response.status_code == 415, response.text
        assert response.json()["code"] == "unsupported_media_type"
    unchanged()


def test_refused_deletes_and_activations_change_nothing(agent: AgentProcess, api: Api, tiny_on_hub: HubServer) -> None:
    key = variant_key(TINY, "q4")
    accepted = api.post("/api/downloads", {"model_id": TINY, "quantization": "q4"})
    assert accepted.status_code == 202, accepted.text
    _wait(lambda: any(m["key"] == key and m["status"] == "ready" for m in api.get("/api/installed").json()["models"]),
          "the download to finish")
    before = api.get("/api/installed").json()
    active = api.get("/api/status").json()["active"]
    path = f"/api/installed/{key}"
    for why, headers in _refusals(api).items():
        response = api.raw("DELETE", path, headers)
        assert response.status_code in (401, 403), (why, response.text)
        response = api.raw("POST", "/api/activate", {**headers, "Content-Type": "application/json"},
                           content=b'{"key": "%s"}' % key.encode())
        assert response.status_code in (401, 403), (why, response.text)
    assert api.get("/api/installed").json() == before
    assert active is None and api.get("/api/status").json()["active"] is None
    # The same requests with the token and without the foreign headers do what they say.
    assert api.post("/api/activate", {"key": key}).status_code == 202
    assert api.delete(path).json()["key"] == key
    assert api.get("/api/installed").json() == {"models": []}


def test_reads_need_the_token_and_this_agents_host_too(api: Api) -> None:
    for why, headers in _refusals(api).items():
        for path in ("/api/status", "/api/installed", "/api/hardware", "/api/events", "/"):
            if path == "/" and why == "cross-site fetch":
                continue  # a link from another site to the page: allowed, and without the cookie it signs in
            response = api.raw("GET", path, headers)
            assert response.status_code in (401, 403), (why, path, response.status_code)


def test_refusals_leave_the_clients_connection_usable(api: Api) -> None:
    """A refused request's body is never read; the answer closes the connection, so a keep-alive
    client's next request does not land in the remains of the refused one."""
    body = b'{"model_id": "org/name"}' * 100
    for _ in range(100):
        refused = api.raw("POST", "/api/downloads", {"Content-Type": "application/json"}, content=body)
        assert refused.status_code == 401
        assert refused.headers["connection"] == "close"
        wrong_type = api.post("/api/downloads", None, content=body, headers={"Content-Type": "text/plain"})
        assert wrong_type.status_code == 415
        assert api.get("/api/status").status_code == 200


def test_signing_in_sets_a_strict_httponly_cookie_that_then_works(agent: AgentProcess, api: Api) -> None:
    port = agent.ports[0]
    with httpx.Client(base_url=agent.http_url, trust_env=False) as browser_like:
        response = browser_like.get(f"/?token={agent.info.token}")
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert cookie == f"{access.cookie_name(port)}={agent.info.token}; Path=/; HttpOnly; SameSite=Strict"
        assert response.headers["cache-control"] == "no-store"
        page = browser_like.get("/")
        assert page.status_code == 200 and "<title>hflocal" in page.text
        assert browser_like.get("/api/status").json()["pid"] == agent.proc.pid
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
    with httpx.Client(base_url=agent.http_url, trust_env=False) as stranger:
        wrong = stranger.get("/?token=" + agent.info.token[:-1])
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert "hflocal open" in wrong.text
        assert stranger.get("/api/status").status_code == 401
        # The page's own script and style are public (they ship in the package), the page is not.
        assert stranger.get("/assets/app.js").status_code == 200
        assert stranger.get("/").status_code == 401
        assert stranger.get("/assets/app.js", headers={"Host": f"evil.example:{port}"}).status_code == 403


def test_the_refusal_for_scripts_says_how_to_authenticate(api: Api) -> None:
    response = api.raw("GET", "/api/status", {})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="hflocal"'
    assert re.search(r"Authorization: Bearer", response.json()["message"])
    assert "hflocal open" in response.json()["message"]


def test_the_openai_routes_are_left_as_they_were(api: Api) -> None:
    """The management token and checks guard only the page and ``/api``."""
    assert api.raw("GET", "/v1/models", {}).status_code == 200
    assert api.raw("GET", "/health", {}).status_code == 200


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_hflocal_open_prints_the_sign_in_url_or_says_how_to_start_an_agent(agent: AgentProcess, tmp_path: Path) -> None:
    done = cli("open", "--json", home=agent.home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"url": f"{agent.http_url}/?token={agent.info.token}"}
    nobody = cli("open", "--print", home=tmp_path / "empty-home")
    assert nobody.returncode == 1 and nobody.stdout == ""
    assert nobody.stderr.count("\n") == 1 and "hflocal serve" in nobody.stderr
    assert settings_url("http://0.0.0.0:9231", "t") == "http://127.0.0.1:9231/?token=t"
    assert settings_url("http://[::]:9231/", "t") == "http://[::1]:9231/?token=t"
