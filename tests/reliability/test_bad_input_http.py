"""Bad input over HTTP, against a live ``hflocal serve`` with a model loaded.

Random JSON bodies on every route, then absurd values (huge ``max_tokens``, 10 MB prompts, deeply
nested JSON, invalid UTF-8, NaN): each answer is a valid completion or an OpenAI-shaped error with a
4xx status (never a 500 or a traceback), the worker keeps serving, and its memory comes back.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.support import KEY, assert_memory_returns, case, rss
from tests.support.agentproc import AgentProcess

ROUTES = [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
          ("GET", f"/v1/models/{KEY}"), ("GET", "/health"), ("GET", "/openapi.json")]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=16)
field_names = st.sampled_from(["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                               "stream", "stop", "n", "logprobs", "top_logprobs", "tools", "tool_choice", "seed",
                               "stream_options", "echo", "response_format", "logit_bias", "suffix"])
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "x"]) | json_values},
                                optional={"content": st.text(max_size=40) | json_values, "name": json_values})
bodies = st.dictionaries(field_names, json_values, max_size=6) | st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=3)},
    optional={"max_tokens": st.integers(-3, 40) | json_values, "stream": st.booleans(), "temperature": json_values,
              "model": st.sampled_from([KEY, "onnx-community/Tiny-Chat", "../../etc", ""]) | json_values}) | json_values


def check_answer(response: httpx.Response, *, stream_ok: bool = True) -> None:
    """A 200 with a body of the right kind, or an OpenAI-shaped 4xx/503 error."""
    assert response.status_code != 500 and response.status_code < 600, response.text[:300]
    if response.status_code == 200:
        if response.headers["content-type"].startswith("text/event-stream"):
            assert stream_ok and response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
        else:
            assert isinstance(response.json(), dict)
        return
    assert 400 <= response.status_code < 600, response.status_code
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert "Traceback" not in response.text


@case(area="bad input", case="random JSON on every HTTP route (live worker)",
      did="hypothesis: random bodies and field values on /v1/chat/completions, /v1/completions, /v1/models, /health, /openapi.json",
      outcome="a valid answer or an OpenAI-shaped 4xx error naming the problem; never a 500; the worker keeps serving")
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_random_json_on_every_route(live: AgentProcess, route: tuple[str, str], body: Any) -> None:
    method, path = route
    with httpx.Client(base_url=live.http_url, timeout=60) as http:
        content = json.dumps(body).encode() if method == "POST" else None
        response = http.request(method, path, content=content, headers={"Content-Type": "application/json"})
        check_answer(response)
        assert http.get("/health").status_code == 200


def _absurd_round(http: httpx.Client) -> list[str]:
    """One round of absurd requests; returns what each answered (status + error code)."""
    seen: list[str] = []
    chat = "/v1/chat/completions"
    hi = [{"role": "user", "content": "Hi"}]
    cases: list[tuple[str, bytes, str]] = [
        ("max_tokens 10^9", json.dumps({"messages": hi, "max_tokens": 10**9}).encode(), "application/json"),
        ("max_tokens 10^30", json.dumps({"messages": hi, "max_tokens": 10**30}).encode(), "application/json"),
        ("1 MB prompt", json.dumps({"messages": [{"role": "user", "content": "a " * (2**19)}]}).encode(), "application/json"),
        ("20 MB body", b'{"messages": [{"role": "user", "content": "' + b"b" * (20 * 2**20) + b'"}]}', "application/json"),
        ("nested JSON", b"[" * 200_000 + b"]" * 200_000, "application/json"),
        ("nested messages", json.dumps({"messages": hi, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}).encode()[:-2]
         + b', "x": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}", "application/json"),
        ("invalid UTF-8", b'{"messages": [{"role": "user", "content": "\xff\xfe\xc3("}]}', "application/json"),
        ("NaN temperature", b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}', "application/json"),
        ("Infinity top_p", b'{"messages": [{"role": "user", "content": "Hi"}], "top_p": 1e999}', "application/json"),
        ("not JSON at all", b"\x00\x01\x02garbage", "text/plain"),
        ("empty body", b"", "application/json"),
        ("1 MB completion prompt", json.dumps({"prompt": "a " * (2**19), "max_tokens": 4}).encode(), "application/json"),
    ]
    for name, body, ctype in cases:
        path = "/v1/completions" if "completion prompt" in name else chat
        response = http.post(path, content=body, headers={"Content-Type": ctype})
        check_answer(response)
        if response.status_code != 200:
            seen.append(f"{name}: {response.status_code} {response.json()['error']['code']}")
        else:
            seen.append(f"{name}: 200")
        assert http.get("/health").json()["model_state"] == "ready"
    return seen


@case(area="bad input", case="absurd values over HTTP, repeated (live worker)",
      did="a 10 MB prompt; then 3 rounds of: max_tokens 10^9 and 10^30, 1 MB prompts, a 20 MB body, 200 000-deep JSON, invalid UTF-8, NaN/Infinity, non-JSON, empty body",
      outcome="each a completion or a clear 400/413 (context length, body too large, invalid JSON); worker RSS back within bounds after every round")
def test_absurd_values_get_clear_errors_and_memory_returns(live: AgentProcess) -> None:
    samples: list[int] = []
    with httpx.Client(base_url=live.http_url, timeout=300) as http:
        huge = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a " * (5 * 2**20)}]})
        check_answer(huge)  # 10 MB: refused before tokenizing (it cannot fit, whatever its tokens)
        assert huge.status_code == 400 and "context length" in huge.json()["error"]["message"]
        first = _absurd_round(http)  # warm-up: tokenizer caches, allocator pools
        samples.append(rss(live.proc.pid))
        for _ in range(2):
            assert _absurd_round(http) == first
            samples.append(rss(live.proc.pid))
    expected = {"20 MB body: 413", "nested JSON: 400", "invalid UTF-8: 400", "NaN temperature: 400", "not JSON at all: 400"}
    assert expected <= {s.rsplit(" ", 1)[0] for s in first}, first
    assert any(s.startswith("1 MB prompt: 400") for s in first), first
    assert_memory_returns(samples, "absurd HTTP requests")
