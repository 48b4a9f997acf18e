"""``hflocal`` management commands run as a user would: separate processes against a real agent,
which downloads from the local hub and serves a real tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from ipc.messages import ListInstalled
from tests.fakes.tiny_model import TinyModel
from tests.hubserver import HubRepos, HubServer
from tests.support.agentproc import AgentProcess, cli, start_agent
from tests.support.worker import TINY, TINY_REPLY, blob, publish, variant_key, wait_until

pytestmark = pytest.mark.timeout(180)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

Q4 = variant_key(TINY, "q4")
FP32 = variant_key(TINY, "fp32")
CURATED = [
    "onnx-community/Llama-3.2-1B-Instruct",
    "onnx-community/Llama-3.2-3B-Instruct",
    "onnx-community/Phi-3.5-mini-instruct-onnx",
    "onnx-community/gemma-2-2b-it",
    "onnx-community/Qwen2.5-1.5B-Instruct",
]


def ok(agent: AgentProcess, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = cli(*args, home=agent.home, env=env)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def ok_json(agent: AgentProcess, *args: str) -> Any:
    return json.loads(ok(agent, *args, "--json").stdout)


def fails(agent_home: Path, *args: str, env: dict[str, str] | None = None, status: int = 1) -> str:
    """Run a command that must fail: exit 1, nothing on stdout, one line on stderr; returned as is, or
    under ``--json`` the message of the ``{"error": {"code", "message"}}`` object that line must be."""
    result = cli(*args, home=agent_home, env=env)
    assert result.returncode == status, (args, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    if "--json" not in args:
        assert lines[0].startswith("hflocal: "), lines[0]
        return lines[0]
    error = json.loads(lines[0])["error"]
    assert set(error) == {"code", "message"} and error["code"] and error["message"], error
    return str(error["message"])


def expected_size(model: TinyModel, quant: str) -> int:
    onnx = {"q4": "onnx/model_q4.onnx", "fp32": "onnx/model.onnx"}[quant]
    names = [onnx, "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json"]
    return sum((model.path / n).stat().st_size for n in names)


def snapshot_of(agent: AgentProcess) -> Path:
    snapshots = list((agent.home / "cache" / f"models--{TINY.replace('/', '--')}" / "snapshots").iterdir())
    assert len(snapshots) == 1
    return snapshots[0]


# --------------------------------------------------------------------------- search and files


def test_search_by_query_and_the_curated_list(agent: AgentProcess, hub_repos: HubRepos) -> None:
    publish(hub_repos, "onnx-community/Tiny-Base", {"onnx/model.onnx": b"x", "config.json": b"{}"}, downloads=500)
    publish(hub_repos, "someone/tiny-no-onnx", {"model.safetensors": b"x"}, tags=("safetensors",),
            library_name="transformers", downloads=900)

    human = ok(agent, "search", "tiny").stdout
    assert TINY in human and "onnx-community/Tiny-Base" in human and "no-onnx" not in human
    found = ok_json(agent, "search", "tiny")
    assert found["query"] == "tiny"
    assert [m["id"] for m in found["models"]] == ["onnx-community/Tiny-Base", TINY]  # most downloaded first
    assert found["models"][1]["downloads"] == 50 and found["models"][1]["likes"] == 3

    assert "no ONNX text-generation models match 'nothing-like-this'" in ok(agent, "search", "nothing-like-this").stdout

    human = ok(agent, "search").stdout
    assert human.startswith("Suggested models")
    assert [line.split()[0] for line in human.splitlines()[2:]] == CURATED
    curated = ok_json(agent, "search")
    assert [m["id"] for m in curated["models"]] == CURATED
    assert all(m["curated"] for m in curated["models"])
    # The hub answered (404: it has none of them), so it was reached; their numbers are unknown, not 0.
    assert curated["hub_reached"] is True and not any(m["from_hub"] for m in curated["models"])
    assert all(line.split()[2:] == ["?", "?"] for line in human.splitlines()[2:])
    assert found["hub_reached"] is True and all(m["from_hub"] for m in found["models"])


def test_files_lists_each_quantization_with_its_size(agent: AgentProcess, tiny_model: TinyModel) -> None:
    human = ok(agent, "files", TINY).stdout
    assert human.splitlines()[0].startswith(TINY + " @ ")
    assert [line.split()[0] for line in human.splitlines()[2:-1]] == ["q4", "fp32"]
    assert human.splitlines()[-1].startswith("graph: fused (")  # the tiny model is a Llama: the fast path
    result = ok_json(agent, "files", TINY)
    assert result["model_id"] == TINY and len(result["commit"]) == 40 and result["gated"] is False
    sizes = {o["quantization"]: o["size"] for o in result["options"]}
    assert sizes == {"q4": expected_size(tiny_model, "q4"), "fp32": expected_size(tiny_model, "fp32")}
    q4 = next(o for o in result["options"] if o["quantization"] == "q4")
    assert q4["files"][0] == "onnx/model_q4.onnx" and "tokenizer.json" in q4["files"]
    assert q4["installed"] is False
    assert result["graph"] == "fused"


# --------------------------------------------------------------------------- pull, ls, use, rm


def test_pull_then_ls(agent: AgentProcess, tiny_model: TinyModel) -> None:
    pulled = ok(agent, "pull", TINY, "--quant", "q4")
    assert pulled.stdout.splitlines()[0].startswith(f"installed {Q4} (")
    assert f"hflocal use '{Q4}'" in pulled.stdout
    # Not a terminal: no progress bar is drawn, only the one "pulling" line.
    assert pulled.stderr.strip() == f"pulling {Q4}"
    snapshot = snapshot_of(agent)
    assert (snapshot / "onnx/model_q4.onnx").read_bytes() == (tiny_model.path / "onnx/model_q4.onnx").read_bytes()

    listing = ok(agent, "ls").stdout.splitlines()
    assert listing[0].split() == ["KEY", "KIND", "SIZE", "STATUS"]
    assert listing[1].split()[:2] == [Q4, "chat"] and listing[1].split()[-1] == "ready"
    models = ok_json(agent, "ls")["models"]
    assert [(m["key"], m["status"], m["size"], m["active"]) for m in models] == [
        (Q4, "ready", expected_size(tiny_model, "q4"), False)]
    assert ok_json(agent, "files", TINY)["options"][0]["installed"] is True

    # Pulling it again finds every file present and fetches nothing.
    again = ok_json(agent, "pull", TINY, "--quant", "q4")
    assert again == {**again, "key": Q4, "status": "ready", "size_bytes": expected_size(tiny_model, "q4")}


def test_pull_json_and_detach(agent: AgentProcess, tiny_model: TinyModel) -> None:
    result = ok_json(agent, "pull", TINY, "--quant", "fp32")
    assert result["key"] == FP32 and result["status"] == "ready" and result["job_id"].startswith("dl-")
    assert result["size_bytes"] == expected_size(tiny_model, "fp32")
    detached = ok_json(agent, "pull", TINY, "--quant", "q4", "--detach")
    assert detached["key"] == Q4 and detached["job_id"].startswith("dl-")
    with agent.client() as client:

        def q4_ready() -> bool:
            return any(m.key == Q4 and m.status == "ready" for m in client.call(ListInstalled()).models)

        wait_until(q4_ready, 60, "the detached download to finish")


def test_use_loads_the_model_and_the_api_answers(agent: AgentProcess) -> None:
    ok(agent, "pull", TINY, "--quant", "q4")
    used = ok(agent, "use", TINY)  # a bare model id with one variant names it
    assert used.stdout.strip() == f"{Q4} is active and loaded (CPUExecutionProvider)"

    health = httpx.get(agent.http_url + "/health", timeout=10).json()
    assert health["model"] == Q4 and health["model_state"] == "ready"
    answer = httpx.post(agent.http_url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32,
    }).json()
    assert answer["model"] == Q4
    assert answer["choices"][0]["message"]["content"] == TINY_REPLY

    status = ok_json(agent, "status")
    assert status["active"] == Q4 and status["model_state"] == "ready" and status["provider"] == "CPUExecutionProvider"
    human = ok(agent, "status").stdout
    assert f"model      {Q4} [ready]" in human and f"api        {agent.http_url}/v1" in human
    assert [m["active"] for m in ok_json(agent, "ls")["models"]] == [True]
    assert ok(agent, "ls").stdout.splitlines()[1].startswith("* " + Q4)

    with_json = ok_json(agent, "use", Q4)
    assert with_json == {"key": Q4, "state": "ready", "provider": "CPUExecutionProvider"}


def test_a_failed_use_keeps_the_previous_model_and_says_why(agent: AgentProcess) -> None:
    ok(agent, "pull", TINY, "--quant", "q4")
    ok(agent, "pull", TINY, "--quant", "fp32")
    ok(agent, "use", Q4)
    (snapshot_of(agent) / "onnx" / "model.onnx").resolve().write_bytes(b"not an onnx graph")

    line = fails(agent.home, "use", FP32)
    assert f"{FP32} could not be loaded" in line and f"{Q4} stays active" in line
    error = json.loads(cli("use", FP32, "--json", home=agent.home).stderr)["error"]
    assert error["code"] == "load_failed" and FP32 in error["message"]

    status = ok_json(agent, "status")
    assert status["active"] == Q4 and status["model_state"] in ("ready", "unloaded") and status["activating"] is None
    failed = status["activation_failed"]
    assert failed["key"] == FP32 and failed["code"] == "load_failed" and failed["message"] and failed["job_id"]
    assert f"failed     {FP32} could not be loaded" in ok(agent, "status").stdout
    errors = {m["key"]: m["load_error"] for m in ok_json(agent, "ls")["models"]}
    assert errors[Q4] is None and errors[FP32] == failed["message"]
    assert "last load failed" in ok(agent, "ls").stdout
    answer = httpx.post(agent.http_url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32,
    }).json()
    assert answer["model"] == Q4

    ok(agent, "use", Q4)  # a successful activation clears the record
    assert ok_json(agent, "status")["activation_failed"] is None


def test_rm_keeps_files_another_variant_shares(agent: AgentProcess, tiny_model: TinyModel) -> None:
    ok(agent, "pull", TINY, "--quant", "q4")
    ok(agent, "pull", TINY, "--quant", "fp32")
    snapshot = snapshot_of(agent)
    blobs = snapshot.parent.parent / "blobs"
    assert (snapshot / "onnx/model_q4.onnx").is_file() and (snapshot / "onnx/model.onnx").is_file()
    assert "several variants" in fails(agent.home, "rm", TINY)

    removed = ok_json(agent, "rm", Q4)
    assert removed["key"] == Q4
    assert removed["freed_bytes"] == (tiny_model.path / "onnx/model_q4.onnx").stat().st_size
    assert not (snapshot / "onnx/model_q4.onnx").exists()
    for shared in ("config.json", "tokenizer.json", "tokenizer_config.json", "onnx/model.onnx"):
        assert (snapshot / shared).read_bytes() == (tiny_model.path / shared).read_bytes()
    assert [(m["key"], m["status"]) for m in ok_json(agent, "ls")["models"]] == [(FP32, "ready")]

    human = ok(agent, "rm", TINY).stdout  # one variant left: the model id names it
    assert human.startswith(f"deleted {FP32} (")
    assert not blobs.parent.exists()
    assert "no models installed" in ok(agent, "ls").stdout
    assert ok_json(agent, "ls") == {"models": []}
    assert "not installed" in fails(agent.home, "rm", TINY)


# --------------------------------------------------------------------------- status, hw, stop


def test_status_and_hw(agent: AgentProcess) -> None:
    status = ok_json(agent, "status")
    assert status["pid"] == agent.proc.pid and status["http_url"] == agent.http_url
    assert status["home"] == str(agent.home) and status["active"] is None and status["model_state"] == "none"
    assert status["downloads"] == [] and status["warnings"] == []
    human = ok(agent, "status").stdout
    assert f"agent      pid {agent.proc.pid}" in human and "model      none" in human

    hw = ok_json(agent, "hw")
    assert hw["cores_logical"] == os.cpu_count() and hw["ram_total"] > 0
    assert "CPUExecutionProvider" in hw["providers"] and hw["auto_device"] in ("cpu", "cuda", "directml", "coreml")
    assert hw["cache_dir"] == str(agent.home / "cache") and hw["disk_free"] > 0 and hw["auto_reason"]
    human = ok(agent, "hw").stdout
    assert "providers" in human and "CPUExecutionProvider" in human and f"cache      {agent.home / 'cache'}" in human


def test_stop_shuts_the_agent_down(agent: AgentProcess) -> None:
    result = ok(agent, "stop")
    assert result.stdout.strip() == f"agent (pid {agent.proc.pid}) is shutting down"
    assert agent.wait() == 0
    assert not (agent.home / "agent.json").exists()
    assert "no hflocal agent is running" in fails(agent.home, "status")


def test_stop_json(agent: AgentProcess) -> None:
    assert ok_json(agent, "stop") == {"pid": agent.proc.pid}
    assert agent.wait() == 0


# --------------------------------------------------------------------------- errors


def test_errors_are_one_line_and_exit_1(agent: AgentProcess, hub_repos: HubRepos, tiny_hub: HubServer) -> None:
    publish(hub_repos, "onnx-community/Gated-Tiny", {"onnx/model_q4.onnx": blob("g", 1000), "config.json": b"{}"},
            gated=True)
    publish(hub_repos, "someone/no-onnx", {"model.safetensors": blob("s", 1000), "config.json": b"{}"})
    for json_flag in ((), ("--json",)):
        line = fails(agent.home, "pull", "onnx-community/Nope", "--quant", "q4", *json_flag)
        assert "onnx-community/Nope was not found on the Hub" in line
        line = fails(agent.home, "pull", TINY, "--quant", "fp16", *json_flag)
        assert line.endswith(f"{TINY} does not offer fp16; it offers q4, fp32")
        line = fails(agent.home, "pull", "onnx-community/Gated-Tiny", "--quant", "q4", *json_flag)
        assert "gated" in line and "HF_TOKEN" in line
        line = fails(agent.home, "pull", "someone/no-onnx", *json_flag)
        assert "no ONNX" in line or "ONNX weights" in line
        line = fails(agent.home, "pull", "../../etc", *json_flag)
        assert "invalid model id '../../etc'" in line
        line = fails(agent.home, "files", "onnx-community/Nope", *json_flag)
        assert "not found" in line
        line = fails(agent.home, "use", "onnx-community/Nope", *json_flag)
        assert "not installed" in line
        line = fails(agent.home, "rm", variant_key(TINY, "q8"), *json_flag)
        assert "no installed variant" in line
    # Nothing of these reached the store.
    assert ok_json(agent, "ls") == {"models": []}
    assert ok_json(agent, "status")["downloads"] == []


def test_json_errors_carry_the_agents_code(agent: AgentProcess) -> None:
    result = cli("pull", "onnx-community/Nope", "--quant", "q4", "--json", home=agent.home)
    assert json.loads(result.stderr)["error"]["code"] == "repo_not_found", result.stderr
    result = cli("use", "onnx-community/Nope", "--json", home=agent.home)
    assert json.loads(result.stderr)["error"]["code"] == "not_found", result.stderr


def test_usage_errors_and_version(hermetic_home: Path) -> None:
    """A usage error exits 2: argparse's text, or with ``--json`` a JSON error line; ``--version``."""
    line = fails(hermetic_home, "pull", "x", "--quant", "q3", "--json", status=2)
    assert "invalid choice: 'q3'" in line
    result = cli("status", "--bogus", home=hermetic_home)
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr and result.stdout == ""
    version = cli("--version", home=hermetic_home)
    assert (version.returncode, version.stdout) == (0, f"hflocal {tomllib.loads(PYPROJECT.read_text())['project']['version']}\n")


