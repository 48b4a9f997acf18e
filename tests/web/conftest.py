"""Fixtures for the settings page and the management API: a real tiny model on the local hub, a real
``hflocal serve``, and headless Chromium (Debian's, driven by Playwright; no browser download).

Agents here get their Hub settings through the environment ``hf_env`` set up, and each test its own
home; the browser is launched once per module and gets a fresh context (cookies) per test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.tiny_model import TinyModel, build_tiny_repo
from tests.hubserver import HubRepos, HubServer
from tests.support.agentproc import AgentProcess, cli, start_agent

TINY = "onnx-community/Tiny-Chat-ONNX"
"""A real tiny model (q4 and fp32) whose greedy answer to any chat is ``TINY_REPLY``."""
TINY_REPLY = "Hello world! How are you today?"
CHROMIUM = os.environ.get("HFLOCAL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def variant_key(model_id: str, quant: str, device: str = "auto") -> str:
    return f"huggingface-local/{model_id}::{quant}::{device}"


def repo_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Built once per session: a real model that answers any chat with ``TINY_REPLY``."""
    return build_tiny_repo(tmp_path_factory.mktemp("tiny-web") / "Tiny-Chat", ("q4", "fp32"), reply=TINY_REPLY)


@pytest.fixture
def tiny_on_hub(hub: HubServer, hub_repos: HubRepos, hf_env: Path, tiny_chat: TinyModel) -> HubServer:
    """The local hub serving ``TINY`` (plus a decoy that is not ONNX); agents inherit the environment."""
    hub_repos.add_repo(TINY, repo_files(tiny_chat.path), downloads=50, likes=3)
    hub_repos.add_repo("org/Tiny-Chat-weights-only", {"model.safetensors": b"x", "config.json": b"{}"})
    return hub


BIG = "onnx-community/Big-Weights-ONNX"
"""Not a runnable model: a q4 graph with 4 MiB of external data, for watching a transfer go by."""
BIG_SIZE = 4 * 1024 * 1024


@pytest.fixture
def big_on_hub(tiny_on_hub: HubServer, hub_repos: HubRepos) -> HubServer:
    data = bytes(range(256)) * (BIG_SIZE // 256)
    hub_repos.add_repo(BIG, {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b'{"version": "1.0"}',
        "onnx/model_q4.onnx": b"graph" * 1000,
        "onnx/model_q4.onnx_data": data,
    }, downloads=7)
    return tiny_on_hub


@pytest.fixture
def agent(tiny_on_hub: HubServer, agents: list[AgentProcess], hermetic_home: Path) -> AgentProcess:
    started = start_agent(hermetic_home)
    agents.append(started)
    return started


@pytest.fixture
def settings_url(agent: AgentProcess) -> str:
    """The sign-in URL, as a user gets it: from ``hflocal open --print``."""
    done = cli("open", "--print", home=agent.home)
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url == f"{agent.http_url}/?token={agent.info.token}"
    return url


class Api:
    """httpx against one agent with its token; ``raw`` sends exactly the headers given."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.base = agent.http_url
        self.token = agent.info.token
        self.client = httpx.Client(base_url=self.base, timeout=30, trust_env=False)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, headers=self.headers(kw.pop("headers", None)), **kw)

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return self.client.post(path, json=body, headers=self.headers(kw.pop("headers", None)), **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.delete(path, headers=self.headers(kw.pop("headers", None)), **kw)

    def raw(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> httpx.Response:
        return self.client.request(method, path, headers=headers, **kw)

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def api(agent: AgentProcess) -> Iterator[Api]:
    client = Api(agent)
    yield client
    client.close()


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (which is never asked to download one)."""
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install the 'chromium' package (scripts/apt-packages.txt)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    with sync_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    ctx.set_default_timeout(30_000)
    try:
        yield ctx
    finally:
        ctx.close()


__all__ = ["BIG", "TINY", "TINY_REPLY", "Api", "variant_key"]
