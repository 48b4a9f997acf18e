"""Faults a laptop meets: the worker killed mid-stream, mid-load and mid-manifest-write; a Hub that
fails; a corrupted ``agent.json``. After each: no corrupt state, nothing lost, the user told, and a
new worker serves again. (Killed downloads, disk full, a stalled Hub, a taken port, a second agent
and the tray dying are guarded in ``tests/worker``, ``tests/agent`` and ``tests/cli``.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ipc.events import EventSubscriber
from tests.fakes.tiny_model import TinyModel, build_tiny_repo
from tests.hubserver import HubRepos, HubServer
from tests.reliability.support import KEY, REPO_ROOT, case, make_ready
from tests.support.agentproc import AgentProcess, cli, start_agent
from tests.support.worker import TINY, publish, repo_files, variant_key, wait_until

RAND = "onnx-community/Tiny-Rand"
"""Random weights: long, varied output that rarely ends by itself (a stream worth interrupting)."""


@pytest.fixture(scope="module")
def rand_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_repo(tmp_path_factory.mktemp("rand") / "Tiny-Rand", ("q4",))


def _manifest(home: Path) -> dict[str, object]:
    return json.loads((home / "manifest.json").read_text())


@case(area="faults", case="kill -9 of the worker during a stream",
      did="stream a long chat completion; SIGKILL the worker after the first chunks; start a new worker",
      outcome="the client's stream ends with a connection error (no silent truncation as success); the new worker serves the same model; manifest intact")
def test_kill_during_a_stream(tiny_hub: HubServer, hub_repos: HubRepos, rand_model: TinyModel,
                              agents: list[AgentProcess], hermetic_home: Path) -> None:
    publish(hub_repos, RAND, repo_files(rand_model.path))
    worker = start_agent(hermetic_home)
    agents.append(worker)
    for args in (("pull", RAND, "--quant", "q4"), ("use", RAND)):
        assert cli(*args, home=hermetic_home).returncode == 0
    before = _manifest(hermetic_home)
    chunks = 0
    body = {"messages": [{"role": "user", "content": "Tell me everything"}], "stream": True}  # the default budget
    with pytest.raises(httpx.TransportError), httpx.stream("POST", worker.http_url + "/v1/chat/completions", json=body,
                                                           timeout=60) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            assert line != "data: [DONE]", "the stream ended before the kill"
            if line.startswith("data: "):
                chunks += 1
                if chunks == 3:
                    worker.kill()
    assert chunks >= 3
    assert _manifest(hermetic_home) == before
    again = start_agent(hermetic_home)  # the stale agent.json of the killed worker is replaced
    agents.append(again)
    wait_until(lambda: httpx.get(again.http_url + "/health", timeout=5).json()["model_state"] == "ready", 60, "reload")
    short = httpx.post(again.http_url + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).json()
    assert short["model"] == variant_key(RAND, "q4") and short["usage"]["completion_tokens"] == 4


@case(area="faults", case="kill -9 of the worker during a model load",
      did="make a model active, restart the worker and SIGKILL it while it reloads that model (model.loading seen, or right after start); 3 times",
      outcome="the manifest still names the model active and ready; the next worker loads it and answers; nothing re-downloaded")
def test_kill_during_a_model_load(agent: AgentProcess) -> None:
    make_ready(agent)
    agent.stop()
    blobs = sorted(p.name for p in (agent.home / "cache").rglob("*") if p.is_file())
    for _ in range(3):
        worker = start_agent(agent.home)
        with EventSubscriber(worker.info.event_endpoint, topics=("model.",), key=worker.info.event_key) as sub:
            sub.recv(0.5)  # model.loading if it arrives (the load may have started before we listened)
            worker.kill()
        manifest = _manifest(agent.home)
        assert manifest["active"] == KEY and manifest["variants"][KEY]["status"] == "ready"  # type: ignore[index]
    again = start_agent(agent.home)
    try:
        wait_until(lambda: httpx.get(again.http_url + "/health", timeout=5).json()["model_state"] == "ready", 60, "reload")
        answer = httpx.post(again.http_url + "/v1/chat/completions", timeout=60,
                            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}).json()
        assert answer["choices"][0]["message"]["content"]
    finally:
        again.stop()
    assert sorted(p.name for p in (agent.home / "cache").rglob("*") if p.is_file()) == blobs


WRITER = r"""
import sys
from pathlib import Path
from agent.paths import Paths
from agent.store import Store, new_entry
paths = Paths.for_home(Path(sys.argv[1]))
store = Store(paths)
print("ready", flush=True)
i = 0
while True:  # bounded by the parent's SIGKILL (and by this counter, should the parent die)
    i += 1
    key_model = f"org/model-{i % 7}"
    store.put(new_entry(key_model, "q4", "auto", path=str(paths.cache / f"m{i}"), files=[f"f{i}.onnx"], size=i))
    store.set_active(store.list()[0].key)
    if i % 3 == 0:
        store.remove(store.list()[-1].key)
    if i > 200_000:
        break
