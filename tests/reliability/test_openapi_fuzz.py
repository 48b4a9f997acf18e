"""``/openapi.json`` describes the live API, and schemathesis finds no server error in it.

schemathesis generates requests from the document (valid and invalid bodies, path and query
values, with and without the management token) against a real ``hflocal serve`` on loopback and
checks that no answer is a 5xx and that every status and body is the one the document promises.
The operations that ask the Hub (``search``, ``modelFiles``, ``startDownload``) are covered too:
the agent's ``HF_ENDPOINT`` is the tests' local hub on 127.0.0.1 (the ``live`` fixture), which holds
only the tiny model, so every download schemathesis starts is of that model and anything else it
names is an unknown repo (404).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.reliability.support import assert_memory_returns, case, rss
from tests.support.agentproc import AgentProcess
from tests.support.worker import TINY, wait_until

SUBSET = Path(__file__).resolve().parents[1] / "http" / "data" / "openai-subset.openapi.json"


@case(area="bad input", case="/openapi.json matches the code and OpenAI's spec",
      did="read the served document; compare its request bodies with OpenAI's CreateChatCompletionRequest/CreateCompletionRequest",
      outcome="every route the app serves is documented; every documented body field exists in OpenAI's spec (same name)")
def test_the_document_covers_every_route_and_follows_openai(live: AgentProcess) -> None:
    doc = httpx.get(live.http_url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    for needed in [("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/v1/models", "GET"),
                   ("/v1/models/{model}", "GET"), ("/health", "GET"), ("/api/status", "GET"), ("/api/downloads", "POST"),
                   ("/api/activate", "POST"), ("/api/installed/{key}", "DELETE"), ("/api/hardware", "GET")]:
        assert needed in documented, needed
    openai = json.loads(SUBSET.read_text())["components"]["schemas"]
    ours = doc["components"]["schemas"]
    for name in ("CreateChatCompletionRequest", "CreateCompletionRequest"):
        theirs = set(openai[name].get("properties", {}))
        for sub in openai[name].get("allOf", []):
            ref = sub.get("$ref", "").rsplit("/", 1)[-1]
            theirs |= set(sub.get("properties", {})) | set(openai.get(ref, {}).get("properties", {}))
            for inner in openai.get(ref, {}).get("allOf", []):
                theirs |= set(openai.get(inner.get("$ref", "").rsplit("/", 1)[-1], {}).get("properties", {}))
        # top_k: a common extension (vLLM, llama.cpp); response_format on completions: hflocal's grammar extension
        allowed = {"top_k"} | ({"response_format"} if name == "CreateCompletionRequest" else set())
        extra = set(ours[name]["properties"]) - theirs - allowed
        assert not extra, f"{name}: fields OpenAI does not have: {extra}"


def _api(live: AgentProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {live.info.token}"}
    return httpx.request(method, live.http_url + path, headers=headers, timeout=60, trust_env=False, **kw)


@case(area="bad input", case="Hub operations with revisions and repos the Hub cannot name",
      did="model files and downloads of the tiny model at revisions '', '..', '.', with CR/LF and with non-Latin-1 text, "
          "at an unknown branch; unknown repos; a quantization the repo lacks (local hub)",
      outcome="400 bad_request for a malformed revision, 404 repo_not_found for an unknown repo or revision, 422 "
              "quant_not_offered; never a 5xx (these were 502: the Hub was asked for a different URL or broke its answer)")
@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("GET", f"/api/models/{TINY}/files?revision=%E1%81%B2%C2%B6%C3%9A", None, 404, "repo_not_found"),
    ("GET", f"/api/models/{TINY}/files?revision=v1%0D%0AX-Injected:%201", None, 400, "bad_request"),
    ("GET", f"/api/models/{TINY}/files?revision=..", None, 400, "bad_request"),
    ("GET", f"/api/models/{TINY}/files?revision=refs%2Fpr%2F1", None, 404, "repo_not_found"),
    ("GET", "/api/models/org/missing/files", None, 404, "repo_not_found"),
    ("POST", "/api/downloads", {"model_id": TINY, "revision": ""}, 400, "bad_request"),
    ("POST", "/api/downloads", {"model_id": TINY, "revision": "."}, 400, "bad_request"),
    ("POST", "/api/downloads", {"model_id": TINY, "revision": "\u1072\xb6"}, 404, "repo_not_found"),
    ("POST", "/api/downloads", {"model_id": TINY, "revision": "no-such-branch"}, 404, "repo_not_found"),
    ("POST", "/api/downloads", {"model_id": "onnx-community/Qwen2.5-0.5B-Instruct"}, 404, "repo_not_found"),
    ("POST", "/api/downloads", {"model_id": TINY, "quantization": "fp16"}, 422, "quant_not_offered"),
])
def test_hub_operations_answer_what_the_hub_cannot_name(
        live: AgentProcess, method: str, path: str, body: Any, status: int, code: str) -> None:
    response = _api(live, method, path, json=body)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert _api(live, "GET", "/api/downloads").json() == {"downloads": []}


HUB_OPERATIONS = {("GET", "/api/search"): "search", ("GET", "/api/models/"): "modelFiles",
                  ("POST", "/api/downloads"): "startDownload"}


def _hub_answers(har: Path) -> Counter[tuple[str, int, str]]:
    """(operation, status, what) for every answer of a Hub operation in a schemathesis HAR report;
    ``what`` is the error code, or for a search that was answered whether the Hub was searched."""
    found: Counter[tuple[str, int, str]] = Counter()
    for entry in json.loads(har.read_text())["log"]["entries"]:
        method, path = entry["request"]["method"], urlsplit(entry["request"]["url"]).path
        op = next((name for (m, prefix), name in HUB_OPERATIONS.items()
                   if m == method and (path == prefix or prefix.endswith("/") and path.startswith(prefix))), None)
        if op is None:
            continue
        status = entry["response"]["status"]
        try:
            answer = json.loads(entry["response"]["content"].get("text") or "null")
        except ValueError:
            answer = None
        what = answer.get("code", "") if isinstance(answer, dict) else ""
        if op == "search" and status == 200:
            what = "hub" if answer["query"].strip() else "curated"
        found[(op, status, what)] += 1
    return found


@case(area="bad input", case="schemathesis against /openapi.json on a live worker",
      did="schemathesis run: generated valid and invalid requests for every operation, the Hub ones (search, model files, "
          "downloads) included against the tests' local hub, as a script (no token) and with the agent's token",
      outcome="no 5xx, statuses and bodies as documented; unknown repos are 404, downloads only of the hub's tiny model and "
              "all finish; the worker keeps serving and its RSS stays within bounds")
def test_schemathesis_finds_no_server_error(live: AgentProcess, tmp_path: Path) -> None:
    url = live.http_url + "/openapi.json"
    samples = []
    answers: Counter[tuple[str, int, str]] = Counter()
    for n, headers in enumerate(([], ["-H", f"Authorization: Bearer {live.info.token}"],
                                 ["-H", f"Authorization: Bearer {live.info.token}"])):
        har = tmp_path / f"round-{n}.har"
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", url, "--checks",
             "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
             "--max-examples", "25", "--seed", "7", "--request-timeout", "60", "--generation-database", "none",
             "--exclude-path", "/openapi.json", "--suppress-health-check", "filter_too_much,too_slow",
             "--report", "har", "--report-har-path", str(har), *headers],
            capture_output=True, text=True, timeout=280, check=False, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"})
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        answers += _hub_answers(har)
        wait_until(lambda: _api(live, "GET", "/api/downloads").json() == {"downloads": []}, 120,
                   "the downloads schemathesis started to end")
        samples.append(rss(live.proc.pid))
        assert httpx.get(live.http_url + "/health", timeout=10).json()["model_state"] == "ready"
    assert_memory_returns(samples, "schemathesis rounds")
    # The Hub operations were exercised for real, not only refused: each reached the local hub.
    for wanted in [("search", 200, "hub"), ("modelFiles", 200, ""), ("modelFiles", 404, "repo_not_found"),
                   ("startDownload", 202, ""), ("startDownload", 404, "repo_not_found")]:
        assert answers[wanted], f"no {wanted} among the Hub operations' answers: {sorted(answers.items())}"
    installed = _api(live, "GET", "/api/installed").json()["models"]
    assert {m["model_id"] for m in installed} == {TINY}, installed
    assert all(m["status"] == "ready" for m in installed), installed
