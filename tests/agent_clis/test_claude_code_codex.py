"""Claude Code (``claude -p``) and Codex CLI (``codex exec``), the real npm packages, run headless and
offline against a real ``hflocal serve`` with a tiny model: the README's settings for each, a whole
turn through the Messages and Responses APIs. The CLIs come from ``tests/clients`` (``npm ci`` in
``scripts/test``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.tiny_model import build_tiny_repo
from tests.support.agentproc import AgentProcess, offline_agent_serving

pytestmark = pytest.mark.timeout(300)

REPLY = "Hello world! How are you today?"
KEY = "huggingface-local/local/Tiny-Agent::q4::auto"
BIN = Path(__file__).resolve().parents[1] / "clients" / "node_modules" / ".bin"
CONTEXT = 32768
"""Positions: Claude Code's bare prompt and Codex's base instructions are thousands of tokens of this
tiny vocabulary."""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent for the module, the tiny model (whose answer to anything is REPLY) active."""
    root = tmp_path_factory.mktemp("agent-clis")
    folder = build_tiny_repo(root / "Tiny-Agent", ("q4",), reply=REPLY, context=CONTEXT).path
    with offline_agent_serving(root, folder, KEY) as started:
        yield started


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} is missing: run scripts/test (it runs npm ci in tests/clients)"
    return str(path)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment with nothing of this machine's: its own HOME, no proxies, no keys."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TERM": "dumb",
            "NO_PROXY": "127.0.0.1,localhost", **extra}


def test_claude_code_answers_through_the_messages_api(agent: AgentProcess, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env(tmp_path, ANTHROPIC_BASE_URL=agent.http_url, ANTHROPIC_API_KEY="unused",
                    CLAUDE_CODE_MAX_OUTPUT_TOKENS="2048", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
                    DISABLE_AUTOUPDATER="1", DISABLE_TELEMETRY="1", DISABLE_ERROR_REPORTING="1")
    result = subprocess.run(
        [tool("claude"), "-p", "Say hello", "--bare", "--tools", "Bash", "--allowedTools", "Bash", "--model", KEY],
        cwd=work, env=env, capture_output=True, text=True, timeout=240, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr, agent.output()[-3000:])
    assert result.stdout.strip() == REPLY


def test_codex_answers_through_the_responses_api(agent: AgentProcess, tmp_path: Path) -> None:
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(
        f'model = "{KEY}"\nmodel_provider = "hflocal"\nweb_search = "disabled"\n\n'
        "[features]\nmulti_agent = false\n\n"
        '[model_providers.hflocal]\nname = "hflocal"\n'
        f'base_url = "{agent.http_url}/v1"\nwire_api = "responses"\nenv_key = "HFLOCAL_API_KEY"\n')
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    env = clean_env(tmp_path, CODEX_HOME=str(codex_home), HFLOCAL_API_KEY="unused")
    result = subprocess.run(
        [tool("codex"), "exec", "-s", "read-only", "Say hello"], cwd=work, env=env, capture_output=True,
        text=True, timeout=240, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout, result.stderr, agent.output()[-3000:])
    assert result.stdout.strip() == REPLY, (result.stdout, result.stderr)
