"""Faults around a real worker: it is killed mid-download, the hub dies mid-file, the manifest is
corrupt. Bytes are measured on the hub, never assumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ipc.messages import Download, ListInstalled, Ping, Status
from tests.hubserver import HubProcess, HubRepos, HubServer
from tests.hubserver.process import REPO_ROOT
from tests.support.agentproc import AgentProcess, cli, start_agent
from tests.support.worker import (
    BIG,
    BIG_DATA,
    MIB,
    TINY,
    EventRecorder,
    big_repo_files,
    job_end,
    manifest_entry,
    partial_bytes,
    publish,
    repo_cache,
    variant_key,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)

KEY = variant_key(BIG, "q4")
SIZE = 12 * MIB
"""Bigger than huggingface_hub's 10 MiB default read, so a resume cannot hide in one chunk."""
DATA = f"{BIG}/{BIG_DATA}"


def installed(agent: AgentProcess) -> dict[str, str]:
    with agent.client() as client:
        return {m.key: m.status for m in client.call(ListInstalled()).models}


def wait_ready(agent: AgentProcess, key: str, timeout: float = 120) -> None:
    def ready() -> bool:
        status = installed(agent).get(key)
        assert status != "error", manifest_entry(agent.home, key)
        return status == "ready"

    wait_until(ready, timeout, f"{key} to be ready")


def start_download(agent: AgentProcess, model_id: str = BIG, quant: str = "q4") -> str:
    with agent.client() as client:
        return str(client.call(Download(model_id=model_id, quantization=quant)).job_id)


