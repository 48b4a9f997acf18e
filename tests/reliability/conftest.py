"""Fixtures for the reliability tests: a real ``hflocal serve`` with the tiny model loaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import tiny_model as _tiny
from tests.hubserver import HubRepos, HubServer
from tests.reliability.support import make_ready
from tests.support.agentproc import AgentProcess, start_agent
from tests.support.fixtures import agent, tiny_hub, tiny_model  # noqa: F401 - fixtures
from tests.support.worker import TINY, publish, repo_files


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: _tiny.TinyModel) -> Iterator[AgentProcess]:  # noqa: F811
    """One agent per module with ``TINY`` (q4) active and loaded, on its own home and hub.

    Shared by the tests of a module that only talk to it (bad input, load): starting one per test
    would cost more than the tests. Tests that kill or reconfigure the worker use ``agent``."""
    root = tmp_path_factory.mktemp("live")
    repos = HubRepos(root / "hub")
    publish(repos, TINY, repo_files(tiny_model.path), downloads=5)
    hub = HubServer(repos.root).start()
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(root / "hf"), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost", "HFLOCAL_HOME": str(root / "home")}
    started: AgentProcess | None = None
    try:
        started = start_agent(root / "home", env=env)
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            make_ready(started)
        yield started
    finally:
        if started is not None:
            started.stop()
        hub.stop()


@pytest.fixture
def live_home(live: AgentProcess) -> Path:
    return live.home
