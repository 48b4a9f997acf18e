"""One resolver of model names behind every door: the same exact, partial, ambiguous and unknown
names get the same answer from the CLI (which sends them as typed), ZeroMQ and the HTTP API, from a
real agent holding two variants of the tiny model (docs/protocol.md, "Model names")."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import httpx
import pytest

from ipc.client import RemoteError
from ipc.messages import Activate, Delete, ListInstalled
from tests.support.agentproc import AgentProcess, cli
from tests.support.worker import TINY, variant_key

pytestmark = pytest.mark.timeout(180)

Q4 = variant_key(TINY, "q4")
FP32 = variant_key(TINY, "fp32")
UNKNOWN = "someone/not-here"
SEVERAL = f"'{TINY}' has several variants, name one: {FP32}, {Q4}"


def cli_json(agent: AgentProcess, *args: str) -> tuple[int, Any]:
    """Exit status and the parsed result (stdout) or error (stderr) of ``hflocal ... --json``."""
    result = cli(*args, "--json", home=agent.home)
    return result.returncode, json.loads(result.stdout if result.returncode == 0 else result.stderr)


def zmq_activate(agent: AgentProcess, name: str) -> str:
    """The key ZeroMQ's ``activate`` resolved ``name`` to, or ``code: message`` of its refusal."""
    client = agent.client()
    try:
        return str(client.call(Activate(key=name)).key)
    except RemoteError as exc:
        return f"{exc.code}: {exc.message}"
    finally:
        client.close()


def http_model(agent: AgentProcess, name: str) -> tuple[int, str]:
    """``GET /v1/models/<name>``: the model's id, or the error's code and message."""
    answer = httpx.get(f"{agent.http_url}/v1/models/{urllib.parse.quote(name, safe='/:')}", timeout=30)
    body = answer.json()
    if answer.status_code == 200:
        return 200, str(body["id"])
    return answer.status_code, f"{body['error']['code']}: {body['error']['message']}"


def test_the_same_name_means_the_same_variant_through_every_door(agent: AgentProcess) -> None:
    for quant in ("q4", "fp32"):
        assert cli("pull", TINY, "--quant", quant, home=agent.home).returncode == 0

    # Ambiguous (two variants, none active): refused everywhere, listing both, and nothing changed.
    assert cli_json(agent, "use", TINY, "--no-wait") == (1, {"error": {"code": "bad_request", "message": SEVERAL}})
    assert cli_json(agent, "rm", TINY) == (1, {"error": {"code": "bad_request", "message": SEVERAL}})
    assert cli_json(agent, "chat", TINY) == (1, {"error": {"code": "model", "message": SEVERAL}})  # asks over HTTP
    assert zmq_activate(agent, TINY) == f"bad_request: {SEVERAL}"
    assert http_model(agent, TINY) == (404, f"model_not_found: {SEVERAL}")
    chat = httpx.post(f"{agent.http_url}/v1/chat/completions", timeout=60,
                      json={"model": TINY, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
    assert (chat.status_code, chat.json()["error"]["message"]) == (404, SEVERAL)
    client = agent.client()
    try:
        with pytest.raises(RemoteError) as refused:
            client.call(Delete(key=TINY))
        assert (refused.value.code, refused.value.message) == ("bad_request", SEVERAL)
        assert sorted(m.key for m in client.call(ListInstalled()).models) == [FP32, Q4]
    finally:
        client.close()

    # Unknown: not_found over ZeroMQ and the CLI, model_not_found over HTTP.
    code, error = cli_json(agent, "use", UNKNOWN)
    assert (code, error["error"]["code"]) == (1, "not_found") and UNKNOWN in error["error"]["message"]
    assert zmq_activate(agent, UNKNOWN) == f"not_found: {error['error']['message']}"
    status, http_error = http_model(agent, UNKNOWN)
    assert status == 404 and http_error.startswith("model_not_found: ") and UNKNOWN in http_error

    # A partial name matching one variant, and a full key: that variant, everywhere.
    for name, key in ((f"{TINY}::fp32", FP32), (Q4, Q4)):
        assert http_model(agent, name) == (200, key)
        assert zmq_activate(agent, name) == key
        code, used = cli_json(agent, "use", name)  # waits for the load: then it is the active model
        assert (code, used["key"]) == (0, key)

    # Several variants, one of them active: the bare id means the active one, everywhere.
    assert http_model(agent, TINY) == (200, Q4)
    assert zmq_activate(agent, TINY) == Q4
    assert cli_json(agent, "use", TINY)[1]["key"] == Q4
    code, removed = cli_json(agent, "rm", TINY)
    assert (code, removed["key"]) == (0, Q4)

    # One variant left: the bare id names it.
    assert http_model(agent, TINY) == (200, FP32)
    assert zmq_activate(agent, TINY) == FP32