def ranged_gets(control_requests: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    return [(r["range"], r["status"], r["bytes"]) for r in control_requests if r["status"] in (200, 206)]


def assert_complete(home: Path, files: dict[str, bytes]) -> None:
    snapshot = Path(manifest_entry(home, KEY)["path"])  # type: ignore[index]
    assert (snapshot / BIG_DATA).read_bytes() == files[BIG_DATA]
    assert partial_bytes(home, BIG) == 0


@pytest.mark.parametrize("resume_on_start", [True, False], ids=["resumes-by-itself", "resumed-by-pull"])
def test_worker_killed_mid_download_resumes_from_the_bytes_on_disk(
    hub: HubServer, hub_repos: HubRepos, hf_env: Path, hermetic_home: Path, agents: list[AgentProcess],
    resume_on_start: bool,
) -> None:
    files = big_repo_files(SIZE)
    publish(hub_repos, BIG, files)
    hub.control.add_fault(DATA, rate_limit_bytes_per_s=4_000_000, times=-1)
    if not resume_on_start:
        (hermetic_home / "settings.toml").write_text("[hub]\nresume_on_start = false\n")
    first = start_agent(hermetic_home)
    agents.append(first)
    start_download(first)
    wait_until(lambda: partial_bytes(hermetic_home, BIG) >= 5 * MIB, 60, "5 MiB on disk")
    first.kill()  # SIGKILL: no cleanup at all
    on_disk = partial_bytes(hermetic_home, BIG)
    assert 5 * MIB <= on_disk < SIZE
    assert manifest_entry(hermetic_home, KEY)["status"] == "downloading"  # type: ignore[index]

    second = start_agent(hermetic_home)
    agents.append(second)
    if resume_on_start:
        wait_ready(second, KEY)
    else:
        assert installed(second) == {KEY: "downloading"}
        with second.client() as client:
            assert client.call(Status()).downloads == []  # nothing runs until asked
        pulled = cli("pull", BIG, "--quant", "q4", home=hermetic_home)
        assert pulled.returncode == 0, pulled.stderr
        assert pulled.stdout.startswith(f"installed {KEY}")
    gets = ranged_gets(hub.control.requests("GET", DATA))
    assert gets[0][:2] == (None, 200)  # the first worker's fetch from 0
    assert gets[1:] == [(f"bytes={on_disk}-", 206, SIZE - on_disk)]  # the second: only the rest
    assert SIZE - on_disk < SIZE
    assert hub.control.bytes_served(DATA) < 2 * SIZE  # both workers together
    assert_complete(hermetic_home, files)
    assert installed(second) == {KEY: "ready"}


def test_sigterm_mid_download_leaves_it_resumable(
    hub: HubServer, hub_repos: HubRepos, hf_env: Path, hermetic_home: Path, agents: list[AgentProcess]
) -> None:
    files = big_repo_files(SIZE)
    publish(hub_repos, BIG, files)
    hub.control.add_fault(DATA, rate_limit_bytes_per_s=4_000_000, times=-1)
    first = start_agent(hermetic_home)
    agents.append(first)
    start_download(first)
    wait_until(lambda: partial_bytes(hermetic_home, BIG) >= 3 * MIB, 60, "3 MiB on disk")
    assert first.signal(15) == 0
    assert not (hermetic_home / "agent.json").exists()
    on_disk = partial_bytes(hermetic_home, BIG)
    assert 3 * MIB <= on_disk < SIZE
    assert manifest_entry(hermetic_home, KEY)["status"] == "downloading"  # type: ignore[index]

    second = start_agent(hermetic_home)
    agents.append(second)
    wait_ready(second, KEY)
    gets = ranged_gets(hub.control.requests("GET", DATA))
    assert gets[-1] == (f"bytes={on_disk}-", 206, SIZE - on_disk)
    assert hub.control.bytes_served(DATA) < 2 * SIZE
    assert_complete(hermetic_home, files)


def _hub_process(tmp_path: Path) -> tuple[HubProcess, HubRepos, dict[str, bytes]]:
    repos = HubRepos(tmp_path / "hub-process")
    files = big_repo_files(SIZE)
    publish(repos, BIG, files)
    return HubProcess(repos.root).start(), repos, files


def test_hub_killed_mid_file_fails_clearly_then_pull_resumes(
    tmp_path: Path, hf_env: Path, hermetic_home: Path, agents: list[AgentProcess]
) -> None:
    hub, _, files = _hub_process(tmp_path)
    try:
        hub.control.add_fault(DATA, rate_limit_bytes_per_s=4_000_000, times=-1)
        (hermetic_home / "settings.toml").write_text("[hub]\nretries = 0\n")
        agent = start_agent(hermetic_home, env={"HF_ENDPOINT": hub.url})
        agents.append(agent)
        with EventRecorder(agent.info, ("download.",)) as events:
            events.wait_connected()
            job_id = start_download(agent)
            wait_until(lambda: partial_bytes(hermetic_home, BIG) >= 3 * MIB, 60, "3 MiB on disk")
            hub.kill()
            topic, failed = job_end(events, job_id)
        assert topic == "download.failed"
        assert failed["code"] == "network" and hub.url in failed["message"], failed
        entry = manifest_entry(hermetic_home, KEY)
        assert entry is not None and entry["status"] == "error" and entry["error"] == failed["message"]
        on_disk = partial_bytes(hermetic_home, BIG)
        assert on_disk >= 3 * MIB  # kept for the next attempt
        listed = json.loads(cli("ls", "--json", home=hermetic_home).stdout)["models"]
        assert [(m["key"], m["status"]) for m in listed] == [(KEY, "error")]
        assert json.loads(cli("status", "--json", home=hermetic_home).stdout)["downloads"] == []

        hub.start()  # same port, fresh counters
        pulled = cli("pull", BIG, "--quant", "q4", home=hermetic_home)
        assert pulled.returncode == 0, pulled.stderr
        gets = ranged_gets(hub.control.requests("GET", DATA))
        assert gets == [(f"bytes={on_disk}-", 206, SIZE - on_disk)]
        assert_complete(hermetic_home, files)
        assert installed(agent) == {KEY: "ready"}
    finally:
        hub.stop()


def test_hub_restarted_mid_file_the_job_retries_and_finishes(
    tmp_path: Path, hf_env: Path, hermetic_home: Path, agents: list[AgentProcess]
) -> None:
    hub, _, files = _hub_process(tmp_path)
    try:
        hub.control.add_fault(DATA, rate_limit_bytes_per_s=4_000_000, times=-1)
        agent = start_agent(hermetic_home, env={"HF_ENDPOINT": hub.url})
        agents.append(agent)
        with EventRecorder(agent.info, ("download.",)) as events:
            events.wait_connected()
            job_id = start_download(agent)
            wait_until(lambda: partial_bytes(hermetic_home, BIG) >= 3 * MIB, 60, "3 MiB on disk")
            hub.restart()  # SIGKILL mid-transfer, then back on the same port
            topic, finished = job_end(events, job_id)
        assert topic == "download.finished", finished
        gets = ranged_gets(hub.control.requests("GET", DATA))
        assert len(gets) == 1 and gets[0][1] == 206
        resumed_from = int(str(gets[0][0]).removeprefix("bytes=").removesuffix("-"))
        assert resumed_from >= 3 * MIB and gets[0][2] == SIZE - resumed_from
        assert finished["fetched_bytes"] < 2 * SIZE
        assert_complete(hermetic_home, files)
    finally:
        hub.stop()


def test_corrupt_manifest_is_kept_aside_rebuilt_and_reported(
    tiny_hub: HubServer, hermetic_home: Path, agents: list[AgentProcess]
) -> None:
    first = start_agent(hermetic_home)
    agents.append(first)
    assert cli("pull", TINY, "--quant", "q4", home=hermetic_home).returncode == 0
    assert first.stop() == 0
    garbage = b'{"version": 1, "variants": {"oops'
    (hermetic_home / "manifest.json").write_bytes(garbage)

    second = start_agent(hermetic_home)
    agents.append(second)
    aside = list(hermetic_home.glob("manifest.corrupt-*.json"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    q4 = variant_key(TINY, "q4")
    listed = json.loads(cli("ls", "--json", home=hermetic_home).stdout)["models"]
    assert [(m["key"], m["status"]) for m in listed] == [(q4, "ready")]
    assert json.loads((hermetic_home / "manifest.json").read_text())["variants"][q4]["status"] == "ready"
    status = cli("status", home=hermetic_home).stdout
    warning = next(line for line in status.splitlines() if line.startswith("warning"))
    assert "manifest.json was unreadable" in warning and aside[0].name in warning and "rebuilt 1 variant" in warning
    assert json.loads(cli("status", "--json", home=hermetic_home).stdout)["warnings"] == [warning.split(None, 1)[1]]
    assert repo_cache(hermetic_home, TINY).is_dir()


def test_a_hub_that_hangs_stalls_neither_the_start_nor_the_stop(
    hub: HubServer, hub_repos: HubRepos, hf_env: Path, hermetic_home: Path, agents: list[AgentProcess]
) -> None:
    publish(hub_repos, BIG, big_repo_files(SIZE))
    hub.control.add_fault(DATA, rate_limit_bytes_per_s=4_000_000, times=-1)
    first = start_agent(hermetic_home)
    agents.append(first)
    start_download(first)
    wait_until(lambda: partial_bytes(hermetic_home, BIG) >= MIB, 60, "1 MiB on disk")
    first.kill()
    # From now on the Hub accepts requests about the repo and never answers them (for a minute).
    hub.control.add_fault(f"/api/models/{BIG}*", stall_seconds=60, times=-1)
    hub.control.add_fault("/api/models", stall_seconds=60, times=-1)

    asked_before = len(hub.control.requests("GET"))
    second = start_agent(hermetic_home)
    agents.append(second)

    def stalled() -> list[dict[str, object]]:
        asked = hub.control.requests("GET")[asked_before:]
        return [r for r in asked if str(r["key"]).startswith(f"/api/models/{BIG}")]

    wait_until(stalled, 30, "the resume to ask the Hub about the repo")
    with second.client(timeout=10) as client:
        assert client.call(Ping()).pid == second.proc.pid
        status = client.call(Status())
    assert httpx.get(second.http_url + "/health", timeout=10).json()["status"] == "ok"
    assert [r["status"] for r in stalled()] == [0]  # all of that while the Hub had not answered
    assert status.downloads[0].key == KEY
    # A search stuck on the Hub as well: a stop does not wait for either.
    searching = subprocess.Popen([sys.executable, "-m", "cli.main", "search", "big"], cwd=REPO_ROOT,
                                 env={**os.environ, "HFLOCAL_HOME": str(hermetic_home)},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: hub.control.requests("GET", "/api/models"), 30, "the search to reach the Hub")
        assert second.stop() == 0
        assert not (hermetic_home / "agent.json").exists()
    finally:
        searching.kill()
        searching.wait()
    assert manifest_entry(hermetic_home, KEY)["status"] == "downloading"  # type: ignore[index]
