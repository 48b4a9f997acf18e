"""Property tests: every decoder of untrusted bytes either decodes or raises its one documented error.

Covers the ZeroMQ request/reply/event decoders, ``settings.toml``, ``manifest.json`` and
``agent.json``: whatever bytes they are given, the caller gets a value or a clean error, never an
unexpected exception (which, in the worker, would be a crash or a traceback to a user).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.paths import Paths
from agent.settings import Settings, SettingsError, load_settings
from agent.store import Store
from ipc.connection import AgentNotRunning, ConnectionInfo, read_connection
from ipc.events import decode_event
from ipc.messages import (
    AnyRequest,
    Request,
    encode,
    event_decoder,
    reply_decoder,
    request_decoder,
)
from tests.reliability.support import case

DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)
"""What msgspec raises for bad input; every caller (server, clients, subscribers) catches all three."""
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)
TAGS = sorted(t.__struct_config__.tag for t in AnyRequest.__args__)  # type: ignore[attr-defined]
maps = st.fixed_dictionaries({"type": st.sampled_from(TAGS) | st.text(max_size=8)},
                             optional={"id": values, "token": values, "protocol": values, "model_id": values,
                                       "key": values, "query": values, "limit": values, "job_id": values})


def _msgpack(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


@case(area="bad input", case="random bytes and msgpack maps to the ZeroMQ decoders",
      did="hypothesis: arbitrary bytes, truncated encodings and maps with every request tag and wrong field types",
      outcome="a decoded message or msgspec's DecodeError/ValidationError (the server answers bad_request); valid requests round-trip")
@FAST
@given(raw=st.binary(max_size=200), value=maps, cut=st.integers(0, 60))
def test_zeromq_decoders_decode_or_refuse(raw: bytes, value: dict[str, Any], cut: int) -> None:
    payload = _msgpack(value)
    bad_utf8 = payload.replace(b"\xa4ping", b"\xa4\xff\xfe\xfd\xfc")  # found by this test: a str that is not UTF-8
    for data in (raw, payload, payload[:cut], bad_utf8):
        for decoder in (request_decoder, reply_decoder, event_decoder):
            try:
                decoded = decoder.decode(data)
            except DECODE_ERRORS:
                continue
            if isinstance(decoded, Request):
                assert request_decoder.decode(encode(decoded)) == decoded
        decode_event([b"topic", data])  # an event or None, never an exception
        assert decode_event([data]) is None


@case(area="bad input", case="random settings.toml", did="hypothesis: arbitrary text and TOML tables with wrong types and unknown keys",
      outcome="Settings or SettingsError naming the file; the file is left exactly as it was")
@FAST
@given(text=st.text(max_size=200), table=st.dictionaries(st.sampled_from(["http", "zmq", "models", "hub", "cache_dir", "x"]),
                                                         st.dictionaries(st.sampled_from(["port", "host", "api_key", "max_loaded", "request", "events", "retries"]),
                                                                         st.integers(-5, 70000) | st.text(max_size=10) | st.booleans(), max_size=3)
                                                         | st.text(max_size=10), max_size=3))
def test_settings_load_or_refuse(tmp_path: Path, text: str, table: dict[str, Any]) -> None:
    path = tmp_path / "settings.toml"
    toml_lines = []
    for section, body in table.items():
        if isinstance(body, dict):
            toml_lines.append(f"[{section}]")
            toml_lines += [f"{k} = {json.dumps(v)}" for k, v in body.items()]
        else:
            toml_lines.insert(0, f"{section} = {json.dumps(body)}")
    for content in (text, "\n".join(toml_lines)):
        path.write_bytes(content.encode("utf-8", "surrogatepass"))
        try:
            assert isinstance(load_settings(path), Settings)
        except SettingsError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc).strip()
        assert path.read_bytes() == content.encode("utf-8", "surrogatepass")


@case(area="bad input", case="random manifest.json", did="hypothesis: arbitrary bytes and JSON with wrong types, traversal paths, bad keys",
      outcome="the store opens; an unreadable manifest is kept aside and rebuilt from the cache, with a warning")
@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=120), entry=st.dictionaries(st.sampled_from(["key", "model_id", "quantization", "device", "files", "status", "path", "size"]),
                                                          values | st.just(["../../etc/passwd"]) | st.just("/abs"), max_size=8))
def test_manifest_opens_or_is_rebuilt(tmp_path_factory: Any, raw: bytes, entry: dict[str, Any]) -> None:
    for content in (raw, json.dumps({"version": 1, "active": "x", "variants": {"k": entry}}, default=repr).encode()):
        home = tmp_path_factory.mktemp("home")
        paths = Paths.for_home(home)
        paths.ensure()
        paths.manifest.write_bytes(content)
        store = Store(paths)
        for e in store.list():  # whatever survived is a valid entry inside the store
            assert not any(f.startswith("/") or ".." in Path(f).parts for f in e.files)
        reopened = Store(paths)  # and what it wrote back is readable
        assert [e.key for e in reopened.list()] == [e.key for e in store.list()]


@case(area="bad input", case="random agent.json", did="hypothesis: arbitrary bytes and JSON objects with wrong field types",
      outcome="ConnectionInfo or AgentNotRunning ('no agent', how to start one); never another exception")
@FAST
@given(raw=st.binary(max_size=200), obj=st.dictionaries(st.sampled_from(["http_url", "request_endpoint", "event_endpoint", "token", "pid", "session"]),
                                                        values, max_size=6))
def test_agent_json_reads_or_means_no_agent(tmp_path: Path, raw: bytes, obj: dict[str, Any]) -> None:
    path = tmp_path / "agent.json"
    for content in (raw, json.dumps(obj, default=repr).encode(), b'{"token": "\xff"}'):
        path.write_bytes(content)
        try:
            info = read_connection(path, require_alive=False)
        except AgentNotRunning as exc:
            assert "hflocal serve" in str(exc)
        else:
            assert isinstance(info, ConnectionInfo)