MANAGEMENT = [
    ("search", "qwen"), ("files", TINY), ("pull", TINY), ("ls",), ("rm", Q4), ("use", Q4), ("status",), ("hw",),
    ("stop",),
]


@pytest.mark.parametrize("args", MANAGEMENT, ids=[a[0] for a in MANAGEMENT])
def test_without_an_agent_commands_say_how_to_start_one(hermetic_home: Path, args: tuple[str, ...]) -> None:
    for extra in ((), ("--json",)):
        line = fails(hermetic_home, *args, *extra)
        assert "no hflocal agent is running" in line and "hflocal serve" in line
    error = json.loads(cli(*args, "--json", home=hermetic_home).stderr)["error"]
    assert error["code"] == "agent_not_running"


def test_a_stale_agent_json_means_no_agent(hermetic_home: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (hermetic_home / "agent.json").write_text(json.dumps({
        "http_url": "http://127.0.0.1:1", "request_endpoint": "tcp://127.0.0.1:1", "event_endpoint": "tcp://127.0.0.1:2",
        "token": "x", "pid": dead.pid, "session": "old",
    }))
    line = fails(hermetic_home, "status")
    assert "stale agent.json" in line and "hflocal serve" in line


def test_rm_of_the_active_model_leaves_none_active(agent: AgentProcess) -> None:
    ok(agent, "pull", TINY, "--quant", "q4")
    ok(agent, "use", Q4)
    assert httpx.get(agent.http_url + "/health", timeout=10).json()["model"] == Q4
    ok(agent, "rm", Q4)
    status = ok_json(agent, "status")
    assert status["active"] is None and status["loaded"] == [] and status["model_state"] == "none"
    assert httpx.get(agent.http_url + "/health", timeout=10).json()["model"] is None
    refused = httpx.post(agent.http_url + "/v1/chat/completions", timeout=30,
                         json={"messages": [{"role": "user", "content": "Hi"}]})
    assert refused.status_code >= 400 and refused.json()["error"]["message"]
    assert json.loads((agent.home / "manifest.json").read_text())["active"] is None


def test_pull_defaults_come_from_settings_and_device_from_the_option(
    tiny_hub: HubServer, hermetic_home: Path, agents: list[AgentProcess], tiny_model: TinyModel
) -> None:
    (hermetic_home / "settings.toml").write_text('[models]\ndefault_quantization = "fp32"\ndefault_device = "cpu"\n')
    agent = start_agent(hermetic_home)
    agents.append(agent)
    assert ok_json(agent, "pull", TINY)["key"] == variant_key(TINY, "fp32", "cpu")
    assert ok_json(agent, "pull", TINY, "--quant", "q4", "--device", "wasm")["key"] == variant_key(TINY, "q4", "cpu")
    assert ok_json(agent, "pull", TINY, "--quant", "q4", "--device", "auto")["key"] == Q4
    assert "invalid device" in fails(agent.home, "pull", TINY, "--device", "tpu").lower()
    keys = sorted(m["key"] for m in ok_json(agent, "ls")["models"])
    assert keys == sorted([variant_key(TINY, "fp32", "cpu"), variant_key(TINY, "q4", "cpu"), Q4])
    # One snapshot serves all three: the q4 weights were fetched once.
    assert len([r for r in tiny_hub.control.requests("GET", f"{TINY}/onnx/model_q4.onnx") if r["status"] == 200]) == 1
    assert ok(agent, "use", f"{TINY}::fp32").stdout.startswith(f"{variant_key(TINY, 'fp32', 'cpu')} is active")
    assert ok(agent, "rm", f"{TINY}::fp32").stdout.startswith(f"deleted {variant_key(TINY, 'fp32', 'cpu')} (")
    assert "several variants" in fails(agent.home, "rm", f"{TINY}::q4")
