"""A Hub repo as onnx-community publishes it, pulled and used through the CLI of a real agent: its first
load rewrites it into the fused graph beside the download, ``status`` and ``/health`` say so, it answers,
and removing the variant removes the rewrite too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hubserver import HubRepos, HubServer
from tests.imports.support import http_json
from tests.support.agentproc import AgentProcess, cli
from tests.support.worker import publish, variant_key

pytestmark = pytest.mark.timeout(600)

MODEL = "tiny-org/Tiny-Qwen2-ONNX"
KEY = variant_key(MODEL, "q4")


def test_a_pulled_export_runs_rewritten_and_goes_with_its_variant(
    agent: AgentProcess, hub: HubServer, hub_repos: HubRepos, exports: Path
) -> None:
    repo = exports / "qwen2" / "repo"
    files = {
        p.relative_to(repo).as_posix(): p for p in sorted(repo.rglob("*"))
        if p.is_file() and ".hflocal-fast" not in p.parts
    }
    commit = publish(hub_repos, MODEL, files)
    pulled = cli("pull", MODEL, "--quant", "q4", home=agent.home, timeout=240)
    assert pulled.returncode == 0, pulled.stderr
    used = cli("use", KEY, home=agent.home, timeout=240)
    assert used.returncode == 0, used.stderr

    status = json.loads(cli("status", "--json", home=agent.home).stdout)
    assert status["active"] == KEY and status["model_state"] == "ready"
    assert status["graph"] == "fused", status
    assert "graph      fused" in cli("status", home=agent.home).stdout
    _, health = http_json(f"{agent.http_url}/health")
    assert health["graph"] == "fused"

    repo_dir = next((agent.home / "cache").glob("models--tiny-org--Tiny-Qwen2-ONNX"))
    rewrite = repo_dir / ".hflocal-fast" / commit / "q4" / "onnx" / "model_q4.onnx"
    assert rewrite.is_file()
    listing = json.loads(cli("ls", "--json", home=agent.home).stdout)["models"]
    assert [m["key"] for m in listing] == [KEY]  # the rewrite is no variant of its own

    status_code, answer = http_json(
        f"{agent.http_url}/v1/chat/completions",
        {"model": KEY, "messages": [{"role": "user", "content": "Hello world!"}], "max_tokens": 8, "temperature": 0},
    )
    assert status_code == 200, answer
    assert answer["usage"]["completion_tokens"] > 0

    removed = cli("rm", KEY, home=agent.home)
    assert removed.returncode == 0, removed.stderr
    assert not rewrite.exists()
    assert not (repo_dir / ".hflocal-fast" / commit / "q4").exists()


def test_files_says_which_graph_a_repo_will_run(
    agent: AgentProcess, hub: HubServer, hub_repos: HubRepos, exports: Path
) -> None:
    """`hflocal files` tells, before the download, whether the fast path will take a repo, and why
    not when it will not (from its config.json; asking leaves nothing in the cache)."""
    repo = exports / "qwen3" / "repo"
    files: dict[str, bytes] = {
        p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*"))
        if p.is_file() and ".hflocal-fast" not in p.parts and p.name in ("config.json", "tokenizer.json", "model_q4.onnx")
    }
    publish(hub_repos, "tiny-org/Tiny-Qwen3-ONNX", files)
    other = json.loads(files["config.json"])
    other["model_type"] = "gpt_neox"
    publish(hub_repos, "tiny-org/Tiny-NeoX-ONNX", {**files, "config.json": json.dumps(other).encode()})
    cached_before = sorted(p.name for p in (agent.home / "cache").glob("models--*"))

    fused = json.loads(cli("files", "tiny-org/Tiny-Qwen3-ONNX", "--json", home=agent.home).stdout)
    assert (fused["graph"], fused["kind"]) == ("fused", "chat"), fused
    shown = cli("files", "tiny-org/Tiny-Qwen3-ONNX", home=agent.home).stdout
    assert "graph: fused" in shown

    original = json.loads(cli("files", "tiny-org/Tiny-NeoX-ONNX", "--json", home=agent.home).stdout)
    assert original["graph"] == "original"
    assert "'gpt_neox' is not on the fast path" in original["graph_note"]
    assert "graph: original (model_type 'gpt_neox'" in cli("files", "tiny-org/Tiny-NeoX-ONNX", home=agent.home).stdout
    assert sorted(p.name for p in (agent.home / "cache").glob("models--*")) == cached_before
