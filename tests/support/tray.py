"""Helpers for the tray tests (and bench/tray.py) that run real workers: ports in settings.toml,
tiny models on the local hub, an observation recorder with bounded waits, and port checks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.tiny_model import TinyModel, build_tiny_repo
from tests.hubserver import HubRepos
from tests.support.agentproc import free_port
from tests.support.worker import wait_until as wait_until  # re-exported for the tests here


def configure_ports(home: Path, extra: str = "") -> tuple[int, int, int]:
    """Give ``home`` free loopback ports in ``settings.toml`` (the tray's worker reads them)."""
    http, req, pub = free_port(), free_port(), free_port()
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text(
        f'[http]\nport = {http}\n\n[zmq]\nrequest = "tcp://127.0.0.1:{req}"\nevents = "tcp://127.0.0.1:{pub}"\n{extra}'
    )
    return http, req, pub


def port_free(port: int) -> bool:
    """Nothing listens on ``port`` (a new server could bind it; TIME_WAIT leftovers do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def publish_tiny(
    hub_repos: HubRepos, model_id: str, dest: Path, reply: str, extra: dict[str, bytes] | None = None
) -> TinyModel:
    """Build a tiny onnx-community style repo (q4) answering ``reply`` and put it on the local hub
    (with ``extra`` files added as they are)."""
    model = build_tiny_repo(dest, ("q4",), reply=reply)
    files: dict[str, bytes | Path] = {str(p.relative_to(dest)): p for p in sorted(dest.rglob("*")) if p.is_file()}
    files.update(extra or {})
    hub_repos.add_repo(model_id, files, pipeline_tag="text-generation", tags=["onnx", "transformers.js"])
    return model


def health(http_port: int, timeout: float = 5.0) -> dict[str, Any]:
    """``GET /health``, or ``{}`` while nothing answers."""
    try:
        response = httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=timeout)
    except httpx.HTTPError:
        return {}
    body: dict[str, Any] = response.json() if response.status_code == 200 else {}
    return body




class Recorder:
    """Collects observations from any thread; ``wait_for`` returns the first match (bounded)."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self._cond = threading.Condition()

    def __call__(self, obs: object) -> None:
        with self._cond:
            self.items.append(obs)
            self._cond.notify_all()

    def of(self, kind: type) -> list[Any]:
        with self._cond:
            return [o for o in self.items if isinstance(o, kind)]

    def wait_for(self, kind: type, timeout: float, predicate: Callable[[Any], bool] = lambda _o: True, after: int = 0) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for obs in self.items[after:]:
                    if isinstance(obs, kind) and predicate(obs):
                        return obs
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {kind.__name__} within {timeout:.0f} s; saw {self.items!r}")
                self._cond.wait(remaining)
