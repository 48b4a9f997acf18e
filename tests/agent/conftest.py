"""Fixtures for the agent's store/hub/download tests: a local hub, a hermetic home, repo builders."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.downloads import Downloads
from agent.paths import Paths
from agent.settings import HubSettings, Settings
from agent.store import Store
from ipc.messages import Event
from ipc.publisher import Publisher
from tests.hubserver.fixtures import hf_env, hub, hub_repos  # noqa: F401  (fixtures)
from tests.hubserver.storage import HubRepos

MODEL = "onnx-community/Tiny-Instruct"
SESSION = "test-session"
"""The session the downloads' events are stamped with (by a real ``Publisher``, as in the worker)."""


def blob(seed: str, size: int) -> bytes:
    """Deterministic pseudo-random bytes (different per seed), fast enough for a few MB."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def onnx_repo_files(
    quants: dict[str, int] | None = None, *, external: dict[str, list[int]] | None = None
) -> dict[str, bytes]:
    """An onnx-community layout: root config/tokenizer files, ``onnx/<quant file>`` of the given
    sizes and optional external-data files (``external={"q4": [size, size]}`` → ``_data``, ``_data_1``)."""
    names = {"q4": "model_q4.onnx", "q8": "model_quantized.onnx", "fp16": "model_fp16.onnx", "fp32": "model.onnx"}
    quants = {"q4": 300_000, "fp32": 200_000} if quants is None else quants
    files: dict[str, bytes] = {
        "config.json": b'{"model_type": "llama", "num_hidden_layers": 2}',
        "generation_config.json": b'{"eos_token_id": 2}',
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}',
        "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
        "special_tokens_map.json": b'{"eos_token": "<|im_end|>"}',
        "README.md": b"# tiny\n",
    }
    for quant, size in quants.items():
        files[f"onnx/{names[quant]}"] = blob(f"{quant}-graph", size)
        for i, data_size in enumerate((external or {}).get(quant, [])):
            suffix = "" if i == 0 else f"_{i}"
            files[f"onnx/{names[quant]}_data{suffix}"] = blob(f"{quant}-data-{i}", data_size)
    return files


class EventLog:
    """A thread-safe ``publish`` that keeps every event for assertions."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def __call__(self, event: Event) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def all(self, kind: type | None = None, job_id: str | None = None) -> list:
        with self._lock:
            return [
                e for e in self._events
                if (kind is None or isinstance(e, kind)) and (job_id is None or getattr(e, "job_id", None) == job_id)
            ]

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        with self._changed:
            found = self._changed.wait_for(lambda: next((e for e in self._events if predicate(e)), None), timeout)
            if found is None:
                raise AssertionError(f"no matching event within {timeout}s; got {self._events!r}")
            return found


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    home = tmp_path / "home"
    monkeypatch.setenv("HFLOCAL_HOME", str(home))
    p = Paths.for_home(home)
    p.ensure()
    return p


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
def settings() -> Settings:
    return Settings(hub=HubSettings(retries=3))


@pytest.fixture
def make_downloads(
    paths: Paths, settings: Settings, events: EventLog
) -> Iterator[Callable[..., tuple[Store, Downloads]]]:
    """Build ``(store, downloads)`` over ``paths`` (call again to "restart the worker")."""
    made: list[Downloads] = []

    def make(p: Paths | None = None, **kwargs: object) -> tuple[Store, Downloads]:
        store = Store(p or paths)
        options: dict = {"disk_margin_bytes": 0, "backoff_s": 0.05, **kwargs}
        publisher = Publisher(SESSION)  # no loop: the log receives each event on the publishing thread
        publisher.add_sink(events)
        d = Downloads(store, p or paths, settings, publisher.publish, **options)
        made.append(d)
        return store, d

    yield make
    for d in made:
        d.shutdown(wait_s=20)


@pytest.fixture
def tiny_repo(hub_repos: HubRepos, hf_env: Path) -> dict[str, bytes]:  # noqa: F811
    files = onnx_repo_files(external={"q4": [600_000, 400_000]})
    hub_repos.add_repo(MODEL, files, downloads=10)
    return files


def make_cache_repo(cache: Path, model_id: str, commit: str, files: dict[str, bytes]) -> Path:
    """Write a Hugging Face cache layout by hand (blobs named by sha256, snapshot symlinks, refs/main);
    returns the snapshot dir. Same content → same blob, as in the real cache."""
    repo = cache / ("models--" + model_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for rel, data in files.items():
        name = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / name).write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        os.symlink(os.path.relpath(repo / "blobs" / name, link.parent), link)
    return snapshot