"""


@case(area="faults", case="kill -9 during manifest writes",
      did="a process rewrites manifest.json in a tight loop (put, set_active, remove); SIGKILL it at 12 different moments",
      outcome="after every kill manifest.json parses and opens without a warning (the old or the new state, never a mix); none was ever kept aside as corrupt")
def test_kill_during_manifest_writes(hermetic_home: Path) -> None:
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(hermetic_home)], stdout=subprocess.PIPE, text=True,
                                cwd=REPO_ROOT, env={**os.environ})
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(0.05 + 0.037 * attempt)  # a different point in the write cycle each time
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        data = _manifest(hermetic_home)  # parses
        assert data["version"] and isinstance(data["variants"], dict)
        from agent.paths import Paths
        from agent.store import Store

        store = Store(Paths.for_home(hermetic_home))
        assert not any("unreadable" in w for w in store.warnings), store.warnings
    assert not list(hermetic_home.glob("manifest.json.*")), "a manifest was kept aside: one was corrupt"


@case(area="faults", case="the Hub answers 500, then drops a file mid-transfer",
      did="pull while every Hub file request answers 500; then while one request is cut after 1 KB; then with the Hub healthy",
      outcome="the first pull fails with one line naming the Hub error, the second resumes or retries; the third completes; no ready entry until the files are whole")
def test_hub_errors_fail_clearly_and_a_later_pull_completes(tiny_hub: HubServer, agents: list[AgentProcess],
                                                           hermetic_home: Path) -> None:
    (hermetic_home / "settings.toml").write_text("[hub]\nretries = 0\n")  # the client's own retries remain
    agent = start_agent(hermetic_home)
    agents.append(agent)
    tiny_hub.control.add_fault(f"{TINY}/*", fail_status=500, times=-1)
    failed = cli("pull", TINY, "--quant", "q4", home=agent.home, timeout=240)
    last = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 1 and last.startswith("hflocal: ") and "500" in last, failed.stderr
    entry = _manifest(agent.home)["variants"].get(KEY)
    assert entry is None or entry["status"] != "ready"
    tiny_hub.control.clear_faults()
    tiny_hub.control.add_fault(f"{TINY}/onnx/*", drop_after_bytes=1024)
    cli("pull", TINY, "--quant", "q4", home=agent.home, timeout=240)  # may fail or retry: either is told
    done = cli("pull", TINY, "--quant", "q4", home=agent.home, timeout=240)
    assert done.returncode == 0, done.stderr
    assert _manifest(agent.home)["variants"][KEY]["status"] == "ready"
    assert cli("use", TINY, home=agent.home).returncode == 0


@case(area="faults", case="agent.json corrupted or stale",
      did="overwrite agent.json with garbage / a dead pid while no worker runs; run hflocal status; start a worker",
      outcome="the CLI says no agent is running and how to start one (exit 1, one line); the new worker replaces the file")
def test_corrupt_agent_json(tiny_hub: HubServer, agents: list[AgentProcess], hermetic_home: Path) -> None:
    conn = hermetic_home / "agent.json"
    for content in (b"\x00garbage{", b'{"pid": "x"}', json.dumps({
            "http_url": "http://127.0.0.1:9", "request_endpoint": "tcp://127.0.0.1:9", "event_endpoint": "tcp://127.0.0.1:10",
            "token": "t", "pid": 2**22 + 12345, "session": "s"}).encode()):
        conn.write_bytes(content)
        done = cli("status", home=hermetic_home, timeout=60)
        assert done.returncode == 1 and "hflocal serve" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    worker = start_agent(hermetic_home)
    agents.append(worker)
    assert json.loads(conn.read_text())["pid"] == worker.proc.pid
    assert cli("status", home=hermetic_home).returncode == 0
