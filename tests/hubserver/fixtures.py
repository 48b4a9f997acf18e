"""pytest fixtures for tests that talk to the local hub.

Use them from any conftest or test module with ``from tests.hubserver.fixtures import *`` (or name
the fixtures). ``hf_env`` makes the official client hermetic: its cache, token and home under
``tmp_path``. huggingface_hub reads its environment once, at import, and the test process has
usually imported it already, so ``hf_env`` sets both the environment (for subprocesses) and the
already-imported ``huggingface_hub.constants``. ``ENDPOINT`` is the exception: it is baked into URL
templates at import, so in-process calls must pass ``endpoint=hub.url``
(``HfApi(endpoint=...)``, ``hf_hub_download(..., endpoint=...)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import HubServer
from .storage import HubRepos


@pytest.fixture
def hub_repos(tmp_path: Path) -> HubRepos:
    """An empty hub data folder; add repos before or while ``hub`` serves it."""
    return HubRepos(tmp_path / "hub")


@pytest.fixture
def hub(hub_repos: HubRepos) -> Iterator[HubServer]:
    """A started ``HubServer`` over ``hub_repos``, stopped (and counters gone) after the test."""
    server = HubServer(hub_repos.root).start()
    try:
        yield server
    finally:
        server.stop()
        _reset_client_sessions()


@pytest.fixture
def hf_env(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the client at ``hub`` with everything under ``tmp_path``; returns the hub cache dir."""
    import huggingface_hub.constants as constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    patched: dict[str, object] = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_OFFLINE": False,
    }
    for name, constant in patched.items():
        monkeypatch.setattr(constants, name, constant)
    return cache


def _reset_client_sessions() -> None:
    """Drop the client's pooled keep-alive connections to a server that no longer exists."""
    from huggingface_hub.utils._http import reset_sessions

    reset_sessions()


__all__ = ["hf_env", "hub", "hub_repos"]
