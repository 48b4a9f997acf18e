"""OpenCode (``opencode run``, the real npm package) headless and offline against a real ``hflocal
serve``: hflocal configured as an ``@ai-sdk/openai-compatible`` provider in the work directory's
``opencode.json``, the tool model of ``tests.fakes.tool_model`` active. The model calls OpenCode's own
``write`` tool, OpenCode writes the file and sends the result back, the model answers RESULT_TEXT:
a whole agent loop through the Chat Completions API. The CLI comes from ``tests/clients``
(``npm ci`` in ``scripts/test``)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.tool_model import CONTEXT, RESULT_TEXT, WRITE_ARGUMENTS, build_tool_repo
from tests.support.agentproc import AgentProcess, offline_agent_serving

pytestmark = pytest.mark.timeout(300)

KEY = "huggingface-local/local/Tool-Agent::fp32::auto"
OPENCODE = Path(__file__).resolve().parent / "node_modules" / ".bin" / "opencode"
TASK = 'Write "hello from hflocal" into hello.txt.'


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent for the module, the tool model active."""
    root = tmp_path_factory.mktemp("opencode")
    with offline_agent_serving(root, build_tool_repo(root / "Tool-Agent").path, KEY) as started:
        yield started


def opencode_config(base_url: str) -> dict[str, object]:
    """What a user puts in ``opencode.json`` to use hflocal (the README's settings)."""
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "hflocal": {
                "npm": "@ai-sdk/openai-compatible",  # bundled in the opencode binary: nothing to install
                "name": "hflocal",
                "options": {"baseURL": f"{base_url}/v1", "apiKey": "unused"},
                # the model's context (``context_length`` in /v1/models) and an answer budget that fits
                # beside OpenCode's prompt: without them OpenCode asks for 32000 tokens and gets a 400
                "models": {KEY: {"name": "Tool-Agent (hflocal)", "limit": {"context": CONTEXT, "output": 4096}}},
            }
        },
        "model": f"hflocal/{KEY}",
        "autoupdate": False,
        "share": "disabled",
        "permission": "allow",  # headless: no prompt may block the write
    }


def clean_env(root: Path) -> dict[str, str]:
    """A user's environment with nothing of this machine's: own HOME and XDG dirs, no proxies, and
    OpenCode's network features (autoupdate, models.dev, share, LSP downloads, default plugins) off."""
    home = root / "home"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TERM": "dumb",
        "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"), "XDG_STATE_HOME": str(home / ".local" / "state"),
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1", "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    }


def test_opencode_writes_the_file_through_its_write_tool(agent: AgentProcess, tmp_path: Path) -> None:
    assert OPENCODE.exists(), f"{OPENCODE} is missing: run scripts/test (it runs npm ci in tests/clients)"
    work = tmp_path / "work"
    work.mkdir()
    (work / "opencode.json").write_text(json.dumps(opencode_config(agent.http_url), indent=2))
    result = subprocess.run(
        [str(OPENCODE), "run", "--print-logs", "--log-level", "INFO", "--model", f"hflocal/{KEY}", TASK],
        cwd=work, env=clean_env(tmp_path), capture_output=True, text=True, timeout=240, check=False,
        stdin=subprocess.DEVNULL)
    why = f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-8000:]}" \
          f"\n--- hflocal\n{agent.output()[-3000:]}"
    assert result.returncode == 0, why
    hello = work / "hello.txt"
    assert hello.exists(), why
    assert hello.read_text() == WRITE_ARGUMENTS["content"] == "hello from hflocal", why
    # turn two: the tool result went back and the model's answer is what opencode printed
    assert RESULT_TEXT in result.stdout, why
