"""Parts for end-to-end tests of the worker: repos on the test hub, a hand-written msgpack encoder,
raw ZeroMQ request/subscribe helpers (what a client in another language would do), bounded waits.

Nothing here imports the project's client: a test that uses these talks to the worker only through
the wire format of ``docs/protocol.md``.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import zmq

from tests.hubserver import HubRepos

T = TypeVar("T")

TINY = "onnx-community/Tiny-Chat"
"""A real tiny model (q4 and fp32) whose greedy answer to any chat is ``TINY_REPLY``."""
TINY_REPLY = "Hello world! How are you today?"
BIG = "onnx-community/Big-Weights"
"""A repo whose weights are not a runnable model: big files for transfer, resume and cancel tests."""
BIG_DATA = "onnx/model_q4.onnx_data"
MIB = 1 << 20


def repo_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder``, keyed by its repo-relative path (for ``HubRepos.add_repo``)."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def blob(seed: str, size: int) -> bytes:
    """Deterministic incompressible bytes."""
    import hashlib

    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def big_repo_files(data_size: int, *, fp32_data_size: int | None = None) -> dict[str, bytes]:
    """An onnx-community layout with a q4 graph plus one external-data file of ``data_size`` bytes
    (and the same for fp32 when ``fp32_data_size`` is given)."""
    files = {
        "config.json": b'{"model_type": "llama", "num_hidden_layers": 2}',
        "generation_config.json": b'{"eos_token_id": 2}',
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}',
        "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
        "onnx/model_q4.onnx": blob("q4-graph", 40_000),
        BIG_DATA: blob("q4-data", data_size),
    }
    if fp32_data_size is not None:
        files["onnx/model.onnx"] = blob("fp32-graph", 40_000)
        files["onnx/model.onnx_data"] = blob("fp32-data", fp32_data_size)
    return files


def publish(repos: HubRepos, model_id: str, files: dict[str, bytes] | dict[str, Path], **meta: Any) -> str:
    """Add ``model_id`` to the hub as a text-generation ONNX repo; returns its commit."""
    return repos.add_repo(model_id, files, **meta)


def variant_key(model_id: str, quant: str, device: str = "auto") -> str:
    return f"huggingface-local/{model_id}::{quant}::{device}"


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail (naming ``what``) after ``timeout``.

    The timeout is a guard against hanging, never the property under test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- msgpack by hand


def _mp_str(text: str) -> bytes:
    data = text.encode()
    if len(data) < 32:
        return bytes([0xA0 | len(data)]) + data
    if len(data) < 256:
        return b"\xd9" + bytes([len(data)]) + data
    return b"\xda" + struct.pack(">H", len(data)) + data


def _mp_value(value: Any) -> bytes:
    if value is None:
        return b"\xc0"
    if value is True:
        return b"\xc3"
    if value is False:
        return b"\xc2"
    if isinstance(value, int):
        if 0 <= value < 128:
            return bytes([value])
        return b"\xd3" + struct.pack(">q", value)
    if isinstance(value, str):
        return _mp_str(value)
    raise TypeError(f"hand_msgpack does not write {type(value).__name__}")


def hand_msgpack(fields: dict[str, Any]) -> bytes:
    """A msgpack map written byte by byte (strings, ints, bools, nil), as a client without a msgpack
    library would; at most 15 fields."""
    assert len(fields) < 16
    out = bytes([0x80 | len(fields)])
    for key, value in fields.items():
        out += _mp_str(key) + _mp_value(value)
    return out


# --------------------------------------------------------------------------- raw sockets


class RawReq:
    """A plain ``zmq.REQ`` socket: one frame out, one frame back (a fresh socket after a timeout)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._ctx = zmq.Context.instance()
        self._sock: zmq.Socket[Any] | None = None

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            self._sock = self._ctx.socket(zmq.REQ)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(self.endpoint)
        return self._sock

    def send_raw(self, payload: bytes | list[bytes], timeout: float = 15.0) -> dict[str, Any] | None:
        """The decoded reply map, or None (and the socket is replaced) if none came in ``timeout``."""
        sock = self._socket()
        if isinstance(payload, list):
            sock.send_multipart(payload)
        else:
            sock.send(payload)
        if not sock.poll(int(timeout * 1000)):
            self.close()
            return None
        frames = sock.recv_multipart()
        assert len(frames) == 1, frames
        reply = msgspec.msgpack.decode(frames[0])
        assert isinstance(reply, dict), reply
        return reply

    def call(self, fields: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        reply = self.send_raw(hand_msgpack(fields), timeout)
        assert reply is not None, f"no reply to {fields.get('type')} within {timeout}s"
        return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


@contextmanager
def raw_req(endpoint: str) -> Iterator[RawReq]:
    req = RawReq(endpoint)
    try:
        yield req
    finally:
        req.close()


class EventRecorder:
    """A raw ``zmq.SUB`` socket drained by a thread into a list of ``(topic, map)``.

    ``wait_connected`` blocks until the first event (any heartbeat) arrived, so nothing published
    afterwards can be lost to the PUB/SUB "slow joiner" effect.
    """

    def __init__(self, connection: Any, topics: tuple[str, ...] = ("",)) -> None:
        """``connection``: what ``agent.json`` says (``event_endpoint``, and ``event_key`` that
        every subscription and topic starts with; the topics recorded are without it)."""
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._key = connection.event_key.encode()
        for topic in {*topics, "worker.status"}:
            self._sock.setsockopt(zmq.SUBSCRIBE, self._key + topic.encode())
        self._sock.connect(connection.event_endpoint)
        self._topics = topics
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="event-recorder", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(100):
                continue
            topic, payload = self._sock.recv_multipart()
            event = msgspec.msgpack.decode(payload)
            with self._cond:
                self.events.append((topic[len(self._key):].decode(), event))
                self._cond.notify_all()

    def wait_connected(self, timeout: float = 30.0) -> None:
        self.wait_for(lambda t, e: True, timeout, "any event (the heartbeat comes every 2 s)")

    def wait_for(
        self, predicate: Callable[[str, dict[str, Any]], bool], timeout: float, what: str
    ) -> tuple[str, dict[str, Any]]:
        with self._cond:
            found = self._cond.wait_for(
                lambda: next(((t, e) for t, e in self.events if predicate(t, e)), None), timeout
            )
        if found is None:
            raise AssertionError(f"no event {what} within {timeout:g}s; got {[t for t, _ in self.events]}")
        return found

    def of_job(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        with self._cond:
            return [(t, e) for t, e in self.events if e.get("job_id") == job_id]

    def topics(self, prefix: str = "") -> list[str]:
        with self._cond:
            return [t for t, _ in self.events if t.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close(linger=0)

    def __enter__(self) -> EventRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def job_end(recorder: EventRecorder, job_id: str, timeout: float = 120.0) -> tuple[str, dict[str, Any]]:
    """The finished/failed/cancelled event of ``job_id``."""
    ends = ("download.finished", "download.failed", "download.cancelled")
    return recorder.wait_for(lambda t, e: t in ends and e.get("job_id") == job_id, timeout, f"ending job {job_id}")


# --------------------------------------------------------------------------- the store on disk


def repo_cache(home: Path, model_id: str) -> Path:
    """The agent's Hugging Face cache folder of ``model_id`` (default ``cache_dir``)."""
    return home / "cache" / ("models--" + model_id.replace("/", "--"))


def partial_bytes(home: Path, model_id: str) -> int:
    """Bytes in the largest ``.incomplete`` blob of ``model_id`` (0 if none)."""
    blobs = repo_cache(home, model_id) / "blobs"
    return max((p.stat().st_size for p in blobs.glob("*.incomplete")), default=0) if blobs.is_dir() else 0


def manifest_entry(home: Path, key: str) -> dict[str, Any] | None:
    """The entry of ``key`` in ``manifest.json`` as written on disk."""
    import json

    data = json.loads((home / "manifest.json").read_text())
    entry = data["variants"].get(key)
    return entry if entry is None else dict(entry)
