"""pytest fixtures shared by the end-to-end worker and CLI tests (``tests/worker``, ``tests/cli``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.tiny_model import TinyModel, build_tiny_repo
from tests.hubserver import HubRepos, HubServer
from tests.support.agentproc import AgentProcess, start_agent
from tests.support.worker import TINY, TINY_REPLY, publish, repo_files


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A real tiny model (q4 and fp32) that answers any chat with ``TINY_REPLY``; built once."""
    return build_tiny_repo(tmp_path_factory.mktemp("tiny") / "Tiny-Chat", ("q4", "fp32"), reply=TINY_REPLY)


@pytest.fixture
def tiny_hub(hub: HubServer, hub_repos: HubRepos, hf_env: Path, tiny_model: TinyModel) -> HubServer:
    """The local hub serving ``TINY``; the environment (inherited by agents) points at it."""
    publish(hub_repos, TINY, repo_files(tiny_model.path), downloads=50, likes=3)
    return hub


@pytest.fixture
def agent(tiny_hub: HubServer, agents: list[AgentProcess], hermetic_home: Path) -> AgentProcess:
    """A running ``hflocal serve`` for the test's home, talking to ``tiny_hub``."""
    started = start_agent(hermetic_home)
    agents.append(started)
    return started


__all__ = ["agent", "tiny_hub", "tiny_model"]
