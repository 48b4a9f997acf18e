"""``/openapi.json`` describes the live API, and schemathesis finds no server error in it.

schemathesis generates requests from the document (valid and invalid bodies, path and query
values, with and without the management token) against a real ``hflocal serve`` on loopback and
checks that no answer is a 5xx and that every status and body is the one the document promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.reliability.support import assert_memory_returns, case, rss
from tests.support.agentproc import AgentProcess

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
        extra = set(ours[name]["properties"]) - theirs - {"top_k"}  # top_k: a common extension (vLLM, llama.cpp)
        assert not extra, f"{name}: fields OpenAI does not have: {extra}"


@case(area="bad input", case="schemathesis against /openapi.json on a live worker",
      did="schemathesis run: generated valid and invalid requests for every operation, as a script (no token) and with the agent's token",
      outcome="no 5xx, statuses and bodies as documented; the worker keeps serving and its RSS stays within bounds")
def test_schemathesis_finds_no_server_error(live: AgentProcess, tmp_path: Path) -> None:
    url = live.http_url + "/openapi.json"
    samples = []
    for headers in ([], ["-H", f"Authorization: Bearer {live.info.token}"], ["-H", f"Authorization: Bearer {live.info.token}"]):
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", url, "--checks",
             "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
             "--max-examples", "25", "--seed", "7", "--request-timeout", "60", "--generation-database", "none",
             "--exclude-path", "/openapi.json", "--exclude-operation-id", "search", "--exclude-operation-id", "modelFiles", "--exclude-operation-id", "startDownload", "--suppress-health-check", "filter_too_much,too_slow", *headers],
            capture_output=True, text=True, timeout=280, check=False, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"})
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        samples.append(rss(live.proc.pid))
        assert httpx.get(live.http_url + "/health", timeout=10).json()["model_state"] == "ready"
    assert_memory_returns(samples, "schemathesis rounds")
